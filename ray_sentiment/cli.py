"""`ray-sentiment` command line. A user error prints one line and exits 2.

Flags map one to one onto the settings in settings.py, whose fields give every default.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from importlib.metadata import version

from .errors import RaySentimentError, unwrapped, user_cause, user_message
from .model.bundle import load_bundle
from .model.presets import PRESETS
from .settings import (
    DEVICES,
    EMBEDDING_INITS,
    FREQUENCIES,
    STARTS,
    EvaluateSettings,
    LiveSettings,
    PredictSettings,
    PretrainSettings,
    ReportSettings,
    ScoreSettings,
    ServeSettings,
    StreamSettings,
    StreamStatsSettings,
    TrainSettings,
    default,
    flag,
    settings_from,
)

MODEL_HELP = "bundle directory; local or s3:// gs://"
MAX_TEXT_CHARS_HELP = "longer texts are refused, with that reason"


class Flags:
    """Adds a subcommand's flags; `setting` takes a flag's name, type and default from a settings field."""

    def __init__(self, parser: argparse.ArgumentParser, settings: type | None = None):
        self.parser, self.settings = parser, settings

    def setting(self, name: str, help: str, **options) -> None:
        value = default(self.settings, name) if self.settings else options.pop("default")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            options.setdefault("type", type(value))
        elif isinstance(value, tuple):  # MIN,MAX: the CLI takes it as text
            value = ",".join(map(str, value))
        self.parser.add_argument(flag(name), default=value, help=f"{help} (default: %(default)s)", **options)

    def add(self, *names: str, **options) -> None:
        self.parser.add_argument(*names, **options)


VERBOSE = argparse.ArgumentParser(add_help=False)
VERBOSE.add_argument("-v", "--verbose", action="store_true", help="also show Ray's own log lines and warnings")


ON_RAY = argparse.ArgumentParser(add_help=False)
ON_RAY.add_argument(
    "--address",
    metavar="local|auto|HOST:PORT",
    help="the Ray cluster to run on: 'local' starts a private Ray for this command; 'auto' joins the one "
    "`ray start --head` runs on this machine; HOST:PORT (its head) joins that cluster "
    "(default: $RAY_ADDRESS if set, as under `ray job submit`, else local)",
)


def _command(sub, name: str, *, help: str, on_ray: bool = True) -> argparse.ArgumentParser:
    """-v on every command; --address on those that run on Ray."""
    return sub.add_parser(name, help=help, parents=[VERBOSE, *([ON_RAY] if on_ray else [])])


def _add_train(sub) -> None:
    f = Flags(_command(sub, "train", help="train a model bundle on labelled comments (Ray Train)"), TrainSettings)
    f.add("--train", dest="train_path", required=True, help="Parquet/CSV/JSONL file, directory or glob; local or s3://")
    f.add("--val", dest="val_path", help="validation data; default: a seeded, stratified 10%% of --train")
    f.add("--output", required=True, help="bundle directory to write; local or s3:// gs://")
    f.setting("text_column", "column holding the comment text")
    f.setting("label_column", "column holding the label")
    f.setting("preset", "architecture and recipe", choices=sorted(PRESETS))
    f.add("--epochs", type=int, help=preset_help("maximum epochs", "epochs"))
    f.add("--batch-size", type=int, help=preset_help("global batch size, split across workers", "batch_size"))
    f.add("--learning-rate", type=float, help=preset_help("Adam learning rate", "learning_rate"))
    f.add("--max-len", type=int, help=preset_help("tokens kept per text", "max_len"))
    f.add("--vocab-size", type=int, help=preset_help("vocabulary size, <pad> and <unk> included", "vocab_size"))
    weighting = f.parser.add_mutually_exclusive_group()
    weighting.add_argument(
        "--class-weighted", action="store_true", default=None, help="weight the loss by inverse class frequency"
    )
    weighting.add_argument("--no-class-weighted", dest="class_weighted", action="store_false")
    f.add(
        "--embedding-init",
        choices=EMBEDDING_INITS,
        help=preset_help("embedding from noise or PPMI-SVD word vectors", "embedding_init"),
    )
    f.add(
        "--pretrain-epochs",
        type=int,
        help=preset_help("language-model epochs before the classifier's; 0: none", "pretrain_epochs"),
    )
    f.add(
        "--unlabelled",
        dest="unlabelled_path",
        metavar="PATH",
        help="comments without labels (same --text-column) for the vocabulary, word vectors and pretraining",
    )
    f.add(
        "--init-from",
        metavar="DIR",
        help="start from a pretrained encoder (`ray-sentiment pretrain`); no pretraining then",
    )
    f.add(
        "--teacher",
        metavar="DIR",
        help="a trained bundle (e.g. --preset hybrid) whose probabilities on the training and --unlabelled "
        "comments this model also learns from: knowledge distillation",
    )
    f.add("--split-column", help="a column naming each row's part (e.g. split, or the source year)")
    f.add(
        "--train-split", metavar="V[,V]", help="--split-column values whose rows train (default: all but --val-split)"
    )
    f.add("--val-split", metavar="V[,V]", help="--split-column values whose rows validate, e.g. the latest slice")
    _add_run(f, seed="seed of the split, the weights and the batch order")


def _add_pretrain(sub) -> None:
    parser = _command(sub, "pretrain", help="pretrain an encoder on comments without labels (Ray Train)")
    f = Flags(parser, PretrainSettings)
    f.add("--unlabelled", dest="unlabelled_path", required=True, metavar="PATH", help="comments without labels")
    f.add("--train", dest="train_path", metavar="PATH", help="labelled comments whose texts also count")
    f.add("--output", required=True, help="encoder directory to write; local or s3:// gs://")
    f.setting("text_column", "column holding the comment text")
    f.setting("preset", "the architecture the encoder is for", choices=sorted(PRESETS))
    f.add("--epochs", type=int, help="language-model epochs (default: the preset's, else 2)")
    f.add("--vocab-size", type=int, help=preset_help("vocabulary size, <pad> and <unk> included", "vocab_size"))
    f.add("--max-len", type=int, help=preset_help("tokens kept per text", "max_len"))
    _add_run(f, seed="seed of the weights and the batch order")


def _add_run(f: Flags, *, seed: str) -> None:
    """A Ray Train run's flags, the same in `train` and `pretrain` (RunSettings)."""
    f.setting("num_workers", "Ray Train workers")
    f.add("--use-gpu", action="store_true", help="one GPU per worker")
    f.add("--cpus-per-worker", type=float, help="CPUs reserved per worker (default: 1, less on small machines)")
    f.setting("seed", seed)
    f.setting("max_failures", "worker-group restarts from the last checkpoint")
    f.add("--storage-path", help="where checkpoints go: a local path or s3:// gs:// (default: ~/ray_results)")
    f.add("--keep-checkpoints", action="store_true", help="keep every epoch's checkpoint (default: the latest only)")


