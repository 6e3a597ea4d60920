"""Batch scoring throughput: Ray Data end to end against the in-process ceiling, on one machine.

Builds N rows (default 1,000,000) by resampling tweets/train into Parquet files, then measures in
one run: (1) `score_parquet` end to end (read, tokenise, model, write); (2) the in-process ceiling,
`Predictor.predict_proba` in this process, no Ray, no I/O; (3) the tokenizer alone; (4) the TF-IDF
+ logistic regression baseline's predict; (5) peak memory (resident, all Ray processes plus this
one) at N and 4N rows. The model is the `seed` preset with untrained weights: speed does not depend
on what the weights hold.

    python benchmarks/score_throughput.py [--rows 1000000] [--concurrency 1] [--batch-size 1024]
"""

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment import Predictor
from ray_sentiment.runtime import ensure_ray
from ray_sentiment.score import score_parquet
from ray_sentiment.settings import ScoreSettings

from _common import DATASETS, Sampler, add_json_option, finish, ratios, seed_bundle, tfidf_baseline, write_rows

SAMPLE = 200_000  # rows for the in-process measurements


class PeakMemory(Sampler):
    """The peak resident memory of this process and all its descendants (Ray's daemons and workers)."""

    peak = 0

    def sample(self):
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        self.peak = max(self.peak, total)


def rate(fn, rows: int) -> float:
    started = time.perf_counter()
    fn()
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--concurrency", default="1")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--skip-4n", action="store_true", help="skip the 4N memory run")
    add_json_option(parser)
    args = parser.parse_args()

    train = pd.read_parquet(DATASETS / "tweets/train.parquet")
    texts = train["text"].to_numpy()
    results, memory = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = seed_bundle(train["text"].tolist(), tmp / "bundle")
        sample = list(np.random.default_rng(0).choice(texts, SAMPLE))

        torch.set_num_threads(psutil.cpu_count())
        predictor = Predictor.load(bundle)
        predictor.predict_proba(sample[:2048])  # warm-up
        ceiling = rate(lambda: predictor.predict_proba(sample, batch_size=args.batch_size), SAMPLE)
        tokenizer = rate(lambda: [predictor.encoder(sample[i : i + 1024]) for i in range(0, SAMPLE, 1024)], SAMPLE)
        tfidf = tfidf_predict_rate(train, sample)

        ensure_ray()
        sizes = [args.rows] if args.skip_4n else [args.rows, 4 * args.rows]
        for rows in sizes:
            data = write_rows(texts, rows, tmp / f"in-{rows}")
            with PeakMemory() as peak:
                settings = ScoreSettings(
                    str(bundle),
                    str(data),
                    str(tmp / f"out-{rows}"),
                    batch_size=args.batch_size,
                    concurrency=args.concurrency,
                )
                summary = score_parquet(settings)
            assert summary.rows_out == rows, summary.line()
            memory[rows] = peak.peak
            results.append(
                {
                    "measure": f"score_parquet end to end, {rows:,} rows",
                    "rows/s": summary.rows_per_s,
                    "peak memory GiB": peak.peak / 2**30,
                }
            )
        results += [
            {"measure": "in-process ceiling: Predictor.predict_proba", "rows/s": ceiling},
            {"measure": "tokenizer alone (encode_batch)", "rows/s": tokenizer},
            {"measure": "TF-IDF + logistic regression predict", "rows/s": tfidf},
        ]
    import ray

    ray.shutdown()
    title = (
        f"seed preset, batch {args.batch_size}, {args.concurrency} model actor(s), {psutil.cpu_count()} CPUs; "
        "× baseline: rows/s over the in-process ceiling"
    )
    if len(memory) == 2:
        title += f"; peak memory at 4N / at N: {memory[4 * args.rows] / memory[args.rows]:.2f}"
    finish(ratios(results, "rows/s", ceiling), args, title)


def tfidf_predict_rate(train: pd.DataFrame, sample: list[str]) -> float:
    model = tfidf_baseline(train["text"], train["label"])
    part = sample[:50_000]
    return rate(lambda: model.predict_proba(part), len(part))


if __name__ == "__main__":
    main()
