"""HTTP load on the Serve app against what a user would write instead, from a separate process.

Targets, in one run: (1) the Serve app with dynamic batching; (2) the same app with batching off;
(3) the model in a plain single-process FastAPI app under uvicorn (same checks, same answers). For
each: closed-loop load (aiohttp; each of C clients sends its next request when the last one is
answered) at concurrency 1, 16 and 64, with 1-text and 100-text requests; then open-loop load at
half of (1)'s peak 1-text rate for the latency there. Also the in-process ceiling
(`Predictor.predict_proba` on batches of 2,048 texts, no HTTP). Only 2xx answers count.
The model is the `seed` preset with untrained weights: speed does not depend on what they hold.

    python benchmarks/serve_load.py [--seconds 8] [--concurrency 1,16,64]
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment import Predictor

from _common import DATASETS, add_json_option, finish, free_port, seed_bundle


def wait_healthy(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy")


# -- (3) the plain app, run as `serve_load.py --plain-server PORT BUNDLE` -------------------------


def plain_server(port: int, bundle: str) -> None:
    import uvicorn
    from fastapi import FastAPI, Request

    from ray_sentiment.results import result_records
    from ray_sentiment.serve import parse_texts

    predictor = Predictor.load(bundle)
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/sentiment")
    async def sentiment(request: Request):
        texts = parse_texts(await request.body())
        return {"results": result_records(predictor.predict_proba(texts), predictor.labels)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- the load generator, in its own process -------------------------------------------------------


async def closed_loop(url: str, body: bytes, concurrency: int, seconds: float) -> list[tuple[int, float]]:
    import aiohttp

    results, deadline = [], time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client():
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                results.append((r.status, time.perf_counter() - started))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


async def open_loop(url: str, body: bytes, rate: float, seconds: float) -> list[tuple[int, float]]:
    import aiohttp

    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one():
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
            results.append((r.status, time.perf_counter() - started))

        tasks, started = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return results


def load(url, body, concurrency, rate, seconds, queue):
    run = open_loop(url, body, rate, seconds) if rate else closed_loop(url, body, concurrency, seconds)
    queue.put(asyncio.run(run))


def drive(url: str, texts: list[str], seconds: float, concurrency: int = 0, rate: float = 0.0) -> dict:
    body = json.dumps({"texts": texts}).encode()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=load, args=(f"{url}/v1/sentiment", body, concurrency, rate, seconds, queue))
    process.start()
    results = queue.get()
    process.join()
    ok = np.array([s for status, s in results if 200 <= status < 300]) * 1000
    return {
        "req/s": len(ok) / seconds,
        "texts/s": len(ok) * len(texts) / seconds,
        "p50 ms": float(np.percentile(ok, 50)) if len(ok) else float("nan"),
        "p95 ms": float(np.percentile(ok, 95)) if len(ok) else float("nan"),
        "p99 ms": float(np.percentile(ok, 99)) if len(ok) else float("nan"),
        "non-2xx": len(results) - len(ok),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--plain-server", nargs=2, metavar=("PORT", "BUNDLE"), help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()
    if args.plain_server:
        return plain_server(int(args.plain_server[0]), args.plain_server[1])

    train = pd.read_parquet(DATASETS / "tweets/train.parquet")
    texts = [t for t in train["text"].sample(5000, random_state=0) if t.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = str(seed_bundle(train["text"].tolist(), Path(tmp) / "bundle"))
        ceiling = in_process_ceiling(bundle, texts)
        rows = measure(args, bundle, texts)
    # Each row against the plain uvicorn app under the same load.
    plain = {(r["request"], r["clients"]): r["texts/s"] for r in rows if r["target"] == "plain uvicorn"}
    for r in rows:
        r["× plain uvicorn"] = r["texts/s"] / plain[(r["request"], r["clients"])]
    title = (
        f"seed preset, {psutil.cpu_count()} CPUs, {args.seconds:.0f} s per cell, "
        f"RAY_SERVE_THROUGHPUT_OPTIMIZED={os.environ['RAY_SERVE_THROUGHPUT_OPTIMIZED']}; "
        f"in-process ceiling {ceiling:,.0f} texts/s"
    )
    finish(rows, args, title)


def in_process_ceiling(bundle: str, texts: list[str]) -> float:
    torch.set_num_threads(psutil.cpu_count())
    predictor = Predictor.load(bundle)
    predictor.predict_proba(texts[:2048])
    started = time.perf_counter()
    for _ in range(3):
        predictor.predict_proba(texts, batch_size=2048)
    return 3 * len(texts) / (time.perf_counter() - started)


def measure(args, bundle: str, texts: list[str]) -> list[dict]:
    import ray
    from ray import serve

    from ray_sentiment.runtime import ensure_ray
    from ray_sentiment.serve import build, start
    from ray_sentiment.settings import ServeSettings

    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")  # as `ray-sentiment serve` does
    concurrency = [int(c) for c in args.concurrency.split(",")]
    port, plain_port = free_port(), free_port()
    plain = subprocess.Popen([sys.executable, __file__, "--plain-server", str(plain_port), bundle])
    rows = []
    try:
        ensure_ray()
        url = start(build(ServeSettings(model=bundle)), port=port)
        serve.run(build(ServeSettings(model=bundle, batching=False)), name="unbatched", route_prefix="/unbatched")
        targets = {
            "serve, batching": url,
            "serve, no batching": f"{url}/unbatched",
            "plain uvicorn": f"http://127.0.0.1:{plain_port}",
        }
        for target_url in targets.values():
            wait_healthy(target_url)
            drive(target_url, texts[:1], 2, concurrency=4)  # warm-up
        for size in (1, 100):
            for clients in concurrency:
                for name, target_url in targets.items():
                    rows.append(
                        {
                            "target": name,
                            "request": f"{size} text{'s' if size > 1 else ''}",
                            "clients": str(clients),
                            **drive(target_url, texts[:size], args.seconds, clients),
                        }
                    )
        peak = max(r["req/s"] for r in rows if r["target"] == "serve, batching" and r["request"] == "1 text")
        for name, target_url in targets.items():
            rows.append(
                {
                    "target": name,
                    "request": "1 text",
                    "clients": f"open {peak / 2:,.0f}/s",
                    **drive(target_url, texts[:1], args.seconds, rate=peak / 2),
                }
            )
    finally:
        plain.terminate()
        plain.wait()
        serve.shutdown()
        ray.shutdown()
    return rows


if __name__ == "__main__":
    main()
