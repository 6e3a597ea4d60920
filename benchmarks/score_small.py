"""`ray-sentiment score` on a small local input, as a user runs it (a fresh process, end to end):
in the command's own process, as it now works up to 32 MiB, against the baseline, the same command
on the local Ray it starts (RAY_SENTIMENT_IN_PROCESS_BYTES=0, as every such run went before).

The input is the airline file (14,640 tweets, one Parquet file) and the model the `default`
preset's shape with untrained weights (speed does not depend on what they hold). The two take
turns, `--rounds` times; medians.

    python benchmarks/score_small.py [--rounds 3]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment.runtime import IN_PROCESS_ENV

from _common import DATASETS, add_json_option, finish, median, random_bundle, ratios

CASES = {"in this process": None, "on its own local Ray (baseline)": "0"}


def score_seconds(model: Path, data: Path, output: Path, limit: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", IN_PROCESS_ENV)}
    env.update({IN_PROCESS_ENV: limit} if limit else {})
    command = [sys.executable, "-m", "ray_sentiment.cli", "score", "--model", str(model), "--input", str(data)]
    started = time.perf_counter()
    result = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0 or "rows out 14640" not in result.stdout:
        sys.exit(f"score failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()
    data = DATASETS / "airline" / "tweets.parquet"
    times: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = random_bundle(pd.read_parquet(data, columns=["text"])["text"].tolist(), tmp / "model", "default")
        for round_ in range(args.rounds):
            for i, (case, limit) in enumerate(CASES.items()):
                times[case].append(score_seconds(model, data, tmp / f"out-{round_}-{i}", limit))
    rows = [{"score, airline tweets (14,640 rows)": case, "seconds (median)": median(t)} for case, t in times.items()]
    rows = ratios(rows, "seconds (median)", median(times["on its own local Ray (baseline)"]))
    finish(rows, args, f"score on a small local input, a fresh process each, {args.rounds} rounds in turns")


if __name__ == "__main__":
    main()
