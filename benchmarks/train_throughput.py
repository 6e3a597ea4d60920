"""Ray Train samples/s with 1 and 2 workers against a plain single-process PyTorch loop (the ceiling),
and the plain loop's batches of similar lengths (`train/batches.py`, as Ray Train's) against random ones.

Both run the same `train_epoch` on the same encoded rows, same model and batch size; the plain
loop gets as many torch threads as the Ray workers have together. Samples/s is timed inside the
epoch (Ray's start-up and data loading are reported separately, as wall seconds).

    python benchmarks/train_throughput.py [--rows 12000] [--epochs 3] [--preset seed]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment.model.lstm import SentimentLSTM
from ray_sentiment.model.presets import get_preset
from ray_sentiment.settings import TrainSettings
from ray_sentiment.text.tokens import build_vocab, count_tokens, encode_batch, vocab_index
from ray_sentiment.train.batches import bucketed_order
from ray_sentiment.train.driver import train
from ray_sentiment.train.loop import train_epoch

from _common import DATASETS, add_json_option, finish, median


def plain_loop(
    texts, labels, preset_name: str, threads: int, epochs: int, *, bucketed: bool, device: str = "cpu"
) -> list[float]:
    """Samples/s of each epoch of `train_epoch` in this process: no Ray, no data pipeline."""
    preset = get_preset(preset_name)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vocab = vocab_index(build_vocab(count_tokens(texts), preset.model.vocab_size))
    ids, lengths = encode_batch(texts, vocab, preset.max_len)
    y = np.array([sorted(set(labels)).index(x) for x in labels], dtype=np.int64)
    model = SentimentLSTM(preset.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps, rates = len(y) // preset.batch_size, []
    for epoch in range(epochs):
        rng = np.random.default_rng(epoch)
        order = bucketed_order(rng, lengths, preset.batch_size) if bucketed else rng.permutation(len(y))
        started = time.perf_counter()
        train_epoch(
            model,
            optimizer,
            loss_fn=loss_fn,
            arrays=(ids, lengths, y),
            order=order,
            batch=preset.batch_size,
            steps=steps,
            device=device,
        )
        rates.append(steps * preset.batch_size / (time.perf_counter() - started))
    return rates


def ray_train(path: Path, preset: str, workers: int, epochs: int, cpus: float) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        bundle = train(
            TrainSettings(
                train_path=str(path),
                output=f"{tmp}/bundle",
                preset=preset,
                num_workers=workers,
                epochs=epochs,
                val_fraction=0.05,
                storage_path=f"{tmp}/ckpt",
                cpus_per_worker=cpus,
            )
        )
        wall = time.perf_counter() - started
        history = json.loads((Path(bundle) / "metrics.json").read_text())["history"]
    return [h["samples_per_s"] for h in history], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--preset", default="seed")
    add_json_option(parser)
    args = parser.parse_args()

    rows = pd.read_parquet(DATASETS / "tweets/train.parquet").sample(n=args.rows, random_state=0)[["text", "label"]]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        rows.to_parquet(path)
        # The Ray run holds 95% of the rows for training (5% validation); the plain loop the same count.
        kept = rows.sample(frac=0.95, random_state=1)
        for workers, threads, cpus in ((1, 1, 1.0), (2, 2, 0.5)):
            texts, labels = kept["text"].tolist(), kept["label"].tolist()
            random = plain_loop(texts, labels, args.preset, threads, args.epochs, bucketed=False)
            plain = plain_loop(texts, labels, args.preset, threads, args.epochs, bucketed=True)
            ray_rates, wall = ray_train(path, args.preset, workers, args.epochs, cpus)
            results.append(
                {
                    "setup": f"{workers} Ray worker(s) vs plain loop, {threads} thread(s)",
                    "plain, random batches": median(random),
                    "plain samples/s": median(plain),
                    "× random batches": median(plain) / median(random),
                    "ray samples/s": median(ray_rates),
                    "× plain loop": median(ray_rates) / median(plain),
                    "ray wall s": wall,
                }
            )
    import ray

    ray.shutdown()
    finish(
        results,
        args,
        f"preset {args.preset}, {args.rows} rows of tweets/train, {args.epochs} epochs, median over epochs",
    )


if __name__ == "__main__":
    main()