def _add_evaluate(sub) -> None:
    f = Flags(_command(sub, "evaluate", help="score labelled data and print the metrics as JSON"), EvaluateSettings)
    f.add("--model", required=True, help=MODEL_HELP)
    f.add("--data", required=True, help="labelled Parquet/CSV/JSONL file, directory or glob")
    f.setting("text_column", "column holding the comment text")
    f.setting("label_column", "column holding the label")
    f.add("--split-column", help="a column naming each row's part (e.g. split); with --test-split")
    f.add("--test-split", metavar="V[,V]", help="--split-column values whose rows are evaluated, e.g. test")
    f.add("--output", help="also write the whole report to this JSON file; local or s3:// gs://")
    f.add("--json", action="store_true", help="print the whole report as JSON instead of a summary")
    f.setting("device", "where the model runs", choices=DEVICES)
    f.add("--group-column", help="also the metrics per value of this column (e.g. airline)")
    f.setting("errors", "the N most confident mistakes per true label, with their tokens' contributions")


def _add_report(sub) -> None:
    parser = _command(sub, "report", help="summarise scored comments per key and over time: a page, plots, tables")
    f = Flags(parser, ReportSettings)
    f.add("--input", required=True, help="score's output: Parquet file, directory or glob; local or s3:// gs://")
    f.add("--output", required=True, help="directory for report.html, the plots and tables; local or s3:// gs://")
    f.setting("label_column", "column holding the predicted label")
    f.add("--text-column", help="column holding the comment, for words and examples (default: text, if present)")
    f.add("--time-column", help="column holding each comment's time (a timestamp, or text such as 2/24/2015 11:35)")
    f.add("--time-format", help="strptime format of a text --time-column (default: guessed from its first value)")
    f.add("--key-column", help="column to break the report down by: brand, product, airline")
    f.setting("freq", "period of the time series: hour, day, week, month", choices=FREQUENCIES)
    f.setting("focus_label", "the label whose share is followed over time")
    f.add("--model", help="bundle: also show the tokens that drove each label (occlusion on a sample)")
    f.add("--no-redact", dest="redact", action="store_false", help="show handles, e-mails, phones and URLs in examples")
    f.setting("examples", "representative comments per label and key")
    f.setting("top_words", "distinctive words per label and key")
    f.setting("min_word_count", "comments a distinctive word must appear in")
    f.add("--overwrite", action="store_true", help="replace an earlier report in --output (only its files)")


