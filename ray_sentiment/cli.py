"""`ray-sentiment` command line. A user error prints one line and exits 2."""
from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import RaySentimentError
from .model import PRESETS


def _add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", default="text", help="column holding the comment text (default: text)")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-sentiment", description="Sentiment analysis of comments on Ray.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model bundle on labelled comments (Ray Train)")
    t.add_argument("--train", required=True, help="Parquet/CSV/JSONL file, directory or glob; local or s3:// gs://")
    t.add_argument("--val", help="validation data; default: a seeded, stratified 10%% of --train")
    t.add_argument("--output", required=True, help="bundle directory to write; local or s3:// gs://")
    _add_columns(t)
    t.add_argument("--preset", default="default", choices=sorted(PRESETS), help="architecture and recipe (default: default)")
    t.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (default: 1)")
    t.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    t.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per worker (default: 1, less on small machines)")
    t.add_argument("--epochs", type=int, help="maximum epochs (preset: 10)")
    t.add_argument("--batch-size", type=int, help="global batch size, split across workers (preset: 32)")
    t.add_argument("--learning-rate", type=float, help="Adam learning rate (preset: 0.001)")
    t.add_argument("--max-len", type=int, help="tokens kept per text (preset: 100)")
    t.add_argument("--vocab-size", type=int, help="vocabulary size, <pad> and <unk> included (preset: 10000)")
    weighting = t.add_mutually_exclusive_group()
    weighting.add_argument("--class-weighted", dest="class_weighted", action="store_true", default=None,
                           help="weight the loss by inverse class frequency")
    weighting.add_argument("--no-class-weighted", dest="class_weighted", action="store_false")
    t.add_argument("--embedding-init", choices=["random", "ppmi"],
                   help="start the embedding from noise or from PPMI-SVD word vectors (preset: default uses ppmi)")
    t.add_argument("--unlabelled", dest="unlabelled_path", metavar="PATH",
                   help="unlabelled comments (same --text-column) that the word vectors also learn from")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-failures", type=int, default=0, help="worker-group restarts from the last checkpoint")
    t.add_argument("--storage-path", help="where checkpoints go: a local path or s3:// gs:// (default: ~/ray_results)")

    e = sub.add_parser("evaluate", help="score labelled data and print the metrics as JSON")
    e.add_argument("--model", required=True, help="bundle directory; local or s3:// gs://")
    e.add_argument("--data", required=True, help="labelled Parquet/CSV/JSONL file, directory or glob")
    _add_columns(e)
    e.add_argument("--output", help="also write the report to this JSON file; local or s3:// gs://")
    e.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")

    s = sub.add_parser("score", help="score Parquet files into Parquet files (Ray Data)")
    s.add_argument("--model", required=True, help="bundle directory; local or s3:// gs://")
    s.add_argument("--input", required=True, help="Parquet file, directory or glob; local or s3:// gs://")
    s.add_argument("--output", required=True, help="directory for the scored Parquet files; local or s3:// gs://")
    s.add_argument("--text-column", default="text", help="column holding the comment text (default: text)")
    s.add_argument("--id-column", help="unique row id; a rerun then resumes, skipping ids already written")
    s.add_argument("--columns", help="input columns to keep, comma-separated (default: all)")
    s.add_argument("--batch-size", type=int, default=1024, help="rows per model call (default: 1024)")
    s.add_argument("--concurrency", default="1", help="model actors: N, or MIN,MAX to autoscale (default: 1)")
    s.add_argument("--use-gpu", action="store_true", help="one GPU per model actor")
    s.add_argument("--overwrite", action="store_true", help="replace the output of an earlier run (only files it wrote)")
    s.add_argument("--allow-duplicate-ids", action="store_true",
                   help="accept an --id-column whose ids repeat; resume is then off")

    st = sub.add_parser("stream", help="score a Redis stream of comments until stopped (SIGTERM/Ctrl-C)")
    st.add_argument("--model", required=True, help="bundle directory; local or s3:// gs://")
    st.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="redis://HOST:PORT/DB (default: local)")
    st.add_argument("--input-stream", required=True, help="stream whose entries carry the comment text")
    st.add_argument("--output-stream", required=True, help="stream the scored entries are added to")
    st.add_argument("--group", default="ray-sentiment", help="consumer group, created if missing (default: ray-sentiment)")
    st.add_argument("--start", choices=["begin", "new"], default="begin",
                    help="where a group created now starts: the whole stream or only new entries (default: begin)")
    st.add_argument("--consumers", type=int, default=1, help="consumer actors holding the model (default: 1)")
    st.add_argument("--batch-size", type=int, default=256, help="entries read and scored at once (default: 256)")
    st.add_argument("--block-ms", type=int, default=1000, help="how long a read waits for new entries (default: 1000)")
    st.add_argument("--dead-letter-stream", help="where unscorable entries go (default: INPUT:dead-letter)")
    st.add_argument("--max-deliveries", type=int, default=5, help="deliveries before an entry is dead-lettered (default: 5)")
    st.add_argument("--claim-idle-ms", type=int, default=30_000,
                    help="take over entries pending this long on a consumer that died (default: 30000)")
    st.add_argument("--key-field", help="also count per value of this field (e.g. brand)")
    st.add_argument("--window-s", type=int, default=60, help="counting window in seconds (default: 60)")
    st.add_argument("--text-field", default="text", help="field holding the comment text (default: text)")
    st.add_argument("--max-text-chars", type=int, default=100_000, help="longer texts are dead-lettered (default: 100000)")
    st.add_argument("--use-gpu", action="store_true", help="one GPU per consumer actor")

    ss = sub.add_parser("stream-stats", help="print the live sentiment counts per window (and key)")
    ss.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="redis://HOST:PORT/DB (default: local)")
    ss.add_argument("--output-stream", required=True, help="the output stream given to `stream`")
    ss.add_argument("--last", type=int, default=10, help="windows to show (default: 10)")
    ss.add_argument("--json", action="store_true", help="one JSON object per window and key")

    sv = sub.add_parser("serve", help="serve the model over HTTP (Ray Serve) until stopped (SIGTERM/Ctrl-C)")
    sv.add_argument("--model", required=True, help="bundle directory; local or s3:// gs://")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    sv.add_argument("--replicas", default="1", help="model replicas: N, or MIN,MAX to autoscale (default: 1)")
    sv.add_argument("--use-gpu", action="store_true", help="one GPU per model replica")
    sv.add_argument("--max-batch-size", type=int, default=2048, help="texts per model call, across requests (default: 2048)")
    sv.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default: 5)")
    sv.add_argument("--no-batching", dest="batching", action="store_false", help="score each request on its own")

    p = sub.add_parser("predict", help="print one JSON line per text")
    p.add_argument("--model", required=True, help="bundle directory; local or s3:// gs://")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "train":
        from .train import TrainConfig, train

        options = {k: v for k, v in vars(args).items() if k not in ("command", "train", "val")}
        train(TrainConfig(train_path=args.train, val_path=args.val, **options))
    elif args.command == "evaluate":
        from .evaluate import evaluate_path

        from .storage import write_text

        report = evaluate_path(args.model, args.data, args.text_column, args.label_column, args.device)
        text = json.dumps(report, indent=2)
        if args.output:
            write_text(args.output, text + "\n")
        print(text)
    elif args.command == "score":
        from .batch import score_parquet

        summary = score_parquet(
            args.model, args.input, args.output, text_column=args.text_column, id_column=args.id_column,
            columns=args.columns.split(",") if args.columns else None, batch_size=args.batch_size,
            concurrency=args.concurrency, use_gpu=args.use_gpu, overwrite=args.overwrite,
            allow_duplicate_ids=args.allow_duplicate_ids,
        )
        print(summary.line())
    elif args.command == "stream":
        from .stream import StreamSettings, run_until_signalled

        options = {k: v for k, v in vars(args).items() if k not in ("command", "model")}
        print(run_until_signalled(args.model, StreamSettings(**options)).line())
    elif args.command == "stream-stats":
        from .redis_broker import window_counts
        from .stream import format_counts

        rows = window_counts(args.redis, args.output_stream, args.last)
        print("\n".join(json.dumps(r) for r in rows) if args.json else format_counts(rows))
    elif args.command == "serve":
        from .batch import parse_concurrency
        from .serve import ServeSettings, serve_until_signalled

        options = {k: v for k, v in vars(args).items() if k not in ("command", "host", "port")}
        options["replicas"] = parse_concurrency(args.replicas, "--replicas")
        serve_until_signalled(ServeSettings(**options), args.host, args.port)
    elif args.command == "predict":
        from .predictor import Predictor

        predictor = Predictor.load(args.model)
        for text, row in zip(args.texts, predictor.predict_proba(args.texts)):
            best = int(row.argmax())
            scores = {label: round(float(p), 6) for label, p in zip(predictor.labels, row)}
            print(json.dumps({"text": text, "label": predictor.labels[best], "confidence": scores[predictor.labels[best]],
                              "scores": scores}, ensure_ascii=False))


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
