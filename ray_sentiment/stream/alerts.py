"""An alert, as the commit script raises it (redis_broker.COMMIT) and as `stream-stats`, the live
page and the webhook show it: a key whose share of one label in a closed window rose above its
share over the windows before by more than the threshold."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone


def alerts_stream(output_stream: str) -> str:
    return f"{output_stream}:alerts"


@dataclass
class Alert:
    id: str
    key: str
    window_start_ms: int
    window_s: int
    label: str
    share: float  # of the label in the window
    baseline: float  # of the label over the baseline windows, pooled
    count: int  # comments of the label in the window
    total: int  # comments in the window
    baseline_count: int
    baseline_total: int
    baseline_windows: int
    z: float  # (share - baseline) in standard errors of a share of `total` comments
    raised_at_ms: int
    examples: list[str]  # entry ids in the input stream
    input_stream: str
    text_field: str
    texts: list[str] = field(default_factory=list)  # the examples' texts, redacted, where read

    @classmethod
    def of(cls, id_: str, fields: dict[str, str]) -> Alert:
        values: dict = {"id": id_}
        for f in dataclasses.fields(cls):
            if f.name in fields and f.name != "examples":
                kind = {"int": int, "float": float}.get(str(f.type), str)
                values[f.name] = kind(fields[f.name])
        values["examples"] = fields.get("examples", "").split()
        return cls(**values)

    def headline(self) -> str:
        start = datetime.fromtimestamp(self.window_start_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        return (
            f"{self.key or 'all comments'}: {self.label} {self.share:.0%} of {self.total} in the window from "
            f"{start} UTC, against {self.baseline:.0%} over the {self.baseline_windows} windows before (z {self.z:.1f})"
        )

    def record(self) -> dict:
        """As JSON shows it: the fields, and the headline."""
        return {**dataclasses.asdict(self), "headline": self.headline()}