def _add_score(sub) -> None:
    f = Flags(_command(sub, "score", help="score Parquet files into Parquet files (Ray Data)"), ScoreSettings)
    f.add("--model", required=True, help=MODEL_HELP)
    f.add("--input", required=True, help="Parquet file, directory or glob; local or s3:// gs://")
    f.add("--output", required=True, help="directory for the scored Parquet files; local or s3:// gs://")
    f.setting("text_column", "column holding the comment text")
    f.add("--id-column", help="unique row id; a rerun then resumes, skipping ids already written")
    f.add("--columns", help="input columns to keep, comma-separated (default: all)")
    f.setting("batch_size", "rows per model call")
    f.setting("concurrency", "model actors: N, or MIN,MAX to autoscale", type=str)
    f.add("--use-gpu", action="store_true", help="one GPU per model actor")
    f.add("--overwrite", action="store_true", help="replace the output of an earlier run (only files it wrote)")
    f.add("--allow-duplicate-ids", action="store_true", help="accept an --id-column whose ids repeat; no resume then")
    f.setting("max_text_chars", MAX_TEXT_CHARS_HELP)


WEBHOOK_ENV = "RAY_SENTIMENT_ALERT_WEBHOOK"
BROKER_HELP = (
    "the comment log: redis://[[USER]:PASSWORD@]HOST:PORT/DB (default: $REDIS_URL, else "
    "redis://127.0.0.1:6379/0); a password in $REDIS_PASSWORD keeps it out of shell history and `ps`. "
    "--redis is the same option"
)


def preset_help(help: str, name: str) -> str:
    """A recipe flag's help, with the value each preset gives it when the flag is left out."""
    presets: dict[object, list[str]] = {}
    for key, preset in PRESETS.items():
        value = getattr(preset, name) if hasattr(preset, name) else getattr(preset.model, name)
        presets.setdefault(value, []).append(key)
    if len(presets) == 1:
        return f"{help} (default: the preset's, {next(iter(presets))} in each)"
    values = "; ".join(f"{value} in {', '.join(keys)}" for value, keys in presets.items())
    return f"{help} (default: the preset's: {values})"


def broker_url() -> str:
    """--broker when not given (not shown in --help: the URL may hold a password)."""
    return os.environ.get("REDIS_URL") or default(StreamSettings, "broker")


