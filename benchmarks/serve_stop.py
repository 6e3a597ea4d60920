"""Seconds from SIGTERM to exit for `ray-sentiment serve` under steady traffic, against a baseline.

Targets, in one run, each started and stopped `--runs` times, two replicas, SIGTERM while four
clients send one request after another (each stops at its first 503, as a load balancer would):
(1) the `serve` command: each replica drains (new requests 503, those in flight answered), then
the local Ray is shut down; (2) baseline: the same application stopped with `serve.shutdown()`.
Failed requests: answers other than 200 before a client's first 503, connection errors, timeouts.
Kubernetes gives a pod 30 s after SIGTERM before it kills it.

    python benchmarks/serve_stop.py [--runs 3]
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_option, finish, free_port, median, random_bundle, ratios

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("RAY_SENTIMENT_DATASETS", ROOT.parent / "shared" / "datasets"))

BASELINE = textwrap.dedent("""
    import signal, sys, threading
    from ray import serve
    from ray_sentiment.runtime import ensure_ray
    from ray_sentiment.serving.app import build, start
    from ray_sentiment.settings import ServeSettings
    application = build(ServeSettings(model=sys.argv[1], port=int(sys.argv[2]), replicas=2))
    ensure_ray()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    start(application)
    while not stop.wait(0.5):
        pass
    serve.shutdown()
""")


def client(url: str, failures: list) -> None:
    with requests.Session() as session:
        while True:
            try:
                r = session.post(f"{url}/v1/sentiment", json={"texts": ["steady traffic"]}, timeout=60)
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)
                return
            if r.status_code == 503 and r.headers.get("Retry-After"):
                return
            if r.status_code != 200:
                failures.append(r.status_code)


def stop_seconds(command: list[str], port: int) -> tuple[float, int]:
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            raise RuntimeError(f"{command} never became healthy")
        failures: list = []
        clients = [threading.Thread(target=client, args=(f"http://127.0.0.1:{port}", failures)) for _ in range(4)]
        [c.start() for c in clients]
        time.sleep(1)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        seconds = time.monotonic() - signalled
        [c.join(timeout=60) for c in clients]
        return seconds, len(failures)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's daemons too, whatever happened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()
    texts = pd.read_parquet(DATASETS / "tweets/train.parquet")["text"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = str(random_bundle(texts, Path(tmp) / "bundle"))
        targets = {
            "ray-sentiment serve (replicas drain, then end the local Ray)": lambda port: [
                sys.executable,
                "-m",
                "ray_sentiment.cli",
                "serve",
                "--model",
                bundle,
                "--port",
                str(port),
                "--replicas",
                "2",
            ],
            "baseline: serve.shutdown()": lambda port: [sys.executable, "-c", BASELINE, bundle, str(port)],
        }
        rows = []
        for name, command in targets.items():
            runs = []
            for _ in range(args.runs):
                port = free_port()
                runs.append(stop_seconds(command(port), port))
            rows.append(
                {
                    "target": name,
                    "median s": median([s for s, _ in runs]),
                    "runs": ", ".join(f"{s:.1f}" for s, _ in runs),
                    "failed requests": sum(f for _, f in runs),
                }
            )
    title = "seconds from SIGTERM to exit, two replicas, four clients sending"
    finish(ratios(rows, "median s", rows[1]["median s"]), args, title)


if __name__ == "__main__":
    main()
