"""The contract between the stream consumer and a comment log (Redis Streams today; Kafka could
follow): what an entry is, what a result is, what a broker does. An adapter module provides
`open_broker(settings, consumer, stop)`; `open_broker` here picks it by the URL's scheme.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

from .errors import ConfigError
from .settings import StreamSettings

ADAPTERS = {"redis": "redis_broker", "rediss": "redis_broker", "unix": "redis_broker"}


@dataclass
class Entry:
    """One comment as the broker delivered it."""

    id: str
    time_ms: int  # when the broker accepted it: decides its counting window
    fields: dict[bytes, bytes]
    deliveries: int = 1


@dataclass
class Result:
    """What one entry became: a scored output (label set) or a dead letter (label None)."""

    entry_id: str
    fields: list[tuple[str | bytes, bytes | str]]
    label: str | None = None
    window_ms: int = 0
    key: str = ""


class Broker(Protocol):
    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` entries: stale ones taken over from dead consumers first, then new ones."""

    def commit(self, results: list[Result]) -> int:
        """Atomically write every result, bump the counts and acknowledge its entry, skipping entries
        no longer pending (already committed). Returns how many were written."""

    def ensure_group(self) -> None:
        """Create the consumer group if missing; fail with a clear message if the broker is unreachable."""

    def totals(self) -> dict[str, int]:
        """Entries scored and dead-lettered by this group since it began."""

    def pending(self) -> int | None:
        """Entries delivered to a consumer and not yet committed; None if the stream is gone."""

    def close(self) -> None: ...


def open_broker(settings: StreamSettings, consumer: str, stop: threading.Event | None = None) -> Broker:
    scheme = urlparse(settings.redis).scheme
    if scheme not in ADAPTERS:
        schemes = ", ".join(f"{scheme}://" for scheme in ADAPTERS)
        raise ConfigError(f"--redis takes {schemes} URLs, not {settings.redis!r}")
    # Imported by name: the adapter imports this module, and only the chosen one needs its client library.
    adapter = importlib.import_module(f".{ADAPTERS[scheme]}", __package__)
    return adapter.open_broker(settings, consumer, stop)