def _add_stream(sub) -> None:
    parser = _command(sub, "stream", help="score a Redis stream of comments until stopped (SIGTERM/Ctrl-C)")
    f = Flags(parser, StreamSettings)
    f.add("--model", required=True, help=MODEL_HELP)
    f.add("--broker", "--redis", dest="broker", default=broker_url(), help=BROKER_HELP)
    f.add("--input-stream", required=True, help="stream whose entries carry the comment text")
    f.add("--output-stream", required=True, help="stream the scored entries are added to")
    f.setting("group", "consumer group, created if missing")
    f.setting("start", "where a group created now starts: the whole stream or new entries", choices=STARTS)
    f.setting("consumers", "consumer actors holding the model")
    f.setting("batch_size", "entries read and scored at once")
    f.setting("block_ms", "how long a read waits for new entries")
    f.add("--dead-letter-stream", default="", help="where unscorable entries go (default: INPUT:dead-letter)")
    f.setting("max_deliveries", "deliveries before an entry is dead-lettered")
    f.setting("claim_idle_ms", "take over entries pending this long on a consumer that died")
    f.add("--key-field", help="also count per value of this field (e.g. brand)")
    f.setting("window_s", "counting window in seconds")
    f.setting("counts_ttl_s", "seconds the live counts are kept")
    f.add(
        "--time-field",
        help="count each entry in the window of this field's time (e.g. created_at: ISO-8601, or epoch "
        "seconds or ms), not when it reached the broker; an entry more than --counts-ttl-s older than the "
        "latest window counted is scored and totalled as late, in no window",
    )
    f.add("--time-format", help="strptime format of --time-field, e.g. '%%m/%%d/%%Y %%H:%%M' (naive times are UTC)")
    f.add(
        "--alert-label",
        help="raise an alert (to OUTPUT:alerts) when a key's share of this label in a closed window rises above "
        "its share in the windows before by more than --alert-threshold",
    )
    f.setting("alert_threshold", "the rise in share that raises an alert, e.g. 0.15 for 15 points")
    f.setting("alert_min_count", "comments a window, and its baseline windows together, need before an alert")
    f.setting("alert_baseline_windows", "windows before the closed one whose pooled share is the baseline")
    f.add(
        "--alert-webhook",
        default=os.environ.get(WEBHOOK_ENV),
        help=f"POST each alert as JSON to this URL, at least once, with retries (default: ${WEBHOOK_ENV}, "
        "which keeps a URL holding a token out of shell history and `ps`)",
    )
    f.setting("text_field", "field holding the comment text")
    f.setting("max_text_chars", MAX_TEXT_CHARS_HELP)
    f.add("--use-gpu", action="store_true", help="one GPU per consumer actor")

    stats_help = "print the live counts per window (and key) and the latest alerts"
    parser = _command(sub, "stream-stats", help=stats_help, on_ray=False)
    stats = Flags(parser, StreamStatsSettings)
    stats.add("--broker", "--redis", dest="broker", default=broker_url(), help=BROKER_HELP)
    stats.add("--output-stream", required=True, help="the output stream given to `stream`")
    stats.setting("last", "windows (and alerts) to show")
    stats.add("--json", action="store_true", help='one JSON object per window and key, then {"alert": ...} per alert')


def _add_live(sub) -> None:
    parser = _command(
        sub, "live", help="a web page of the live counts and alerts `stream` keeps, per key", on_ray=False
    )
    f = Flags(parser, LiveSettings)
    f.add("--broker", "--redis", dest="broker", default=broker_url(), help=BROKER_HELP)
    f.add("--output-stream", required=True, help="the output stream given to `stream`")
    f.setting("host", "the address the page listens on; 0.0.0.0 for other machines (set RAY_SENTIMENT_API_KEY)")
    f.setting("port", "the page's port")
    f.setting("windows", "windows shown per key, the one filling in included")
    f.setting("max_keys", "keys shown, the busiest first")
    f.setting("refresh_ms", "how often the page updates")


