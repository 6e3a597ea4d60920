"""Batch scoring throughput: Ray Data end to end against the in-process ceiling, on one machine.

Builds N rows (default 1,000,000) by resampling tweets/train into Parquet files, then measures in
one run: (1) the tokenizer alone on one core, the compiled rules (rules_arrow) against Python's
re (rules_re, the tokenizer before them), and how many texts they split identically; (2) the
in-process ceiling, `Predictor.predict_proba` in this process with a thread per CPU, no Ray, no
I/O, with either tokenizer; (3) `score_parquet` end to end, Ray's start included; (4) the TF-IDF +
logistic regression baseline's predict; (5) peak memory (resident, all Ray processes plus this
one) at N and 4N rows. The model is the `seed` preset with untrained weights: speed does not
depend on what the weights hold.

    python benchmarks/score_throughput.py [--rows 1000000] [--concurrency 1] [--batch-size 1024]
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment import Predictor
from ray_sentiment.runtime import IN_PROCESS_ENV, ensure_ray
from ray_sentiment.scoring.score import score_parquet
from ray_sentiment.settings import ScoreSettings
from ray_sentiment.text import rules_arrow, rules_re
from ray_sentiment.text import tokens as text

from _common import DATASETS, Sampler, add_json_option, finish, random_bundle, ratios, tfidf_baseline, write_rows

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
        bundle = random_bundle(train["text"].tolist(), tmp / "bundle")
        sample = list(np.random.default_rng(0).choice(texts, SAMPLE))

        chunks = [sample[i : i + rules_arrow.CHUNK] for i in range(0, SAMPLE, rules_arrow.CHUNK)]
        old_tokens = [rules_re.split_texts(c) for c in chunks]
        new_tokens = [rules_arrow.split_array(pa.array(c)) for c in chunks]
        same = sum(a == b for o, n in zip(old_tokens, new_tokens) for a, b in zip(o, n.to_pylist()))
        old_tokenizer = rate(lambda: [rules_re.split_texts(c) for c in chunks], SAMPLE)
        new_tokenizer = rate(lambda: [rules_arrow.split_array(pa.array(c)) for c in chunks], SAMPLE)

        torch.set_num_threads(psutil.cpu_count())
        predictor = Predictor.load(bundle)
        predictor.predict_proba(sample[:2048])  # warm-up
        ceiling = rate(lambda: predictor.predict_proba(sample, batch_size=args.batch_size), SAMPLE)
        compiled_from, text.COMPILED_FROM = text.COMPILED_FROM, SAMPLE + 1  # every call through Python's re
        old_ceiling = rate(lambda: predictor.predict_proba(sample, batch_size=args.batch_size), SAMPLE)
        text.COMPILED_FROM = compiled_from
        tfidf = tfidf_predict_rate(train, sample)

        started = time.perf_counter()
        ensure_ray()
        os.environ[IN_PROCESS_ENV] = "0"  # Ray Data's pipeline, whatever the size: what this measures
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
            first = not results
            results.append(
                {
                    "measure": f"score end to end, {rows:,} rows" + (", Ray's start included" if first else ""),
                    "rows/s": rows / (time.perf_counter() - started) if first else summary.rows_per_s,
                    "peak memory GiB": peak.peak / 2**30,
                }
            )
        results += [
            {"measure": "in-process ceiling: Predictor.predict_proba (compiled tokenizer)", "rows/s": ceiling},
            {"measure": "in-process ceiling with Python's re tokenizer (before)", "rows/s": old_ceiling},
            {"measure": "tokenizer alone, one core: compiled rules (RE2 on Arrow)", "rows/s": new_tokenizer},
            {"measure": "tokenizer alone, one core: Python's re (before)", "rows/s": old_tokenizer},
            {"measure": "TF-IDF + logistic regression predict", "rows/s": tfidf},
        ]
    import ray

    ray.shutdown()
    title = (
        f"seed preset, batch {args.batch_size}, {args.concurrency} model actor(s), {psutil.cpu_count()} CPUs; "
        "× baseline: rows/s over the in-process ceiling (compiled tokenizer); "
        f"the two tokenizers split {same:,} of {SAMPLE:,} texts identically ({same / SAMPLE:.4%}); "
        f"compiled tokenizer / Python's re on one core: {new_tokenizer / old_tokenizer:.2f}x"
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
