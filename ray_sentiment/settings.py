"""Every command's options as frozen dataclasses, each default written once.

The CLI takes its flags' defaults from these fields and Serve config files (`app_builder`) go
through them too, so a value is checked in one place (`__post_init__`) whichever way it came.
Pure Python: importing this module starts nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError
from .results import MAX_TEXT_CHARS

Concurrency = int | tuple[int, int]  # a fixed number of actors (replicas), or (min, max) to autoscale
MAX_TEXTS_PER_REQUEST = 1000  # texts in one HTTP request
MAX_STREAM_BATCH = 10_000  # entries in one stream commit
DEVICES = ("cpu", "cuda", "auto")  # where `evaluate` runs the model
EMBEDDING_INITS = ("random", "ppmi")
STARTS = ("begin", "new")  # where a stream's consumer group created now starts
FREQUENCIES = ("H", "D", "W", "M")  # hour, day, week (from Monday), month
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
T = TypeVar("T")


def parse_concurrency(value: object, option: str) -> Concurrency:
    """4 or '4' → 4 actors (or replicas); '1,4', [1, 4] or (1, 4) → autoscaling between 1 and 4."""
    parts = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        numbers = [int(str(p).strip()) for p in parts]
    except ValueError:
        raise ConfigError(f"{option} takes N or MIN,MAX, not {value!r}") from None
    if len(numbers) not in (1, 2) or min(numbers) < 1 or (len(numbers) == 2 and numbers[0] > numbers[1]):
        raise ConfigError(f"{option} takes N or MIN,MAX with 1 <= MIN <= MAX, not {value!r}")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])


def comma_list(text: str) -> tuple[str, ...]:
    """'a, b,,c' → ('a', 'b', 'c'): how the CLI takes several values in one flag."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def default(cls: type, name: str) -> Any:
    """The default of one setting, for a CLI flag."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def settings_from(cls: type[T], options: dict[str, Any], source: str = "") -> T:
    """Build settings from a dict of options; a name that is not a setting is a one-line error."""
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{source or cls.__name__}: unknown settings {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        return cls(**options)
    except TypeError as exc:  # a required setting is missing
        raise ConfigError(f"{source or cls.__name__}: {exc}") from None


def flag(name: str) -> str:
    """The CLI flag of a setting: batch_size → --batch-size."""
    return "--" + name.replace("_", "-")


def _check_run(settings: TrainSettings | PretrainSettings) -> None:
    """What `train` and `pretrain` share: workers, failures, CPUs, sizes."""
    _at_least(settings, 1, "num_workers")
    for name in ("epochs", "max_len", "batch_size"):
        if getattr(settings, name, None) is not None:
            _at_least(settings, 1, name)
    if settings.vocab_size is not None:
        _at_least(settings, 3, "vocab_size")
    if settings.max_failures < 0:
        raise ConfigError("--max-failures must be 0 or more (-1 is not supported: a bug would retry forever)")
    if settings.cpus_per_worker is not None and not settings.cpus_per_worker > 0:
        raise ConfigError("--cpus-per-worker must be more than 0")


def _at_least(settings: object, minimum: float, *names: str) -> None:
    for name in names:
        if getattr(settings, name) < minimum:
            raise ConfigError(f"{flag(name)} must be at least {minimum}, not {getattr(settings, name)}")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What `train` and `pretrain` share: a Ray Train run's workers, restarts and checkpoints."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    seed: int = 0
    max_failures: int = 0
    storage_path: str | None = None
    keep_checkpoints: bool = False  # else only the latest (which holds the best weights) outlives a successful run


@dataclass(frozen=True)
class TrainSettings(RunSettings):
    """What the user asked of `train`. None: take the preset's value (see presets.PRESETS)."""

    train_path: str
    output: str
    val_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    preset: str = "default"
    epochs: int | None = None
    batch_size: int | None = None  # global: split across workers, so results don't depend on their number
    learning_rate: float | None = None
    max_len: int | None = None
    vocab_size: int | None = None
    class_weighted: bool | None = None
    embedding_init: str | None = None
    pretrain_epochs: int | None = None
    unlabelled_path: str | None = None  # comments without labels, for the vocabulary, word vectors and pretraining
    init_from: str | None = None  # a pretrained encoder (`ray-sentiment pretrain`) to fine-tune
    teacher: str | None = None  # a bundle whose probabilities the model also learns from (train/distil.py)
    split_column: str | None = None  # a column naming each row's part, e.g. train/test or the source year
    train_split: tuple[str, ...] | None = None  # its values whose rows train (default: all but val_split)
    val_split: tuple[str, ...] | None = None  # its values whose rows validate (default: val_fraction of train)
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        _check_run(self)
        if self.pretrain_epochs is not None:
            _at_least(self, 0, "pretrain_epochs")
        for name in ("train_split", "val_split"):
            if isinstance(getattr(self, name), str):  # as the CLI gives it: comma-separated
                object.__setattr__(self, name, comma_list(getattr(self, name)))
            if getattr(self, name) is not None and not self.split_column:
                raise ConfigError(f"{flag(name)} needs --split-column, the column whose values it names")
        if self.split_column and not (self.train_split or self.val_split):
            raise ConfigError("--split-column needs --train-split, --val-split or both")
        if self.val_split and self.val_path:
            raise ConfigError("give --val or --val-split, not both")
        if set(self.train_split or ()) & set(self.val_split or ()):
            raise ConfigError("--train-split and --val-split name the same value")
        if self.learning_rate is not None and not 0 < self.learning_rate < float("inf"):
            raise ConfigError("--learning-rate must be a positive number")
        if self.embedding_init not in (None, *EMBEDDING_INITS):
            raise ConfigError(
                f"unknown embedding init {self.embedding_init!r}; use one of {', '.join(EMBEDDING_INITS)}"
            )
        if not 0 < self.val_fraction < 1:
            raise ConfigError("the validation fraction must be between 0 and 1")