def _add_serve(sub) -> None:
    parser = _command(sub, "serve", help="serve the model over HTTP (Ray Serve) until stopped (SIGTERM/Ctrl-C)")
    f = Flags(parser, ServeSettings)
    f.add("--model", required=True, help=MODEL_HELP)
    f.setting("host", "the address every replica listens on; 0.0.0.0 for other machines")
    f.setting("port", "the port clients use, shared by the replicas on a machine")
    f.setting("replicas", "model replicas: N, or MIN,MAX to autoscale", type=str)
    f.setting("cpus_per_replica", "CPUs reserved for each replica, and its torch threads")
    f.add("--use-gpu", action="store_true", help="one GPU per model replica")
    f.setting("max_batch_size", "texts per model call, across requests")
    f.setting("batch_wait_ms", "how long a batch waits to fill")
    f.add("--no-batching", dest="batching", action="store_false", help="score each request on its own")
    f.setting("max_ongoing_requests", "requests per replica whose texts may share a model call")
    f.setting("max_queued_requests", "requests per replica waiting beyond those; more get 503")
    f.setting("max_text_chars", MAX_TEXT_CHARS_HELP)
    f.setting("client_timeout_s", "seconds a client may take over a request's head, or stall its body, before a 408")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-sentiment", description="Sentiment analysis of comments on Ray.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('ray-sentiment')}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_pretrain(sub)
    _add_evaluate(sub)
    _add_score(sub)
    _add_stream(sub)
    _add_serve(sub)
    _add_report(sub)
    _add_live(sub)
    predict_parser = sub.add_parser(
        "predict",
        help="print one JSON line per text (an error line for a text it cannot score)",
        parents=[VERBOSE],
        epilog="Texts come from the arguments, or from standard input, one per line, when there are none or "
        "the only one is '-'. A text that begins with '-' goes after '--': predict --model M -- '-terrible'.",
    )
    p = Flags(predict_parser, PredictSettings)
    p.add("--model", required=True, help=MODEL_HELP)
    p.setting("max_text_chars", MAX_TEXT_CHARS_HELP)
    p.add("--explain", action="store_true", help="add each token's contribution to the label (occlusion)")
    p.add(
        "--text-field",
        help="standard input holds JSON lines: score this field of each (its other fields are printed with it)",
    )
    p.add("texts", nargs="*", metavar="TEXT")
    return parser


NOT_SETTINGS = ("command", "verbose", "address")  # flags for the CLI itself, not for a command's settings


def _options(args: argparse.Namespace, *leave_out: str) -> dict:
    return {k: v for k, v in vars(args).items() if k not in (*NOT_SETTINGS, *leave_out)}


def run(args: argparse.Namespace) -> None:
    """Each command: its settings from the flags, its checks (the runtime's checks.py, which loads
    neither Ray nor torch), then the runtime, imported only now: Ray and torch take seconds to
    import, and a refusal should not wait for them."""
    COMMANDS[args.command](args)


def train(args: argparse.Namespace) -> None:
    from .train.checks import check_train

    s = settings_from(TrainSettings, _options(args))
    checked = check_train(s)  # before Ray and torch are imported: a user error is refused at once
    from .train.driver import train as run_training

    run_training(s, checked)


def pretrain(args: argparse.Namespace) -> None:
    from .train.checks import check_pretrain

    s = settings_from(PretrainSettings, _options(args))
    check_pretrain(s)
    from .train.pretrain import pretrain as run_pretraining

    run_pretraining(s)


def score(args: argparse.Namespace) -> None:
    from .scoring.score import score_parquet

    print(score_parquet(settings_from(ScoreSettings, _options(args))).line())


def stream(args: argparse.Namespace) -> None:
    from .stream.checks import check_stream

    s = settings_from(StreamSettings, _options(args, "model"))
    check_stream(args.model, s)
    from .stream.runner import run_until_signalled

    print(run_until_signalled(args.model, s).line())


def stream_stats(args: argparse.Namespace) -> None:
    from .stream.broker import open_reader

    s = settings_from(StreamStatsSettings, _options(args))
    reader = open_reader(s.broker)
    try:
        rows = reader.window_counts(s.output_stream, s.last)
        alerts = reader.alerts(s.output_stream, s.last)
    finally:
        reader.close()
    if s.json:
        print("\n".join([*(json.dumps(r) for r in rows), *(json.dumps({"alert": a.record()}) for a in alerts)]))
        return
    print(format_counts(rows))
    if alerts:
        print(f"\nalerts, newest first ({len(alerts)}):")
        print("\n".join(f"  {a.headline()}" for a in alerts))


def live(args: argparse.Namespace) -> None:
    from .stream.live.app import serve_until_signalled

    serve_until_signalled(settings_from(LiveSettings, _options(args)))


def serve(args: argparse.Namespace) -> None:
    from .serving.checks import check_serve

    s = settings_from(ServeSettings, _options(args))
    bundle = check_serve(s)
    from .serving.app import serve_until_signalled

    serve_until_signalled(s, bundle)


def predict(args: argparse.Namespace) -> None:
    s = settings_from(PredictSettings, _options(args))
    if s.from_stdin:
        predict_stdin(s)
    else:
        predict_texts(s)


