"""HTTP load on `ray-sentiment serve` against what a user would write instead, in one run.

Targets: (1) the Serve app with one replica on its port; (2) the same with two replicas sharing
the port; (3) baseline: the model in a plain FastAPI app under uvicorn, one process (same checks,
same answers). The model is the `seed` preset (or `--preset`) with untrained weights: speed does
not depend on what they hold. Cells, each target in turn, `--rounds` times (the median is reported):
- 1 text at 1 and 64 connections, 100 texts at 16: wrk (C, one thread), 2xx only;
- 1 text at 1 connection again from a Python client (aiohttp), which times every request itself
  (with Ray's processes running, wrk's p99 at one connection came out 10-100x the Python client's);
- overload: wrk with 512 connections; the answers' statuses (only 2xx and 503 with Retry-After
  are allowed) and the latency of a Python client (aiohttp) on one connection meanwhile (2xx).
- explanations beside plain requests (the Serve targets): a Python client sending one text at a
  time, alone and then beside 20 clients each asking to explain 32 texts of 2,000 characters (the
  most a request may hold), which wait as a 503's Retry-After asks; its p99 beside them over its
  p99 alone.
Also the in-process ceiling (`Predictor.predict_proba` on batches of 2,048 texts, no HTTP), and
the generator check: the plain app at 64 connections with wrk given one thread, then two.
Needs `wrk` (apt-get install wrk), except with --explain-only (the explanation cells alone).

    python benchmarks/serve_load.py [--seconds 5] [--rounds 3] [--explain-only] [--preset default]
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import statistics
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

from _common import DATASETS, add_json_option, finish, free_port, random_bundle

# wrk: POST the body in wrk.body; count statuses, and 503s without Retry-After, in each thread.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init() statuses = {}; bare503 = 0 end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and headers["retry-after"] == nil and headers["Retry-After"] == nil then bare503 = bare503 + 1 end
end
function done(summary, latency, requests)
  local total, bare = {}, 0
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do total[status] = (total[status] or 0) + n end
    bare = bare + t:get("bare503")
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, string.format('"%d": %d', status, n)) end
  io.write(string.format('RESULT {"statuses": {%s}, "bare503": %d, "p50": %f, "p99": %f, "seconds": %f}\\n',
    table.concat(parts, ", "), bare, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.duration / 1e6))
end
"""


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
    from fastapi import FastAPI, HTTPException, Request

    from ray_sentiment.results import result_records
    from ray_sentiment.serving.http_api import HTTPError, parse_texts

    predictor = Predictor.load(bundle)
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/sentiment")
    async def sentiment(request: Request):
        try:
            texts, _ = parse_texts(await request.body())
        except HTTPError as error:
            raise HTTPException(error.status, error.detail) from None
        return {"results": result_records(predictor.predict_proba(texts), predictor.labels)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- load generators -------------------------------------------------------------------------------


def wrk(url: str, texts: list[str], connections: int, seconds: float, threads: int = 1) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    env = {**os.environ, "BODY": json.dumps({"texts": texts})}
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "30s", "-s", script.name]
    out = subprocess.run([*command, f"{url}/v1/sentiment"], capture_output=True, text=True, env=env, check=True)
    os.unlink(script.name)
    result = json.loads(re.search(r"^RESULT (.*)$", out.stdout, re.M).group(1))
    ok = sum(n for status, n in result["statuses"].items() if status.startswith("2"))
    return {
        "req/s": ok / result["seconds"],
        "texts/s": ok * len(texts) / result["seconds"],
        "p50 ms": result["p50"],
        "p99 ms": result["p99"],
        "statuses": result["statuses"],
        "503 without Retry-After": result["bare503"],
    }


async def closed_loop(
    url: str, body: bytes, seconds: float, concurrency: int, polite: bool = False
) -> list[tuple[int, float]]:
    """`polite` clients wait as a 503's Retry-After asks before they ask again."""
    import aiohttp

    results, deadline = [], time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client():
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                results.append((r.status, time.perf_counter() - started))
                if polite and r.status == 503:
                    await asyncio.sleep(float(r.headers.get("Retry-After", 1)))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def _load(url, body, seconds, concurrency, queue, polite):
    queue.put(asyncio.run(closed_loop(url, body, seconds, concurrency, polite)))