@dataclass(frozen=True)
class PretrainSettings(RunSettings):
    """`pretrain`: a language-model encoder from comments without labels. None: the preset's value."""

    unlabelled_path: str
    output: str
    train_path: str | None = None  # labelled comments whose texts also count (labels are not read)
    text_column: str = "text"
    preset: str = "default"  # the architecture the encoder is for
    epochs: int | None = None
    vocab_size: int | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        _check_run(self)


@dataclass(frozen=True)
class EvaluateSettings:
    """`evaluate`: a bundle's metrics on labelled data."""

    model: str
    data: str
    text_column: str = "text"
    label_column: str = "label"
    split_column: str | None = None  # with test_split: only the rows whose value is among them
    test_split: tuple[str, ...] = ()
    group_column: str | None = None  # also the metrics per value of this column
    errors: int = 0  # the N most confident mistakes per true label, explained
    device: str = "cpu"
    output: str | None = None  # also write the whole report (JSON) here
    json: bool = False  # print the whole report, not the summary

    def __post_init__(self) -> None:
        if isinstance(self.test_split, str):  # as the CLI gives it: comma-separated
            object.__setattr__(self, "test_split", comma_list(self.test_split))
        if bool(self.split_column) != bool(self.test_split):
            raise ConfigError("--split-column and --test-split (one value or more) go together")
        _at_least(self, 0, "errors")
        if self.device not in DEVICES:
            raise ConfigError(f"--device takes one of {', '.join(DEVICES)}, not {self.device!r}")


@dataclass(frozen=True)
class PredictSettings:
    """`predict`: texts from the arguments, or from standard input when there are none."""

    model: str
    texts: tuple[str, ...] = ()
    max_text_chars: int = MAX_TEXT_CHARS
    explain: bool = False  # each token's contribution to the label
    text_field: str | None = None  # standard input holds JSON lines; score this field of each

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        _at_least(self, 1, "max_text_chars")
        if self.text_field and self.texts not in ((), ("-",)):
            raise ConfigError("--text-field reads JSON lines from standard input; give no TEXT arguments with it")

    @property
    def from_stdin(self) -> bool:
        return self.texts in ((), ("-",))