def evaluate(args: argparse.Namespace) -> None:
    """A summary (or, with --json, the whole report) on stdout; the whole report in --output."""
    from .scoring.checks import check_evaluate

    s = settings_from(EvaluateSettings, _options(args))
    bundle = check_evaluate(s)
    from .scoring.evaluate import evaluate_path
    from .storage import write_text

    report = evaluate_path(s, bundle)
    text = json.dumps(report, indent=2)
    if s.output:
        write_text(s.output, text + "\n")
    print(text if s.json else format_report(report, s.output))


def format_report(report: dict, written_to: str | None) -> str:
    """The metrics a person reads first: overall, per class, and the confusion matrix."""
    labels = report["confusion_matrix"]["labels"]
    width = max(10, *map(len, labels)) + 2
    lines = [
        f"{report['rows_scored']:,} rows ({report['rows_skipped']:,} skipped: no text or label)  "
        f"accuracy {report['accuracy']:.3f}  macro recall {report['macro_recall']:.3f}  "
        f"macro F1 {report['macro_f1']:.3f}  ROC-AUC {report['roc_auc_ovr']:.3f}",
        "".ljust(width) + "precision  recall  f1     support",
    ]
    for label in labels:
        c = report["per_class"][label]
        lines.append(f"{label.ljust(width)}{c['precision']:<11.3f}{c['recall']:<8.3f}{c['f1']:<7.3f}{c['support']:,}")
    lines.append("confusion matrix (rows: true label, columns: predicted)")
    lines.append("".ljust(width) + "".join(label[: width - 2].ljust(width) for label in labels))
    for label, row in zip(labels, report["confusion_matrix"]["matrix"]):
        lines.append(label.ljust(width) + "".join(f"{n:<{width},}" for n in row))
    for group, g in report.get("groups", {}).items():
        lines.append(
            f"{group}: {g['rows']:,} rows  accuracy {g['accuracy']:.3f}  macro recall {g['macro_recall']:.3f}  "
            f"macro F1 {g['macro_f1']:.3f}"
        )
    for e in report.get("errors", []):
        drivers = sorted(e["tokens"], key=lambda t: -t["contribution"])[:3]
        why = ", ".join(f"{t['token']} {t['contribution']:+.2f}" for t in drivers)
        lines.append(f"{e['true']} taken as {e['predicted']} ({e['confidence']:.0%}; {why}): {e['text'][:100]!r}")
    lines.append(f"whole report (JSON) in {written_to}" if written_to else "--json prints the whole report")
    return "\n".join(line.rstrip() for line in lines)


def report(args: argparse.Namespace) -> None:
    from .report.checks import check_report

    settings = settings_from(ReportSettings, _options(args))
    source = check_report(settings)
    from .report.build import build_report
    from .report.page import write_report

    result = build_report(settings, source)
    files = write_report(result, settings.output)
    shares = "  ".join(f"{r.label} {r.share:.1%}" for r in result.label_shares.itertuples())
    print(f"{result.rows - result.unscored:,} scored comments: {shares}")
    print(f"report written to {settings.output.rstrip('/')}/report.html ({len(files)} files)")


def predict_texts(s: PredictSettings) -> None:
    """One JSON line per text, in `Predictor.score`'s shape (with --explain, plus `tokens`); a text
    that cannot be scored is a line with its error, and the command then exits 2."""
    predictor, texts = _predictor(s.model, s.max_text_chars), list(s.texts)
    refused = _print_scored(
        predictor, [{"text": t} for t in texts], texts=texts, problems=[None] * len(texts), explain=s.explain
    )
    if refused:
        raise RaySentimentError(f"{refused} of {len(texts)} texts could not be scored; see their error fields")


STDIN_CHUNK = 256  # lines scored together: output keeps pace with a slow pipe, memory stays flat


def predict_stdin(s: PredictSettings) -> None:
    """`predict` on standard input, one text (or, with `text_field`, one JSON object) per line,
    scored in chunks as the lines arrive. Bytes that are not UTF-8 reach the text as Python holds
    them, so that its line says so."""
    predictor = _predictor(s.model, s.max_text_chars)
    lines = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    total = refused = 0
    for chunk in iter(lambda: list(itertools.islice(lines, STDIN_CHUNK)), []):
        rows, texts, problems = zip(*(_stdin_row(line.rstrip("\r\n"), s.text_field) for line in chunk))
        refused += _print_scored(predictor, list(rows), texts=list(texts), problems=list(problems), explain=s.explain)
        total += len(chunk)
        sys.stdout.flush()
    if refused:
        raise RaySentimentError(f"{refused} of {total} texts could not be scored; see their error fields")