def start_drive(url: str, texts: list[str], seconds: float, concurrency: int = 1, explain: bool = False):
    """Python clients (aiohttp) in their own process, each sending its next request when the last
    is answered; call the returned function for the figures (2xx only) when it is done."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    body = json.dumps({"texts": texts, **({"explain": True} if explain else {})}).encode()
    process = ctx.Process(target=_load, args=(f"{url}/v1/sentiment", body, seconds, concurrency, queue, explain))
    process.start()

    def result() -> dict:
        answers = queue.get()
        process.join()
        ok = np.array([s for status, s in answers if 200 <= status < 300]) * 1000
        return {
            "req/s": len(ok) / seconds,
            "texts/s": len(ok) * len(texts) / seconds,
            "p50 ms": np.percentile(ok, 50) if len(ok) else float("nan"),
            "p99 ms": np.percentile(ok, 99) if len(ok) else float("nan"),
            "non-2xx": len(answers) - len(ok),
        }

    return result


def drive(url: str, texts: list[str], seconds: float, concurrency: int = 1) -> dict:
    return start_drive(url, texts, seconds, concurrency)()


# -- the run ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--explain-only", action="store_true", help="only the explanation cells (no wrk needed)")
    parser.add_argument("--preset", default="seed", help="the model's shapes (untrained weights)")
    parser.add_argument("--plain-server", nargs=2, metavar=("PORT", "BUNDLE"), help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()
    if args.plain_server:
        return plain_server(int(args.plain_server[0]), args.plain_server[1])

    train = pd.read_parquet(DATASETS / "tweets/train.parquet")
    texts = [t for t in train["text"].sample(5000, random_state=0) if t.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = str(random_bundle(train["text"].tolist(), Path(tmp) / "bundle", args.preset))
        ceiling = in_process_ceiling(bundle, texts)
        rows = measure(args, bundle, texts)
    plain = {r["cell"]: r for r in rows if r["target"] == "plain uvicorn"}
    for r in rows:
        base = plain.get(r["cell"])
        r["× plain"] = r["texts/s"] / base["texts/s"] if base and base.get("texts/s") else None
        r["of ceiling"] = r["texts/s"] / ceiling if r.get("texts/s") else None
    title = (
        f"{args.preset} preset, {psutil.cpu_count()} CPUs, {args.seconds:.0f} s per cell, "
        f"median of {args.rounds} rounds; "
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
    from ray_sentiment.serving.app import build, start
    from ray_sentiment.settings import ServeSettings

    ports = {name: free_port() for name in ("serve, 1 replica", "serve, 2 replicas", "plain uvicorn")}
    plain = subprocess.Popen([sys.executable, __file__, "--plain-server", str(ports["plain uvicorn"]), bundle])
    cells: dict[tuple[str, str], list[dict]] = {}
    try:
        # Logical CPUs for both apps at once, so that the targets take turns within each round;
        # an app waiting for its turn is idle.
        ensure_ray(num_cpus=2 * psutil.cpu_count())
        start(build(ServeSettings(model=bundle, port=ports["serve, 1 replica"])), name="one")
        start(build(ServeSettings(model=bundle, port=ports["serve, 2 replicas"], replicas=2)), name="two")
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for url in urls.values():
            wait_healthy(url)
            drive(url, texts[:1], 2, concurrency=16)  # warm-up
        for _ in range(args.rounds):
            for name, url in urls.items():
                if name.startswith("serve"):
                    for cell, result in explain_cells(url, texts, args.seconds).items():
                        cells.setdefault((name, cell), []).append(result)
                if args.explain_only:
                    continue
                for cell, result in run_cells(url, texts, args.seconds).items():
                    cells.setdefault((name, cell), []).append(result)
            if args.explain_only:
                continue
            for threads in (1, 2):  # does the plain app's figure rise when wrk gets more CPU?
                result = wrk(urls["plain uvicorn"], texts[:1], 64, args.seconds, threads)
                cells.setdefault((f"plain uvicorn, wrk {threads} thread(s)", "1 text, c64"), []).append(result)
    finally:
        plain.terminate()
        plain.wait()
        serve.shutdown()
        ray.shutdown()
    return [{"target": name, "cell": cell, **medians(results)} for (name, cell), results in cells.items()]


def run_cells(url: str, texts: list[str], seconds: float) -> dict[str, dict]:
    cells = {
        "1 text, c64": wrk(url, texts[:1], 64, seconds),
        "100 texts, c16": wrk(url, texts[:100], 16, seconds),
        "1 text, c1 (wrk)": wrk(url, texts[:1], 1, seconds),
        "1 text, c1 (aiohttp)": drive(url, texts[:1], seconds),
    }
    watcher = start_drive(url, texts[1:2], seconds)
    overload = wrk(url, texts[:1], 512, seconds)
    latency = watcher()
    cells["overload: c512 (latency: probe at c1)"] = {
        **overload,
        "p50 ms": latency["p50 ms"],
        "p99 ms": latency["p99 ms"],
    }
    return cells


LONG = ("the flight was delayed again, the crew was rude, and the food was fine " * 30)[:2_000]
ALONE, BESIDE = "1 text, c1 (aiohttp), alone", "1 text, c1 (aiohttp), beside 20 explaining clients"


def explain_cells(url: str, texts: list[str], seconds: float) -> dict[str, dict]:
    """One client's plain requests alone, then beside 20 clients explaining 32 long texts each."""
    alone = drive(url, texts[:1], seconds)
    load = start_drive(url, [LONG] * 32, seconds + 2, concurrency=20, explain=True)
    time.sleep(1)  # the explanations are under way
    beside = drive(url, texts[:1], seconds)
    explaining = load()
    beside["p99 × alone"] = beside["p99 ms"] / alone["p99 ms"]
    beside["explained req/s"] = explaining["req/s"]
    beside["explain 503s"] = explaining["non-2xx"]
    return {ALONE: alone, BESIDE: beside}


def medians(results: list[dict]) -> dict:
    row = {k: statistics.median(r[k] for r in results) for k in ("req/s", "texts/s", "p50 ms", "p99 ms")}
    for k in ("p99 × alone", "explained req/s", "explain 503s"):
        if k in results[0]:
            row[k] = statistics.median(r[k] for r in results)
    if "statuses" in results[0]:
        totals: dict[str, int] = {}
        for r in results:
            for status, n in r["statuses"].items():
                totals[status] = totals.get(status, 0) + n
        row["statuses"] = " ".join(f"{s}:{n}" for s, n in sorted(totals.items()))
        row["503 without Retry-After"] = sum(r["503 without Retry-After"] for r in results)
    return row


if __name__ == "__main__":
    main()
