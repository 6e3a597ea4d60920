"""GPU check: every `--use-gpu` path on one machine, with throughput and GPU memory, in one table.

(1) pretrains one language-model epoch, then trains one epoch, of the `pretrained` preset (the
default without its linear half, fitted on CPUs) on tweets/train with one GPU Train worker; (2) scores
N rows (default 1,000,000, tweets resampled into Parquet) with a GPU model actor; (3) serves the
model from a GPU replica under HTTP load (100-text requests from 16 clients, then 1-text requests
from 64); (4) checks that the GPU gives the CPU's probabilities; (5) which side limits a GPU node: the
compiled tokenizer's texts/s on one core times the node's cores, against the model alone on the
GPU (token ids made beforehand). GPU memory is the peak of
`nvidia-smi`'s memory.used, sampled every 0.2 s (all processes on the card). Sized to finish
within 8 minutes on one GPU. `--cpu` runs the same steps without a GPU (default 100,000 rows).

Baselines, in the same run and on the same device, measured after Ray has shut down (so they do
not share the card): for (1) a plain PyTorch loop of the same `train_epoch` in this process, one
thread like the Train worker; for (2) and (3) `Predictor.predict_proba` in this process, no Ray,
no files, no HTTP (the in-process ceiling).

    python benchmarks/gpu_check.py [--cpu] [--rows N] [--serve-seconds 15] [--baseline-rows 16000]
"""

import argparse
import os
import subprocess
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
from ray_sentiment.serving.app import build, start
from ray_sentiment.settings import ScoreSettings, ServeSettings, TrainSettings
from ray_sentiment.text import rules_arrow
from ray_sentiment.train.driver import train

from _common import DATASETS, Sampler, add_json_option, finish, free_port, write_rows
from serve_load import drive, wait_healthy
from train_throughput import plain_loop


