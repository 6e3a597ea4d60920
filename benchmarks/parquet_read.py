"""CPU a Parquet read through Ray Data costs on a small machine: our pool of footer-reading actors
(one per 100 files, data/read.py) against Ray Data's default (32 per read, whatever the files).

The labelled tweets of `tweets/train`, as one file and as 20, are read and cleaned with
`read_labelled` (what `train` does first) on a 2-CPU local Ray, the two ways in turn, `--rounds`
times. A read's cost is the whole machine's busy CPU-seconds (from /proc/stat: the actors are
processes of their own) from its start until 3 s after it, when the pool's actors have exited.
The table gives medians, and ours as a fraction of Ray's default. Linux only.

    python benchmarks/parquet_read.py [--rounds 3]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment.data.read import FOOTER_ACTORS_ENV, read_labelled
from ray_sentiment.runtime import ensure_ray

from _common import DATASETS, add_json_option, finish, median

SETTLE_S = 3.0
WAYS = {"ours: one actor per 100 files": None, "Ray Data's default: 32 per read": "32"}


def busy_cpu_s() -> float:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def read_once(path: Path, pool: str | None) -> tuple[float, float]:
    """(busy CPU-seconds, wall seconds) of one read, with the pool's size set or left to us."""
    if pool is None:
        os.environ.pop(FOOTER_ACTORS_ENV, None)
    else:
        os.environ[FOOTER_ACTORS_ENV] = pool
    cpu, started = busy_cpu_s(), time.perf_counter()
    rows = read_labelled(str(path)).rows
    wall = time.perf_counter() - started
    time.sleep(SETTLE_S)
    assert rows > 0
    return busy_cpu_s() - cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    tweets = pd.read_parquet(DATASETS / "tweets" / "train.parquet", columns=["text", "label"])
    import ray

    with tempfile.TemporaryDirectory() as work:
        inputs = {}
        for files in (1, 20):
            folder = Path(work) / f"{files}-files"
            folder.mkdir()
            for i in range(files):
                tweets.iloc[i::files].to_parquet(folder / f"part-{i:02d}.parquet")
            inputs[files] = folder
        ensure_ray(num_cpus=2)
        try:
            read_once(inputs[1], None)  # Ray Data's first read starts its own actors: not timed
            measured: dict[tuple[int, str], list[tuple[float, float]]] = {}
            for _ in range(args.rounds):
                for files, folder in inputs.items():
                    for way, pool in WAYS.items():
                        measured.setdefault((files, way), []).append(read_once(folder, pool))
        finally:
            ray.shutdown()
            os.environ.pop(FOOTER_ACTORS_ENV, None)
    rows = []
    for (files, way), runs in measured.items():
        rows.append(
            {
                "files": files,
                "footer readers": way,
                "CPU-s": median(c for c, _ in runs),
                "wall s": median(w for _, w in runs),
            }
        )
    for row in rows:
        default = next(r for r in rows if r["files"] == row["files"] and r["footer readers"].startswith("Ray"))
        row["CPU × default"] = row["CPU-s"] / default["CPU-s"]
    finish(rows, args, f"read_labelled of tweets/train ({len(tweets):,} rows), median of {args.rounds} rounds")


if __name__ == "__main__":
    main()
