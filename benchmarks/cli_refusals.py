"""How long a user waits for a refusal: each bad-input case of the CLI tests, run as a user runs it
(a fresh `ray-sentiment` process), against the floor of starting Python and importing the CLI.

    python benchmarks/cli_refusals.py [--repeats 5] [--json PATH]

Prints the median wall time of each refusal, the floor, and the target (2 s). No Ray starts:
every refusal is decided before that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "train.csv"
TARGET_S = 2.0


def cases(tmp: Path) -> dict[str, list[str]]:
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos"] * 3}).to_parquet(tmp / "one.parquet")
    pd.DataFrame({"comment": ["a", "b"], "label": ["x", "y"]}).to_csv(tmp / "nocol.csv", index=False)
    (tmp / "latin1.csv").write_bytes("text,label\ncaf\xe9,positive\nok,negative\n".encode("latin-1"))
    (tmp / "bundle").mkdir()
    (tmp / "bundle" / "config.json").write_text("{}")
    out = str(tmp / "out")
    return {
        "train: no such file": ["train", "--train", str(tmp / "nope.parquet"), "--output", out],
        "train: no text column": ["train", "--train", str(tmp / "nocol.csv"), "--output", out],
        "train: one class only": ["train", "--train", str(tmp / "one.parquet"), "--output", out],
        "train: latin-1 CSV": ["train", "--train", str(tmp / "latin1.csv"), "--output", out],
        "train: bad option": ["train", "--train", str(EXAMPLES), "--output", out, "--num-workers", "0"],
        "evaluate: broken bundle": ["evaluate", "--model", str(tmp / "bundle"), "--data", str(EXAMPLES)],
        "predict: broken bundle": ["predict", "--model", str(tmp / "bundle"), "hi"],
        "score: no such input": ["score", "--model", str(tmp / "bundle"), "--input", "nope.parquet", "--output", out],
    }


def timed(command: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    code = subprocess.run(command, capture_output=True).returncode
    return time.perf_counter() - started, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "ray_sentiment.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"floor: import the CLI, --version": [*cli, "--version"]}
        runs.update({name: [*cli, *argv] for name, argv in cases(Path(tmp)).items()})
        for name, command in runs.items():
            results = [timed(command) for _ in range(args.repeats)]
            rows.append({"case": name, "median_s": statistics.median(t for t, _ in results), "exit": results[0][1]})
    floor = rows[0]["median_s"]
    print(f"{'case':34} {'median s':>9} {'x floor':>8} {'exit':>5}  within {TARGET_S:.0f} s")
    for r in rows:
        r["x_floor"] = r["median_s"] / floor
        print(f"{r['case']:34} {r['median_s']:9.2f} {r['x_floor']:8.2f} {r['exit']:5d}  {r['median_s'] <= TARGET_S}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
