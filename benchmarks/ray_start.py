"""Seconds for a command's local Ray to start while another local Ray runs on the machine (`serve`
in one terminal, `score` in another), against a baseline.

Each case runs `--runs` times, alternating, each in a fresh interpreter that times `ensure_ray()`
(up to the cluster answering a task) and then shuts Ray down:
(1) `ensure_ray`, as every command starts its local Ray; (2) baseline: the same `ray.init` options
with Ray's default for the node agent's port (52365, held by the other Ray), as before
`runtime._agent_port_from_the_os`; (3) the same as (1) with no other Ray running.

    python benchmarks/ray_start.py [--runs 5]
"""

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_option, finish, median, ratios

# The other Ray: a plain local cluster, as any Ray program (or an older ray-sentiment) starts one.
OTHER_RAY = textwrap.dedent("""
    import logging, time, ray
    ray.init(address="local", num_cpus=1, logging_level=logging.ERROR, log_to_driver=False)
    print("up", flush=True)
    time.sleep(3600)
""")

START = textwrap.dedent("""
    import contextlib, sys, time
    import ray
    from ray_sentiment import runtime
    if sys.argv[1] == "ray default port":
        runtime._agent_port_from_the_os = contextlib.nullcontext
    started = time.perf_counter()
    runtime.ensure_ray()
    ray.get(ray.remote(lambda: 1).remote())
    print(time.perf_counter() - started)
    ray.shutdown()
""")


def start_seconds(case: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", START, case], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:
        sys.exit(f"{case}: the start failed\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    add_json_option(parser)
    args = parser.parse_args()

    times: dict[str, list[float]] = {"ensure_ray": [], "ray default port": [], "ensure_ray, no other Ray": []}
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_RAY], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        if other.stdout.readline().strip() != "up":
            sys.exit("the other Ray did not start")
        time.sleep(5)  # its agents up and holding their ports
        for _ in range(args.runs):
            for case in ("ensure_ray", "ray default port"):
                times[case].append(start_seconds(case))
    finally:
        os.killpg(other.pid, signal.SIGKILL)  # its Ray daemons are in its process group
        other.wait()
    time.sleep(2)
    for _ in range(args.runs):
        times["ensure_ray, no other Ray"].append(start_seconds("ensure_ray"))

    rows = [
        {
            "case": case,
            "another Ray running": case != "ensure_ray, no other Ray",
            "median s": median(seconds),
            "min s": min(seconds),
            "max s": max(seconds),
        }
        for case, seconds in times.items()
    ]
    baseline = median(times["ray default port"])
    finish(ratios(rows, "median s", baseline), args, f"local Ray start-up, {args.runs} runs each (median)")


if __name__ == "__main__":
    main()