@dataclass(frozen=True)
class ScoreSettings:
    """`score`: Parquet in, Parquet out."""

    model: str
    input: str
    output: str
    text_column: str = "text"
    id_column: str | None = None  # unique row id: a rerun resumes, skipping ids already written
    columns: tuple[str, ...] | None = None  # input columns to keep (default: all)
    batch_size: int = 1024  # rows per model call
    concurrency: Concurrency = 1
    use_gpu: bool = False
    overwrite: bool = False
    allow_duplicate_ids: bool = False
    max_text_chars: int = MAX_TEXT_CHARS

    def __post_init__(self) -> None:
        object.__setattr__(self, "concurrency", parse_concurrency(self.concurrency, "--concurrency"))
        if isinstance(self.columns, str):  # as the CLI gives it: comma-separated
            object.__setattr__(self, "columns", comma_list(self.columns))
        elif self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))
        _at_least(self, 1, "batch_size", "max_text_chars")


@dataclass(frozen=True)
class StreamSettings:
    """`stream`: a stream of comments (Redis Streams today) scored into another."""

    broker: str = LOCAL_REDIS  # the comment log's URL; its scheme picks the adapter (stream/broker.py)
    input_stream: str = "comments"
    output_stream: str = "comments:scored"
    group: str = "ray-sentiment"
    consumers: int = 1
    batch_size: int = 256
    block_ms: int = 1000
    dead_letter_stream: str = ""  # default: "<input_stream>:dead-letter"
    max_deliveries: int = 5
    claim_idle_ms: int = 30_000
    key_field: str | None = None
    window_s: int = 60
    # Event time: windows follow this field's time (ISO-8601, or epoch seconds or milliseconds; or
    # strptime's `time_format`) instead of when the broker accepted the entry.
    time_field: str | None = None
    time_format: str | None = None
    counts_ttl_s: int = 7 * 24 * 3600
    # Alerts: a key's share of `alert_label` in a closed window above its share over the previous
    # `alert_baseline_windows` windows by more than `alert_threshold` (both windows with at least
    # `alert_min_count` comments) adds one entry to <output_stream>:alerts.
    alert_label: str | None = None
    alert_threshold: float = 0.15
    alert_min_count: int = 30
    alert_baseline_windows: int = 6
    # POSTed each alert, at least once, by the driver. Default: $RAY_SENTIMENT_ALERT_WEBHOOK (such
    # URLs often hold a token: never logged, never given to Ray).
    alert_webhook: str | None = dataclasses.field(default=None, repr=False)
    start: str = "begin"  # where a group created now starts: "begin" (whole stream) or "new"
    text_field: str = "text"
    max_text_chars: int = MAX_TEXT_CHARS
    use_gpu: bool = False

    def __post_init__(self) -> None:
        if not self.dead_letter_stream:
            object.__setattr__(self, "dead_letter_stream", f"{self.input_stream}:dead-letter")
        _at_least(
            self,
            1,
            "consumers",
            "batch_size",
            "block_ms",
            "max_deliveries",
            "claim_idle_ms",
            "window_s",
            "counts_ttl_s",
            "alert_min_count",
            "alert_baseline_windows",
            "max_text_chars",
        )
        if not 0 < self.alert_threshold < 1:
            raise ConfigError(f"--alert-threshold is a share between 0 and 1, not {self.alert_threshold}")
        if self.alert_webhook and not self.alert_label:
            raise ConfigError("--alert-webhook needs --alert-label: there are no alerts to deliver without it")
        if self.alert_webhook and urlsplit(self.alert_webhook).scheme not in ("http", "https"):
            raise ConfigError("--alert-webhook takes an http:// or https:// URL")
        if self.batch_size > MAX_STREAM_BATCH:
            raise ConfigError(f"--batch-size must be at most {MAX_STREAM_BATCH:,} (one commit carries the whole batch)")
        if self.start not in STARTS:
            raise ConfigError(f"--start takes {' or '.join(STARTS)}, not {self.start!r}")
        if len({self.input_stream, self.output_stream, self.dead_letter_stream}) < 3:
            raise ConfigError("input, output and dead-letter streams must be three different keys")


