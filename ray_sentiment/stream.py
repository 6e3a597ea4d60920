"""Scoring a comment feed: consumer actors read a stream, score batches, commit exactly once.

    broker (Redis Streams; see redis_broker.py)          consumer actors (Ray, model loaded once)
    read a batch (new entries, or stale ones claimed) ──▶ check each entry, score the good ones
    commit: outputs + dead letters + counts + acks   ◀── one Result per entry
            in one atomic step, skipping entries already committed

A crash before the commit leaves the batch pending, to be claimed and scored again; a crash after
it leaves nothing to redo; a commit retried after a lost connection writes nothing twice. The
broker sits behind `Broker` so that another log (Kafka) can follow without touching the consumer.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol
from urllib.parse import urlparse

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from .bundle import ModelBundle, load_bundle
from .data import user_message
from .errors import ConfigError, RaySentimentError
from .predictor import Predictor, text_problem
from .runtime import ensure_ray, stop_on_signals

log = logging.getLogger(__name__)
MAX_BATCH = 10_000


@dataclass
class StreamSettings:
    redis: str = "redis://127.0.0.1:6379/0"
    input_stream: str = "comments"
    output_stream: str = "comments:scored"
    group: str = "ray-sentiment"
    consumers: int = 1
    batch_size: int = 256
    block_ms: int = 1000
    dead_letter_stream: str | None = None  # default: "<input_stream>:dead-letter"
    max_deliveries: int = 5
    claim_idle_ms: int = 30_000
    key_field: str | None = None
    window_s: int = 60
    counts_ttl_s: int = 7 * 24 * 3600
    start: str = "begin"  # where a group created now starts: "begin" (whole stream) or "new"
    text_field: str = "text"
    max_text_chars: int = 100_000
    use_gpu: bool = False

    def __post_init__(self):
        self.dead_letter_stream = self.dead_letter_stream or f"{self.input_stream}:dead-letter"
        positive = ("consumers", "batch_size", "block_ms", "max_deliveries", "claim_idle_ms", "window_s",
                    "counts_ttl_s", "max_text_chars")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.batch_size > MAX_BATCH:
            raise ConfigError(f"--batch-size must be at most {MAX_BATCH:,} (one commit carries the whole batch)")
        if self.start not in ("begin", "new"):
            raise ConfigError(f"--start takes begin or new, not {self.start!r}")
        streams = {self.input_stream, self.output_stream, self.dead_letter_stream}
        if len(streams) < 3:
            raise ConfigError("input, output and dead-letter streams must be three different keys")


@dataclass
class Entry:
    """One comment as the broker delivered it."""
    id: str
    time_ms: int  # when the broker accepted it: decides its counting window
    fields: dict[bytes, bytes]
    deliveries: int = 1


@dataclass
class Result:
    """What one entry became: a scored output (label set) or a dead letter (label None)."""
    entry_id: str
    fields: list[tuple[str, bytes | str]]
    label: str | None = None
    window_ms: int = 0
    key: str = ""


class Broker(Protocol):
    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` entries: stale ones taken over from dead consumers first, then new ones."""

    def commit(self, results: list[Result]) -> int:
        """Atomically write every result, bump the counts and acknowledge its entry, skipping entries
        no longer pending (already committed). Returns how many were written."""

    def ensure_group(self) -> None:
        """Create the consumer group if missing; fail with a clear message if the broker is unreachable."""

    def totals(self) -> dict[str, int]:
        """Entries scored and dead-lettered by this group since it began."""

    def pending(self) -> int | None:
        """Entries delivered to a consumer and not yet committed; None if the stream is gone."""

    def close(self) -> None: ...


def open_broker(settings: StreamSettings, consumer: str, stop: threading.Event | None = None) -> Broker:
    scheme = urlparse(settings.redis).scheme
    if scheme in ("redis", "rediss", "unix"):
        from .redis_broker import RedisBroker

        return RedisBroker(settings, consumer, stop)
    raise ConfigError(f"--redis takes redis://, rediss:// or unix:// URLs, not {settings.redis!r}")


# -- turning entries into results: plain functions, no Ray, no broker -----------------------------

