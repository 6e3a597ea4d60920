"""`report` throughput and memory against a single-process pandas groupby of the same work.

Builds scored rows by resampling the airline tweets (airline as the key, `created_at` as text in
the tweets' own format, spread over a year, the human label as the label), then measures in one
run, each case in a fresh process whose whole process tree (Ray's daemons and workers included)
is sampled for its peak memory (proportional set size):

1. labels, times and keys (the report without a text column) on N rows (default 10,000,000):
   `build_report` against pandas (read, parse and floor the times, groupby key, day and label);
2. the same at N/4 rows, for the memory at 1x and 4x;
3. the text work (distinctive words and examples) on M rows (default 1,000,000): the report with a
   text column against pandas doing the same in one process (the same tokenizer, each word once
   per comment, counted per key and label; the most confident comments per key and label).

Ray's start is timed apart from the report.

    python benchmarks/report_throughput.py [--rows 10000000] [--text-rows 1000000]
"""

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATASETS, Sampler, add_json_option, finish

FORMAT = "%m/%d/%Y %H:%M"
FILES = 8
LABELS_ONLY = "labels, times, keys"


def write_scored(rows: int, directory: Path, with_text: bool) -> Path:
    """`rows` scored rows resampled from the airline tweets, in FILES Parquet files."""
    airline = pd.read_parquet(DATASETS / "airline/tweets.parquet", columns=["text", "airline", "label"])
    rng = np.random.default_rng(rows)
    minutes = rng.integers(0, 365 * 24 * 60, 200_000)
    times = (pd.Timestamp("2015-01-01") + pd.to_timedelta(minutes, unit="min")).strftime(FORMAT).to_numpy()
    directory.mkdir(parents=True)
    per_file = -(-rows // FILES)
    for i in range(FILES):
        n = min(per_file, rows - i * per_file)
        pick = airline.iloc[rng.integers(0, len(airline), n)]
        columns = {
            "airline": pick["airline"].to_numpy(),
            "created_at": rng.choice(times, n),
            "label": pick["label"].to_numpy(),
            "confidence": rng.uniform(0.34, 1.0, n).astype(np.float32),
        }
        if with_text:
            columns["text"] = pick["text"].to_numpy()
        pq.write_table(pa.table(columns), directory / f"part-{i:02d}.parquet")
    return directory


# ---- the cases, each run in a child process ---------------------------------------------------


def run_report(directory: str, with_text: bool) -> dict:
    from ray_sentiment.report.build import build_report
    from ray_sentiment.report.checks import check_report
    from ray_sentiment.runtime import ensure_ray
    from ray_sentiment.settings import ReportSettings

    started = time.perf_counter()
    ensure_ray()
    ray_start = time.perf_counter() - started
    settings = ReportSettings(
        input=directory,
        output=tempfile.mkdtemp(),
        time_column="created_at",
        key_column="airline",
        examples=3 if with_text else 0,
    )
    started = time.perf_counter()
    report = build_report(settings, check_report(settings))
    return {"seconds": time.perf_counter() - started, "ray_start": ray_start, "rows": report.rows}


def run_pandas(directory: str, with_text: bool) -> dict:
    started = time.perf_counter()
    if not with_text:
        rows = pd.read_parquet(directory, columns=["airline", "created_at", "label"])
        day = pd.to_datetime(rows["created_at"], format=FORMAT).dt.floor("D")
        rows.groupby([rows["airline"], day, rows["label"]]).size()
        return {"seconds": time.perf_counter() - started, "rows": len(rows)}
    from ray_sentiment.report.source import WORD
    from ray_sentiment.text.redact import dedupe_key
    from ray_sentiment.text.tokens import tokenize

    rows = pd.read_parquet(directory, columns=["airline", "label", "confidence", "text"])
    tokens = pd.concat(
        [tokenize(pa.array(rows["text"].iloc[i : i + 65_536])).to_pandas() for i in range(0, len(rows), 65_536)],
        ignore_index=True,
    )
    words = pd.DataFrame({"row": np.arange(len(rows)), "word": tokens}).explode("word").dropna()
    words = words[words["word"].str.match(WORD.replace(r"\p{L}", "[^\\W\\d_]"))].drop_duplicates()
    keyed = words.join(rows[["airline", "label"]], on="row")
    keyed.groupby(["airline", "label", "word"]).size()
    top = rows.sort_values("confidence", ascending=False).groupby(["airline", "label"]).head(60).copy()
    top["dedupe"] = [dedupe_key(t) for t in top["text"]]
    top.drop_duplicates(["airline", "label", "dedupe"]).groupby(["airline", "label"]).head(3)
    return {"seconds": time.perf_counter() - started, "rows": len(rows)}


def child(args: argparse.Namespace) -> None:
    run = run_report if args.child == "report" else run_pandas
    print(json.dumps(run(args.input, args.with_text)))


class TreePeak(Sampler):
    """The peak memory of a process (`own`) and of it with all its descendants (`peak`), as PSS:
    pages shared between processes (Ray's object store is mapped into each worker) are divided
    among them, not counted once per process as resident sizes would be. Sampled, not read from
    getrusage: a child's ru_maxrss starts from its parent's at the fork."""

    def __init__(self, pid: int):
        self.process, self.peak, self.own = psutil.Process(pid), 0, 0

    def sample(self):
        total = 0
        with contextlib.suppress(psutil.Error):
            self.own = max(self.own, self.process.memory_full_info().pss)
            for p in [self.process, *self.process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_full_info().pss
        self.peak = max(self.peak, total)


def measure(kind: str, directory: Path, with_text: bool) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--input", str(directory)]
    proc = subprocess.Popen(
        [*command, *(["--with-text"] if with_text else [])], stdout=subprocess.PIPE, start_new_session=True
    )
    with TreePeak(proc.pid) as peak:
        out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{kind} failed with exit code {proc.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {**result, "tree_peak_bytes": peak.peak, "own_peak_bytes": peak.own}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--text-rows", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["report", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--with-text", action="store_true", help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()
    if args.child:
        return child(args)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            (LABELS_ONLY, args.rows, False),
            (LABELS_ONLY, args.rows // 4, False),
            ("words and examples", args.text_rows, True),
        ]
        for what, rows, with_text in cases:
            directory = write_scored(rows, Path(tmp) / f"{rows}-{with_text}", with_text)
            found = {kind: measure(kind, directory, with_text) for kind in ("pandas", "report")}
            for kind, r in found.items():
                table.append(
                    {
                        "work": what,
                        "rows": rows,
                        "by": "ray-sentiment report" if kind == "report" else "pandas, one process",
                        "rows/s": rows / r["seconds"],
                        "× pandas": found["pandas"]["seconds"] / r["seconds"],
                        "Ray start s": r.get("ray_start", ""),
                        "peak GiB, all processes (PSS)": r["tree_peak_bytes"] / 2**30,
                        "driver peak GiB (PSS)": r["own_peak_bytes"] / 2**30,
                    }
                )
            print(json.dumps(table[-2:]), flush=True)
    finish(table, args, "report throughput (rows/s, Ray's start excluded) and peak memory")
    full, quarter = args.rows, args.rows // 4
    for by in ("ray-sentiment report", "pandas, one process"):
        peaks = {
            r["rows"]: r["peak GiB, all processes (PSS)"] for r in table if r["by"] == by and r["work"] == LABELS_ONLY
        }
        print(f"{by}: peak memory at {full:,} rows is {peaks[full] / peaks[quarter]:.2f}x that at {quarter:,}")


if __name__ == "__main__":
    main()
