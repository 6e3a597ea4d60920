"""`ray-sentiment` command line. A user error prints one line and exits 2.

Flags map one to one onto the settings in settings.py, whose fields give every default.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from importlib.metadata import version

from .errors import RaySentimentError
from .model import PRESETS
from .results import MAX_TEXT_CHARS
from .settings import ScoreSettings, ServeSettings, StreamSettings, TrainSettings, default, settings_from

MODEL_HELP = "bundle directory; local or s3:// gs://"
REDIS_HELP = "redis://HOST:PORT/DB (default: %(default)s)"


def _add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", default="text", help="column holding the comment text (default: %(default)s)")
    p.add_argument("--label-column", default="label", help="column holding the label (default: %(default)s)")


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model bundle on labelled comments (Ray Train)")
    t.add_argument(
        "--train",
        dest="train_path",
        required=True,
        help="Parquet/CSV/JSONL file, directory or glob; local or s3:// gs://",
    )
    t.add_argument("--val", dest="val_path", help="validation data; default: a seeded, stratified 10%% of --train")
    t.add_argument("--output", required=True, help="bundle directory to write; local or s3:// gs://")
    _add_columns(t)
    t.add_argument(
        "--preset",
        default=default(TrainSettings, "preset"),
        choices=sorted(PRESETS),
        help="architecture and recipe (default: %(default)s)",
    )
    t.add_argument(
        "--num-workers",
        type=int,
        default=default(TrainSettings, "num_workers"),
        help="Ray Train workers (default: %(default)s)",
    )
    t.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    t.add_argument(
        "--cpus-per-worker", type=float, help="CPUs reserved per worker (default: 1, less on small machines)"
    )
    t.add_argument("--epochs", type=int, help="maximum epochs (preset: 10)")
    t.add_argument("--batch-size", type=int, help="global batch size, split across workers (preset: 32)")
    t.add_argument("--learning-rate", type=float, help="Adam learning rate (preset: 0.001)")
    t.add_argument("--max-len", type=int, help="tokens kept per text (preset: 100)")
    t.add_argument("--vocab-size", type=int, help="vocabulary size, <pad> and <unk> included (preset: 10000)")
    weighting = t.add_mutually_exclusive_group()
    weighting.add_argument(
        "--class-weighted",
        dest="class_weighted",
        action="store_true",
        default=None,
        help="weight the loss by inverse class frequency",
    )
    weighting.add_argument("--no-class-weighted", dest="class_weighted", action="store_false")
    t.add_argument(
        "--embedding-init",
        choices=["random", "ppmi"],
        help="start the embedding from noise or from PPMI-SVD word vectors (preset: default uses ppmi)",
    )
    t.add_argument(
        "--unlabelled",
        dest="unlabelled_path",
        metavar="PATH",
        help="unlabelled comments (same --text-column) that the word vectors also learn from",
    )
    t.add_argument("--seed", type=int, default=default(TrainSettings, "seed"))
    t.add_argument(
        "--max-failures",
        type=int,
        default=default(TrainSettings, "max_failures"),
        help="worker-group restarts from the last checkpoint (default: %(default)s)",
    )
    t.add_argument("--storage-path", help="where checkpoints go: a local path or s3:// gs:// (default: ~/ray_results)")


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="score labelled data and print the metrics as JSON")
    e.add_argument("--model", required=True, help=MODEL_HELP)
    e.add_argument("--data", required=True, help="labelled Parquet/CSV/JSONL file, directory or glob")
    _add_columns(e)
    e.add_argument("--output", help="also write the report to this JSON file; local or s3:// gs://")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="(default: %(default)s)")


def _add_score(sub) -> None:
    d = lambda name: default(ScoreSettings, name)  # noqa: E731
    s = sub.add_parser("score", help="score Parquet files into Parquet files (Ray Data)")
    s.add_argument("--model", required=True, help=MODEL_HELP)
    s.add_argument("--input", required=True, help="Parquet file, directory or glob; local or s3:// gs://")
    s.add_argument("--output", required=True, help="directory for the scored Parquet files; local or s3:// gs://")
    s.add_argument("--text-column", default=d("text_column"), help="column holding the text (default: %(default)s)")
    s.add_argument("--id-column", help="unique row id; a rerun then resumes, skipping ids already written")
    s.add_argument("--columns", help="input columns to keep, comma-separated (default: all)")
    s.add_argument("--batch-size", type=int, default=d("batch_size"), help="rows per model call (default: %(default)s)")
    s.add_argument(
        "--concurrency",
        default=str(d("concurrency")),
        help="model actors: N, or MIN,MAX to autoscale (default: %(default)s)",
    )
    s.add_argument("--use-gpu", action="store_true", help="one GPU per model actor")
    s.add_argument(
        "--overwrite", action="store_true", help="replace the output of an earlier run (only files it wrote)"
    )
    s.add_argument(
        "--allow-duplicate-ids", action="store_true", help="accept an --id-column whose ids repeat; resume is then off"
    )
    _add_max_text_chars(s, d("max_text_chars"))


def _add_max_text_chars(p: argparse.ArgumentParser, value: int) -> None:
    p.add_argument(
        "--max-text-chars",
        type=int,
        default=value,
        help="longer texts are refused, with that reason (default: %(default)s)",
    )


def _add_stream(sub) -> None:
    d = lambda name: default(StreamSettings, name)  # noqa: E731
    st = sub.add_parser("stream", help="score a Redis stream of comments until stopped (SIGTERM/Ctrl-C)")
    st.add_argument("--model", required=True, help=MODEL_HELP)
    st.add_argument("--redis", default=d("redis"), help=REDIS_HELP)
    st.add_argument("--input-stream", required=True, help="stream whose entries carry the comment text")
    st.add_argument("--output-stream", required=True, help="stream the scored entries are added to")
    st.add_argument("--group", default=d("group"), help="consumer group, created if missing (default: %(default)s)")
    st.add_argument(
        "--start",
        choices=["begin", "new"],
        default=d("start"),
        help="where a group created now starts: the whole stream or only new entries (default: %(default)s)",
    )
    st.add_argument(
        "--consumers", type=int, default=d("consumers"), help="consumer actors holding the model (default: %(default)s)"
    )
    st.add_argument(
        "--batch-size", type=int, default=d("batch_size"), help="entries read and scored at once (default: %(default)s)"
    )
    st.add_argument(
        "--block-ms",
        type=int,
        default=d("block_ms"),
        help="how long a read waits for new entries (default: %(default)s)",
    )
    st.add_argument(
        "--dead-letter-stream",
        default=d("dead_letter_stream"),
        help="where unscorable entries go (default: INPUT:dead-letter)",
    )
    st.add_argument(
        "--max-deliveries",
        type=int,
        default=d("max_deliveries"),
        help="deliveries before an entry is dead-lettered (default: %(default)s)",
    )
    st.add_argument(
        "--claim-idle-ms",
        type=int,
        default=d("claim_idle_ms"),
        help="take over entries pending this long on a consumer that died (default: %(default)s)",
    )
    st.add_argument("--key-field", help="also count per value of this field (e.g. brand)")
    st.add_argument(
        "--window-s", type=int, default=d("window_s"), help="counting window in seconds (default: %(default)s)"
    )
    st.add_argument(
        "--text-field", default=d("text_field"), help="field holding the comment text (default: %(default)s)"
    )
    _add_max_text_chars(st, d("max_text_chars"))
    st.add_argument("--use-gpu", action="store_true", help="one GPU per consumer actor")

    ss = sub.add_parser("stream-stats", help="print the live sentiment counts per window (and key)")
    ss.add_argument("--redis", default=d("redis"), help=REDIS_HELP)
    ss.add_argument("--output-stream", required=True, help="the output stream given to `stream`")
    ss.add_argument("--last", type=int, default=10, help="windows to show (default: %(default)s)")
    ss.add_argument("--json", action="store_true", help="one JSON object per window and key")


def _add_serve(sub) -> None:
    d = lambda name: default(ServeSettings, name)  # noqa: E731
    sv = sub.add_parser("serve", help="serve the model over HTTP (Ray Serve) until stopped (SIGTERM/Ctrl-C)")
    sv.add_argument("--model", required=True, help=MODEL_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    sv.add_argument(
        "--replicas",
        default=str(d("replicas")),
        help="model replicas: N, or MIN,MAX to autoscale (default: %(default)s)",
    )
    sv.add_argument("--use-gpu", action="store_true", help="one GPU per model replica")
    sv.add_argument(
        "--max-batch-size",
        type=int,
        default=d("max_batch_size"),
        help="texts per model call, across requests (default: %(default)s)",
    )
    sv.add_argument(
        "--batch-wait-ms",
        type=float,
        default=d("batch_wait_ms"),
        help="how long a batch waits to fill (default: %(default)s)",
    )
    sv.add_argument("--no-batching", dest="batching", action="store_false", help="score each request on its own")
    _add_max_text_chars(sv, d("max_text_chars"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-sentiment", description="Sentiment analysis of comments on Ray.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('ray-sentiment')}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_score(sub)
    _add_stream(sub)
    _add_serve(sub)
    p = sub.add_parser("predict", help="print one JSON line per text (an error line for a text it cannot score)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    _add_max_text_chars(p, MAX_TEXT_CHARS)
    p.add_argument("texts", nargs="+", metavar="TEXT")
    return parser


def _options(args: argparse.Namespace, *leave_out: str) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("command", *leave_out)}


def run(args: argparse.Namespace) -> None:
    """Each command: its settings from the flags, then the runtime, imported only when used."""
    command = args.command
    if command == "train":
        from .train import train

        train(settings_from(TrainSettings, _options(args)))
    elif command == "evaluate":
        from .evaluate import evaluate_path
        from .storage import write_text

        report = evaluate_path(args.model, args.data, args.text_column, args.label_column, args.device)
        text = json.dumps(report, indent=2)
        if args.output:
            write_text(args.output, text + "\n")
        print(text)
    elif command == "score":
        from .batch import score_parquet

        print(score_parquet(settings_from(ScoreSettings, _options(args))).line())
    elif command == "stream":
        from .stream import run_until_signalled

        print(run_until_signalled(args.model, settings_from(StreamSettings, _options(args, "model"))).line())
    elif command == "stream-stats":
        from .redis_broker import window_counts

        rows = window_counts(args.redis, args.output_stream, args.last)
        print("\n".join(json.dumps(r) for r in rows) if args.json else format_counts(rows))
    elif command == "serve":
        from .serve import serve_until_signalled

        serve_until_signalled(settings_from(ServeSettings, _options(args, "host", "port")), args.host, args.port)
    elif command == "predict":
        predict(args.model, args.texts, args.max_text_chars)


def predict(model: str, texts: list[str], max_text_chars: int) -> None:
    """One JSON line per text, in `Predictor.score`'s shape; a text that cannot be scored is a line
    with its error, and the command then exits 2."""
    from .predictor import Predictor

    records = Predictor.load(model, max_text_chars=max_text_chars).score(texts)
    for text, record in zip(texts, records):
        print(json.dumps({"text": text, **record}, ensure_ascii=False))
    refused = sum(1 for r in records if r["error"])
    if refused:
        raise RaySentimentError(f"{refused} of {len(texts)} texts could not be scored; see their error fields")


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except RaySentimentError as exc:
        print(f"ray-sentiment: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