def entry_text(entry: Entry, settings: StreamSettings) -> tuple[str | None, str | None]:
    """(text, None) when the entry can be scored, else (None, why not)."""
    if entry.deliveries > settings.max_deliveries:
        return None, f"delivered {entry.deliveries} times, more than --max-deliveries {settings.max_deliveries}"
    raw = entry.fields.get(settings.text_field.encode())
    if raw is None:
        return None, f"entry has no {settings.text_field!r} field"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "text is not valid UTF-8"
    if len(text) > settings.max_text_chars:
        return None, f"text is {len(text):,} characters, more than --max-text-chars {settings.max_text_chars:,}"
    return (None, problem) if (problem := text_problem(text)) else (text, None)


def score_entries(predictor: Predictor, entries: list[Entry], settings: StreamSettings) -> list[Result]:
    checked = [entry_text(e, settings) for e in entries]
    good = [i for i, (text, _) in enumerate(checked) if text is not None]
    proba = predictor.predict_proba([checked[i][0] for i in good]) if good else np.empty((0, 0))
    results = [dead_letter(e, why) if why else None for e, (_, why) in zip(entries, checked)]
    labels = predictor.labels
    result_names = {"source_id", "label", "confidence", *(f"p_{label}" for label in labels)}
    window = settings.window_s * 1000
    key_field = settings.key_field.encode() if settings.key_field else None
    for i, row in zip(good, proba):
        entry, best = entries[i], int(row.argmax())
        fields = [("source_id", entry.id), ("label", labels[best]), ("confidence", repr(float(row[best])))]
        fields += [(f"p_{label}", repr(float(p))) for label, p in zip(labels, row)]
        fields += passed_through(entry, settings.text_field.encode(), result_names)
        key = entry.fields.get(key_field, b"").decode("utf-8", "replace") if key_field else ""
        results[i] = Result(entry.id, fields, labels[best], entry.time_ms // window * window, key)
    return results


def passed_through(entry: Entry, text_field: bytes, taken: set[str]) -> list[tuple[str | bytes, bytes]]:
    """The entry's other fields, unchanged; a name the result already uses gets an `input_` prefix."""
    out = []
    for name, value in entry.fields.items():
        if name == text_field:
            continue
        text_name = name.decode("utf-8", "replace")
        out.append((f"input_{text_name}" if text_name in taken else name, value))
    return out


def dead_letter(entry: Entry, reason: str) -> Result:
    return Result(entry.id, [("source_id", entry.id), ("reason", reason), *entry.fields.items()])


# -- Ray: consumer actors and their supervisor ----------------------------------------------------

class StreamConsumer:
    """A Ray actor holding the model. `run` loops until `stop`; the actor is threaded so that
    `stop` is answered while `run` works."""

    def __init__(self, bundle: ModelBundle, settings: StreamSettings, name: str):
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        self.settings, self.name = settings, name
        self.predictor = Predictor(bundle, device="cuda" if settings.use_gpu else "cpu")
        self.stopping = threading.Event()
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if self.restarted:
            log.warning("%s restarted; what it held is taken over after --claim-idle-ms", name)

    def run(self) -> None:
        broker = open_broker(self.settings, self.name, self.stopping)
        try:
            while not self.stopping.is_set():
                entries = broker.read(self.settings.batch_size, self.settings.block_ms)
                if not entries:
                    continue
                # Committed also when stopping: the batch in flight is finished.
                broker.commit(score_entries(self.predictor, entries, self.settings))
        finally:
            broker.close()

    def stop(self) -> None:
        self.stopping.set()

    def was_restarted(self) -> bool:
        return self.restarted


@dataclass
class StreamSummary:
    scored: int
    dead_lettered: int
    pending: int | None
    restarted_consumers: int
    seconds: float

    def line(self) -> str:
        rate = (self.scored + self.dead_lettered) / self.seconds if self.seconds else 0.0
        return (f"scored {self.scored}, dead-lettered {self.dead_lettered}, still pending {self.pending}, "
                f"consumers restarted {self.restarted_consumers}, {self.seconds:.1f} s, {rate:,.0f} entries/s")


class StreamRunner:
    """Starts `consumers` actors on one consumer group. An actor that dies is restarted by Ray and
    its `run` retried there (max_restarts and max_task_retries unlimited); the entries it held are
    taken over by whichever consumer claims them first."""

    def __init__(self, model: str, settings: StreamSettings, stop: threading.Event | None = None):
        self.settings = settings
        bundle = load_bundle(model)  # a broken bundle fails here, before Ray starts
        self.broker = open_broker(settings, "ray-sentiment-driver", stop)
        self.broker.ensure_group()  # also fails fast, with a clear message, when Redis is unreachable
        self.totals_at_start = self.broker.totals()
        self.started = time.perf_counter()
        ensure_ray()
        total_cpus = ray.cluster_resources().get("CPU", 1.0)
        actor = ray.remote(StreamConsumer).options(
            max_restarts=-1, max_task_retries=-1, max_concurrency=3,
            num_cpus=1.0 if settings.use_gpu else min(1.0, total_cpus / settings.consumers),
            num_gpus=1 if settings.use_gpu else 0,
        )
        # Through the object store, so no node needs the model directory; held here for as long as
        # the actors live, since Ray rebuilds a restarted actor from it.
        self.bundle_ref = ray.put(bundle)
        self.actors = [actor.remote(self.bundle_ref, settings, f"consumer-{i}") for i in range(settings.consumers)]
        ray.get([a.was_restarted.remote() for a in self.actors])  # every model loaded: a failure shows here
        self.runs = [a.run.remote() for a in self.actors]

    def poll(self, timeout: float = 1.0) -> None:
        """Wait up to `timeout` s; a consumer that raised, or that Ray could not restart, ends the run."""
        done, _ = ray.wait(self.runs, num_returns=1, timeout=timeout)
        for ref in done:
            try:
                ray.get(ref)
            except RayActorError as exc:
                raise RaySentimentError(f"a stream consumer died and could not be restarted: {user_message(exc)}") from None
            except RayTaskError as exc:  # the consumer raised: retrying would raise again
                raise RaySentimentError(f"a stream consumer failed: {user_message(exc)}") from None
            self.runs.remove(ref)  # returned: only after a stop

    def progress(self) -> dict:
        totals = self.broker.totals()
        return {name: totals.get(name, 0) - self.totals_at_start.get(name, 0) for name in ("scored", "dead_lettered")}

    def restarted_consumers(self) -> int:
        """Consumers now running as a restarted actor (Ray rebuilt them after a failure)."""
        ready, _ = ray.wait([a.was_restarted.remote() for a in self.actors], num_returns=len(self.actors), timeout=10)
        return sum(ray.get(ready))

    def stop(self, timeout: float = 120.0) -> StreamSummary:
        """Ask every actor to finish its batch in flight, wait for them, and sum up from the broker."""
        restarted = self.restarted_consumers()
        for actor in self.actors:
            actor.stop.remote()
        ray.wait(self.runs, num_returns=len(self.runs), timeout=timeout)
        for actor in self.actors:
            ray.kill(actor)
        done = self.progress()
        summary = StreamSummary(done["scored"], done["dead_lettered"], self.broker.pending(), restarted,
                                time.perf_counter() - self.started)
        self.broker.close()
        return summary


def run_until_signalled(model: str, settings: StreamSettings, report_every_s: float = 10.0) -> StreamSummary:
    """The `stream` command: run until SIGTERM or SIGINT, then finish the batches in flight."""
    stop = threading.Event()
    stop_on_signals(stop)  # while connecting to Redis and loading the model
    runner = StreamRunner(model, settings, stop)
    stop_on_signals(stop)  # again: ray.init replaced the SIGTERM handler
    try:
        watch(runner, stop, settings, report_every_s)
    finally:
        summary = runner.stop()
    return summary


def watch(runner: StreamRunner, stop: threading.Event, settings: StreamSettings, report_every_s: float) -> None:
    print(f"scoring {settings.input_stream} → {settings.output_stream} with {settings.consumers} consumer(s) "
          f"in group {settings.group}; SIGTERM or Ctrl-C stops", flush=True)
    last_report = time.monotonic()
    while not stop.is_set():
        runner.poll(timeout=0.5)
        if time.monotonic() - last_report >= report_every_s:
            last_report = time.monotonic()
            done = runner.progress()
            print(f"scored {done['scored']}, dead-lettered {done['dead_lettered']}", flush=True)


def format_counts(rows: list[dict]) -> str:
    """`stream-stats` output: one line per window (and key), one column per label."""
    if not rows:
        return "no counts yet"
    labels = sorted({label for r in rows for label in r["counts"]})
    keyed = any(r["key"] for r in rows)
    header = ["window start (UTC)", *(["key"] if keyed else []), *labels, "total"]
    lines = [header]
    for r in rows:
        start = datetime.fromtimestamp(r["window_start_ms"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        counts = [r["counts"].get(label, 0) for label in labels]
        lines.append([start, *([r["key"]] if keyed else []), *map(str, counts), str(sum(counts))])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < (2 if keyed else 1) else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))) for line in lines)
