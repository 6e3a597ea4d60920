"""Seconds from SIGTERM to exit for `ray-sentiment serve`, against the baseline it replaced.

Targets, in one run, each started and stopped `--runs` times (idle, once /healthz answers):
(1) the `serve` command: drain the ingress, then shut the local Ray down;
(2) baseline: the same application stopped with `serve.shutdown()`, as the command did before.
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
import time
from pathlib import Path

import pandas as pd
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_option, finish, free_port, median, ratios, seed_bundle

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("RAY_SENTIMENT_DATASETS", ROOT.parent / "shared" / "datasets"))

BASELINE = textwrap.dedent("""
    import os, signal, sys, threading
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    from ray import serve
    from ray_sentiment.runtime import ensure_ray
    from ray_sentiment.serve import build, start
    from ray_sentiment.settings import ServeSettings
    application = build(ServeSettings(model=sys.argv[1]))
    ensure_ray()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    start(application, port=int(sys.argv[2]))
    while not stop.wait(0.5):
        pass
    serve.shutdown()
""")


def stop_seconds(command: list[str], port: int) -> float:
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
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        return time.monotonic() - signalled
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
        bundle = str(seed_bundle(texts, Path(tmp) / "bundle"))
        targets = {
            "ray-sentiment serve (drain, then end the local Ray)": lambda port: [
                sys.executable,
                "-m",
                "ray_sentiment.cli",
                "serve",
                "--model",
                bundle,
                "--port",
                str(port),
            ],
            "baseline: serve.shutdown()": lambda port: [sys.executable, "-c", BASELINE, bundle, str(port)],
        }
        rows = []
        for name, command in targets.items():
            seconds = []
            for _ in range(args.runs):
                port = free_port()
                seconds.append(stop_seconds(command(port), port))
            rows.append({"target": name, "median s": median(seconds), "runs": ", ".join(f"{s:.1f}" for s in seconds)})
    finish(ratios(rows, "median s", rows[1]["median s"]), args, "seconds from SIGTERM to exit, idle server")


if __name__ == "__main__":
    main()