def _stdin_row(line: str, text_field: str | None) -> tuple[dict, str, str | None]:
    """A line of standard input: the row printed with its result, its text, and why it cannot be
    scored if it cannot."""
    if text_field is None:
        return {"text": line}, line, None
    try:
        row = json.loads(line)
    except ValueError:
        return {"line": line}, "", "line is not JSON"
    if not isinstance(row, dict) or text_field not in row:
        return {"line": line}, "", f"line has no field {text_field!r}"
    if not isinstance(row[text_field], str):
        return row, "", f"field {text_field!r} is not a string"
    return row, row[text_field], None


def _predictor(model: str, max_text_chars: int):
    bundle = load_bundle(model)  # a broken bundle is refused before torch is imported
    from .model.predictor import Predictor

    return Predictor(bundle, max_text_chars=max_text_chars)


def _print_scored(predictor, rows: list[dict], *, texts: list[str], problems: list, explain: bool) -> int:
    """Each row printed with its text's result (a row's own problem, if it has one, as the error);
    returns how many could not be scored. A row's fields named like a result are kept as input_<name>."""
    records = predictor.score(texts)
    for record, problem in zip(records, problems):
        if problem is not None:
            record.update(dict.fromkeys(record, None), error=problem)
    if explain:
        good = [i for i, r in enumerate(records) if r["error"] is None]
        for i, why in zip(good, predictor.explain([texts[i] for i in good])):
            records[i]["tokens"] = why["tokens"]
    for row, record in zip(rows, records):
        row = {(f"input_{k}" if k in record else k): v for k, v in row.items()}
        ascii_only = record["error"] == "text is not valid UTF-8"  # its text cannot be written as UTF-8
        print(json.dumps({**row, **record}, ensure_ascii=ascii_only))
    return sum(1 for r in records if r["error"])


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
    left = 2 if keyed else 1  # text columns are left-aligned, counts right-aligned
    return "\n".join(
        "  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )


COMMANDS = {
    "train": train,
    "pretrain": pretrain,
    "evaluate": evaluate,
    "predict": predict,
    "score": score,
    "serve": serve,
    "stream": stream,
    "stream-stats": stream_stats,
    "live": live,
    "report": report,
}


def report_bug(exc: Exception, verbose: bool) -> int:
    """A bug: one line saying so and where its traceback was written; the traceback itself with -v."""
    trace = traceback.format_exc()
    fd, path = tempfile.mkstemp(prefix="ray-sentiment-bug-", suffix=".txt")  # readable by its owner only
    with os.fdopen(fd, "w") as file:
        file.write(trace)
    if verbose:
        print(trace, file=sys.stderr)
    raised = unwrapped(exc)
    what = (str(raised).strip().splitlines() or [""])[0]
    print(
        f"ray-sentiment: internal error, a bug in ray-sentiment (not in your input): {type(raised).__name__}"
        f"{': ' + what if what else ''}; the traceback is in {path}; please report it",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # as parse_args says it, and for predict how to pass a text that looks like an option
        dashed = "; a text that begins with '-' goes after '--'" if args.command == "predict" else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{dashed}")
    if args.verbose:
        from .runtime import set_verbose

        set_verbose(True)
    address = getattr(args, "address", None)
    if address == "local":
        os.environ.pop("RAY_ADDRESS", None)
    elif address:  # read by every path that chooses between a cluster and a local Ray
        os.environ["RAY_ADDRESS"] = address
    try:
        run(args)
    except RaySentimentError as exc:
        print(f"ray-sentiment: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head -1`): nothing left to say, nowhere to say it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that Python's exit flush is quiet too
        return 141  # as a shell reports a process ended by SIGPIPE
    except Exception as exc:
        cause = user_cause(exc)  # a file that cannot be written, say, or a machine that failed
        if cause is None:
            return report_bug(exc, args.verbose)
        print(f"ray-sentiment: error: {user_message(cause)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