@dataclass(frozen=True)
class StreamStatsSettings:
    """`stream-stats`: the live counts `stream` keeps, per window (and key)."""

    broker: str = LOCAL_REDIS
    output_stream: str = "comments:scored"
    last: int = 10  # windows shown
    json: bool = False

    def __post_init__(self) -> None:
        _at_least(self, 1, "last")


@dataclass(frozen=True)
class LiveSettings:
    """`live`: a page, and a JSON endpoint, showing the counts and alerts `stream` keeps, as they change."""

    broker: str = LOCAL_REDIS
    output_stream: str = "comments:scored"
    host: str = "127.0.0.1"
    port: int = 8050
    windows: int = 12  # shown per key, the one filling in included
    max_keys: int = 24  # the busiest keys in those windows
    refresh_ms: int = 1000  # how often the page asks; the server reads Redis at most this often

    def __post_init__(self) -> None:
        _at_least(self, 1, "windows", "max_keys", "port")
        if self.port > 65535:
            raise ConfigError(f"--port must be at most 65535, not {self.port}")
        if not 200 <= self.refresh_ms <= 60_000:
            raise ConfigError(f"--refresh-ms must be between 200 and 60000, not {self.refresh_ms}")


@dataclass(frozen=True)
class ServeSettings:
    """`serve`: the HTTP endpoint."""

    model: str
    host: str = "127.0.0.1"  # every replica listens here, on `port`
    port: int = 8000
    replicas: Concurrency = 1
    cpus_per_replica: float = 1.0  # also its torch threads
    use_gpu: bool = False
    max_batch_size: int = 2048  # texts per model call, from however many requests
    batch_wait_ms: float = 0.0  # under load a batch fills while the one before it is scored
    batching: bool = True
    max_ongoing_requests: int = 64  # per model replica: a batch is built from these
    max_queued_requests: int = 256  # beyond this, 503
    max_text_chars: int = MAX_TEXT_CHARS
    client_timeout_s: float = 10.0  # a request head slower than this, or a body stalled this long, gets 408

    def __post_init__(self) -> None:
        object.__setattr__(self, "replicas", parse_concurrency(self.replicas, "--replicas"))
        if self.max_batch_size < MAX_TEXTS_PER_REQUEST:
            raise ConfigError(
                f"--max-batch-size counts texts and must be at least {MAX_TEXTS_PER_REQUEST:,} "
                f"(one request may carry that many), not {self.max_batch_size}"
            )
        if self.batch_wait_ms < 0:
            raise ConfigError("--batch-wait-ms must be 0 or more")
        _at_least(self, 1, "max_ongoing_requests", "max_queued_requests", "max_text_chars")
        if self.cpus_per_replica <= 0:
            raise ConfigError(f"--cpus-per-replica must be more than 0, not {self.cpus_per_replica}")
        if self.client_timeout_s <= 0:
            raise ConfigError(f"--client-timeout-s must be more than 0, not {self.client_timeout_s}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, not {self.port}")


@dataclass(frozen=True)
class ReportSettings:
    """`report`: a scored Parquet file (score's output) summarised into a page, plots and tables."""

    input: str
    output: str
    label_column: str = "label"
    text_column: str | None = None  # default: `text` if the input has it; needed only for words and examples
    time_column: str | None = None
    time_format: str | None = None  # strptime format; default: guessed from the first value
    key_column: str | None = None  # e.g. the brand or product
    freq: str = "D"
    focus_label: str = "negative"  # the label whose share is followed over time
    model: str | None = None  # a bundle: the tokens that drove each label, by occlusion
    redact: bool = True
    examples: int = 3  # representative comments per label and key
    top_words: int = 15
    min_word_count: int = 10  # comments a distinctive word must appear in
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.freq not in FREQUENCIES:
            raise ConfigError(f"--freq takes one of {', '.join(FREQUENCIES)}, not {self.freq!r}")
        _at_least(self, 0, "examples")
        _at_least(self, 1, "top_words", "min_word_count")