class GpuMemory(Sampler):
    """Peak memory.used (MiB) and utilisation (%) of GPU 0 while the block runs; nothing without nvidia-smi."""

    QUERY = ("nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits", "-i", "0")
    interval = 0.2
    peak_mib = peak_util = None

    def sample(self):
        try:
            used, util = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5).stdout.split(",")
        except (OSError, ValueError, subprocess.SubprocessError):
            return False
        self.peak_mib = max(self.peak_mib or 0, int(used))
        self.peak_util = max(self.peak_util or 0, int(util))

    def columns(self) -> dict:
        return {
            "peak GPU MiB": "-" if self.peak_mib is None else f"{self.peak_mib:,}",
            "peak GPU util %": "-" if self.peak_util is None else str(self.peak_util),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run every step without a GPU")
    parser.add_argument("--rows", type=int, help="rows to score (default: 1,000,000; 100,000 with --cpu)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per model call when scoring")
    parser.add_argument("--serve-seconds", type=float, default=15.0, help="seconds of load per serve step")
    parser.add_argument("--baseline-rows", type=int, default=16_000, help="rows for the baselines")
    add_json_option(parser)
    args = parser.parse_args()
    gpu = not args.cpu
    rows_to_score = args.rows or (100_000 if args.cpu else 1_000_000)
    started = time.perf_counter()
    results = []
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = str(tmp / "model")
        ensure_ray()
        os.environ[IN_PROCESS_ENV] = "0"  # CPU or GPU actors, as on a cluster, whatever the input's size
        try:
            with GpuMemory() as memory:
                train(
                    TrainSettings(
                        train_path=str(DATASETS / "tweets/train.parquet"),
                        val_path=str(DATASETS / "tweets/val.parquet"),
                        output=bundle,
                        preset="pretrained",  # the LSTM of the default, without the linear model's CPU fit
                        epochs=1,
                        pretrain_epochs=1,
                        use_gpu=gpu,
                        storage_path=str(tmp / "checkpoints"),
                    )
                )
            metrics = Predictor.load(bundle).bundle.metrics
            lm, epoch = metrics["pretraining"][0], metrics["history"][0]
            results.append(
                {
                    "step": "pretrain 1 language-model epoch on tweets/train, 1 worker",
                    "throughput": lm["texts_per_s"],
                    "unit": "texts/s",
                    "seconds": lm["seconds"],
                }
            )
            results.append(
                {
                    "step": "train 1 epoch, pretrained preset, 1 worker",
                    "throughput": epoch["samples_per_s"],
                    "unit": "rows/s",
                    "seconds": epoch["seconds"],
                    **memory.columns(),
                }
            )

            texts = pd.read_parquet(DATASETS / "tweets/train.parquet")["text"].to_numpy()
            data = write_rows(texts, rows_to_score, tmp / "to-score")
            with GpuMemory() as memory:
                settings = ScoreSettings(
                    bundle, str(data), str(tmp / "scored"), batch_size=args.batch_size, use_gpu=gpu
                )
                summary = score_parquet(settings)
            assert summary.rows_out == rows_to_score, summary.line()
            results.append(
                {
                    "step": f"score {rows_to_score:,} rows, 1 model actor",
                    "throughput": summary.rows_per_s,
                    "unit": "rows/s",
                    "seconds": summary.seconds,
                    **memory.columns(),
                }
            )

            results += serve_under_load(bundle, texts, gpu, args.serve_seconds)
        finally:
            ray.shutdown()  # Serve, its replicas and every actor go with the local cluster
        compare(results, baselines(bundle, args, gpu))
        results.append(agreement(bundle, texts, gpu))
        results += feeding(bundle, texts, gpu, args.batch_size)
    total = time.perf_counter() - started
    where = "CPU only" if args.cpu else gpu_name()
    title = (
        f"GPU check on {where}, {psutil.cpu_count()} CPUs; {total:.0f} s in all (budget 480 s); "
        f"baseline: train, a plain PyTorch loop on {'cuda' if gpu else 'cpu'} ({args.baseline_rows:,} rows, 1 thread); "
        "score and serve, Predictor.predict_proba in one process (no Ray, no I/O, no HTTP)"
    )
    finish(results, args, title)


def serve_under_load(bundle: str, texts: np.ndarray, gpu: bool, seconds: float) -> list[dict]:
    port = free_port()
    start(build(ServeSettings(model=bundle, use_gpu=gpu, port=port)))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    sample = [t for t in texts[:5000] if t.strip()]
    drive(url, sample[:1], 2, concurrency=4)  # warm-up
    rows = []
    for size, clients in ((100, 16), (1, 64)):
        with GpuMemory() as memory:
            load = drive(url, sample[:size], seconds, concurrency=clients)
        rows.append(
            {
                "step": f"serve, {size}-text requests, {clients} clients",
                "throughput": load["texts/s"],
                "unit": "texts/s",
                "seconds": seconds,
                "p50 ms": load["p50 ms"],
                "p99 ms": load["p99 ms"],
                "non-2xx": load["non-2xx"],
                **memory.columns(),
            }
        )
    return rows


def baselines(bundle: str, args, gpu: bool) -> dict:
    """rows/s of the plain training loop and of the in-process ceiling, on the same device."""
    train_rows = pd.read_parquet(DATASETS / "tweets/train.parquet").sample(args.baseline_rows, random_state=0)
    device = "cuda" if gpu else "cpu"
    plain = plain_loop(train_rows["text"].tolist(), train_rows["label"].tolist(), "default", 1, 1, device)[0]
    torch.set_num_threads(psutil.cpu_count())
    predictor = Predictor.load(bundle, device=device)
    texts = train_rows["text"].tolist() * max(1, 100_000 // len(train_rows))
    predictor.predict_proba(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    started = time.perf_counter()
    predictor.predict_proba(texts, batch_size=args.batch_size)
    return {"train": plain, "predict": len(texts) / (time.perf_counter() - started)}


def feeding(bundle: str, texts: np.ndarray, gpu: bool, batch_size: int) -> list[dict]:
    """The tokenizer per core and the model alone on the device; the node's projected rate is the
    smaller of cores x per-core tokenizing and the model's rate."""
    sample = list(np.random.default_rng(1).choice(texts, 200_000))
    chunks = [pa.array(sample[i : i + rules_arrow.CHUNK]) for i in range(0, len(sample), rules_arrow.CHUNK)]
    started = time.perf_counter()
    for chunk in chunks:
        rules_arrow.split_array(chunk)
    per_core = len(sample) / (time.perf_counter() - started)
    predictor = Predictor.load(bundle, device="cuda" if gpu else "cpu")
    ids, lengths, _ = predictor.encode(sample)
    predictor.predict_proba_encoded(ids[:batch_size], lengths[:batch_size])  # warm-up
    started = time.perf_counter()
    for first in range(0, len(ids), batch_size):
        predictor.predict_proba_encoded(ids[first : first + batch_size], lengths[first : first + batch_size])
    model = len(ids) / (time.perf_counter() - started)
    cores = psutil.cpu_count()
    limit = "tokenizing" if cores * per_core < model else "the model"
    return [
        {"step": "tokenizer alone (compiled rules), one core", "throughput": per_core, "unit": "texts/s"},
        {"step": f"model alone on {'GPU' if gpu else 'CPU'}, token ids ready", "throughput": model, "unit": "texts/s"},
        {
            "step": f"projected node: min({cores} cores x tokenizer, model); {limit} limits",
            "throughput": min(cores * per_core, model),
            "unit": "texts/s",
        },
    ]


def compare(results: list[dict], base: dict) -> None:
    """Each throughput row gets its baseline and the ratio to it (pretraining has none here)."""
    for row in results:
        if row["step"].startswith("pretrain"):
            continue
        kind = "train" if row["step"].startswith("train") else "predict"
        row["baseline /s"] = base[kind]
        row["× baseline"] = row["throughput"] / base[kind]


def agreement(bundle: str, texts: np.ndarray, gpu: bool) -> dict:
    """How far the GPU's probabilities are from the CPU's on 2,000 texts, and how often the labels agree."""
    device = "cuda" if gpu else "cpu"
    sample = [t for t in texts[:2100] if t.strip()][:2000]
    cpu = Predictor.load(bundle, device="cpu").predict_proba(sample)
    other = Predictor.load(bundle, device=device).predict_proba(sample)
    same = float((cpu.argmax(axis=1) == other.argmax(axis=1)).mean())
    return {
        "step": f"{device} vs cpu probabilities, 2,000 texts",
        "throughput": f"{np.abs(cpu - other).max():.1e}",
        "unit": "max abs diff",
        "same label": f"{same:.2%}",
    }


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible"


if __name__ == "__main__":
    main()
