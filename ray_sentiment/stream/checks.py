"""`stream`'s checks before Ray starts: the bundle, and the broker reachable with its consumer group."""

from __future__ import annotations

from ..model.bundle import load_bundle
from ..settings import StreamSettings
from .broker import open_broker


def check_stream(model: str, s: StreamSettings) -> None:
    """The bundle, and Redis: reachable, and its consumer group there or created."""

    load_bundle(model)
    broker = open_broker(s, "ray-sentiment-check")
    broker.ensure_group()
    broker.close()
