"""Shared by the benchmarks: where the datasets are, and a plain-text table."""
import os
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("RAY_SENTIMENT_DATASETS", ROOT.parent / "shared" / "datasets"))


def table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def _fmt(value) -> str:
    if isinstance(value, float):
        if abs(value) < 10:
            return f"{value:.3f}"
        return f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


median = statistics.median
