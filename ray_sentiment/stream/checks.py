"""`stream`'s checks before Ray starts: the bundle, and the broker reachable with its consumer group."""

from __future__ import annotations

from ..errors import ConfigError
from ..model.bundle import load_bundle
from ..settings import StreamSettings
from .broker import open_broker


def check_stream(model: str, s: StreamSettings) -> None:
    """The bundle (and the alert label among its labels), and Redis: reachable, and its consumer
    group there or created."""

    bundle = load_bundle(model)
    if s.alert_label is not None and s.alert_label not in bundle.labels:
        labels = ", ".join(bundle.labels)
        raise ConfigError(f"--alert-label {s.alert_label!r} is not one of the model's labels: {labels}")
    broker = open_broker(s, "ray-sentiment-check")
    broker.ensure_group()
    broker.close()
