"""Scoring speed in this process, per preset: one text (what `predict`, a Serve request and a
stream entry of one pay), 32 texts, and bulk texts/s, all through `Predictor.predict_proba` on
CPU with torch's default threads (one per core). The `seed` preset is the baseline; the hybrid
(the default's teacher) is also timed with its linear model forced onto the sparse product for
every batch, the only way it predicted before small batches summed their n-grams' coefficients
directly. The default (the student) has `seed`'s shapes. Each
LSTM is timed once more with its LSTM and dense layers quantised to int8 (PyTorch's dynamic
quantisation), to see whether it would pay.

Bundles have untrained weights (speed does not depend on what they hold); texts are tweets/train.

    python benchmarks/latency.py [--repeats 200] [--bulk 20000] [--rounds 5] [--presets seed,bilstm,hybrid,default]
"""

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment import Predictor
from ray_sentiment.model import linear

from _common import DATASETS, add_json_option, finish, median, random_bundle, ratios


def timed(call, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls, after one to warm up."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def one_round(predict_proba, texts: list[str], *, first: int, singles: int, bulk: int) -> tuple[list[float], ...]:
    """Seconds per call: single texts (a different tweet each, from `first`), 32 texts, `bulk` texts."""
    single = iter(texts[first:])
    return (
        timed(lambda: predict_proba([next(single)]), singles),
        timed(lambda: predict_proba(texts[:32]), 4),
        timed(lambda: predict_proba(texts[:bulk]), 1),
    )


def models(texts: list[str], presets: list[str], tmp: Path) -> dict:
    """name: a predict_proba callable, for each preset and its variants."""
    out = {}
    for preset in presets:
        predictor = Predictor.load(random_bundle(texts, tmp / preset, preset))
        out[preset] = predictor.predict_proba
        if predictor.linear is not None:
            out[f"{preset}, sparse product always"] = sparse_always(predictor)
        quantised = Predictor(predictor.bundle)
        with warnings.catch_warnings():  # PyTorch now points to torchao for this API
            warnings.simplefilter("ignore")
            quantised._model = torch.ao.quantization.quantize_dynamic(
                quantised._model, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8
            )
        out[f"{preset}, int8"] = quantised.predict_proba
    return out


def sparse_always(predictor: Predictor):
    def predict_proba(texts):
        gathered, linear.GATHER_TEXTS = linear.GATHER_TEXTS, 0
        try:
            return predictor.predict_proba(texts)
        finally:
            linear.GATHER_TEXTS = gathered

    return predict_proba


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="single texts timed per model (the median is shown)")
    parser.add_argument("--bulk", type=int, default=20_000, help="texts scored at once for the bulk rate")
    parser.add_argument("--rounds", type=int, default=5, help="the models take turns this many times")
    parser.add_argument("--presets", default="seed,bilstm,hybrid,default")
    add_json_option(parser)
    args = parser.parse_args()
    texts = pd.read_parquet(DATASETS / "tweets" / "train.parquet", columns=["text"])["text"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        timed_models = models(texts, args.presets.split(","), Path(tmp))
        one: dict[str, list[float]] = {name: [] for name in timed_models}
        batch: dict[str, list[float]] = {name: [] for name in timed_models}
        bulk: dict[str, list[float]] = {name: [] for name in timed_models}
        per_round = max(1, args.repeats // args.rounds)
        for r in range(args.rounds):  # in turns, so that the machine's slow moments fall on every model
            for name, predict_proba in timed_models.items():
                times = one_round(predict_proba, texts, first=r * (per_round + 1), singles=per_round, bulk=args.bulk)
                one[name] += times[0]
                batch[name] += times[1]
                bulk[name] += times[2]
    rows = [
        {
            "model": name,
            "1 text ms": 1e3 * median(one[name]),
            "32 texts ms": 1e3 * median(batch[name]),
            "bulk texts/s": args.bulk / median(bulk[name]),
        }
        for name in timed_models
    ]
    seed = next((r for r in rows if r["model"] == "seed"), rows[0])
    rows = ratios(rows, "1 text ms", seed["1 text ms"], "1 text × seed")
    rows = ratios(rows, "bulk texts/s", seed["bulk texts/s"], "bulk × seed")
    title = (
        f"in-process scoring, {torch.get_num_threads()} torch threads, untrained weights, "
        f"{args.rounds} rounds in turns, medians"
    )
    finish(rows, args, title)


if __name__ == "__main__":
    main()
