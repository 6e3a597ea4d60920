"""Scoring speed in this process, per preset: one text (what `predict`, a Serve request and a
stream entry of one pay), 32 texts, and bulk texts/s, all through `Predictor.predict_proba` on
CPU with torch's default threads (one per core). The `seed` preset is the baseline; the default
(hybrid) is also timed with its linear model forced onto the sparse product for every batch, the
only way it predicted before small batches summed their n-grams' coefficients directly.

Bundles have untrained weights (speed does not depend on what they hold); texts are tweets/train.

    python benchmarks/latency.py [--repeats 200] [--bulk 20000] [--presets seed,bilstm,default]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment import Predictor
from ray_sentiment.model import linear

from _common import DATASETS, add_json_option, finish, median, random_bundle, ratios


def timed(call, repeats: int) -> float:
    """Median seconds of `repeats` calls, after one to warm up."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return median(times)


def measure(name: str, predictor: Predictor, texts: list[str], args: argparse.Namespace) -> dict:
    singles = iter(texts[: args.repeats + 1])  # a different tweet each call
    one = timed(lambda: predictor.predict_proba([next(singles)]), args.repeats)
    batch = timed(lambda: predictor.predict_proba(texts[:32]), max(10, args.repeats // 10))
    bulk = texts[: args.bulk]
    seconds = timed(lambda: predictor.predict_proba(bulk), 3)
    return {
        "model": name,
        "1 text ms": 1e3 * one,
        "32 texts ms": 1e3 * batch,
        "bulk texts/s": len(bulk) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="single texts timed (the median is shown)")
    parser.add_argument("--bulk", type=int, default=20_000, help="texts scored at once for the bulk rate")
    parser.add_argument("--presets", default="seed,bilstm,default")
    add_json_option(parser)
    args = parser.parse_args()
    texts = pd.read_parquet(DATASETS / "tweets" / "train.parquet", columns=["text"])["text"].tolist()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            predictor = Predictor.load(random_bundle(texts, Path(tmp) / preset, preset))
            rows.append(measure(preset, predictor, texts, args))
            if predictor.linear is not None:
                gathered, linear.GATHER_TEXTS = linear.GATHER_TEXTS, 0
                rows.append(measure(f"{preset}, sparse product always", predictor, texts, args))
                linear.GATHER_TEXTS = gathered
    seed = next((r for r in rows if r["model"] == "seed"), rows[0])
    rows = ratios(rows, "1 text ms", seed["1 text ms"], "1 text × seed")
    rows = ratios(rows, "bulk texts/s", seed["bulk texts/s"], "bulk × seed")
    finish(rows, args, f"in-process scoring, {torch.get_num_threads()} torch threads, untrained weights")


if __name__ == "__main__":
    main()
