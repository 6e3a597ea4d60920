"""What the live page shows, read from what `stream` keeps (one Reader, a few round trips), as the
JSON that `GET /v1/live` answers:

    {"output_stream", "window_s", "watermark_ms" (the window filling in), "labels", "totals",
     "keys": [{"key", "counts" (over the windows shown), "windows": [{"start_ms", "counts"}],
               "alerts": [...]}],   busiest first
     "alerts": [...],              newest first, with their example comments redacted
     "read_at_ms"}
"""

from __future__ import annotations

import time

from ..broker import Reader

# Labels in this order where present, others after them alphabetically: red to green, left to right.
SENTIMENT_ORDER = ("negative", "neutral", "positive")


def ordered_labels(labels: set[str]) -> list[str]:
    known = [label for label in SENTIMENT_ORDER if label in labels]
    return known + sorted(labels - set(known))


def snapshot(reader: Reader, output_stream: str, *, windows: int, max_keys: int, alerts: int = 10) -> dict:
    totals = reader.totals(output_stream)
    rows = reader.window_counts(output_stream, windows)
    recent = reader.alerts(output_stream, alerts, examples=True)
    shown_starts = {r["window_start_ms"] for r in rows}
    keys: dict[str, dict] = {}
    for r in rows:
        key = keys.setdefault(r["key"], {"key": r["key"], "counts": {}, "windows": [], "alerts": []})
        key["windows"].append({"start_ms": r["window_start_ms"], "counts": r["counts"]})
        for label, n in r["counts"].items():
            key["counts"][label] = key["counts"].get(label, 0) + n
    for alert in recent:
        if alert.key in keys and alert.window_start_ms in shown_starts:
            keys[alert.key]["alerts"].append(alert.id)
    busiest = sorted(keys.values(), key=lambda k: (-sum(k["counts"].values()), k["key"]))[:max_keys]
    return {
        "output_stream": output_stream,
        "window_s": totals.pop("window_s", 0),
        "watermark_ms": totals.pop("watermark", None),
        "labels": ordered_labels({label for r in rows for label in r["counts"]}),
        "totals": {name: totals.get(name, 0) for name in ("scored", "dead_lettered", "late", "alerts")},
        "keys": busiest,
        "alerts": [a.record() for a in recent],
        "read_at_ms": int(time.time() * 1000),
    }
