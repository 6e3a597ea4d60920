"""The contract between the stream consumer and a comment log (Redis Streams today; Kafka could
follow): what an entry is, what a result is, what a broker does. An adapter module provides
`open_broker(settings, consumer, stop)`; `open_broker` here picks it by the URL's scheme.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ..errors import ConfigError, RaySentimentError
from ..settings import StreamSettings
from .alerts import Alert

ADAPTERS = {"redis": "redis_broker", "rediss": "redis_broker", "unix": "redis_broker"}
# Read where the command runs, so that a password need not sit in shell history, `ps` or a job's
# entrypoint. A password in the URL wins.
PASSWORD_ENV = "REDIS_PASSWORD"
SECRET_PARAMETERS = {"password"}


class BrokerError(RaySentimentError):
    """The broker refused a request (a key that is not a stream, say): the user's to fix."""


@dataclass
class Entry:
    """One comment as the broker delivered it."""

    id: str
    time_ms: int  # when the broker accepted it: decides its counting window, unless --time-field
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
        """Entries scored, dead-lettered and late, and alerts raised, since the group began."""

    def pending(self) -> int | None:
        """Entries delivered to a consumer and not yet committed; None if the stream is gone."""

    def close(self) -> None: ...


def open_broker(settings: StreamSettings, consumer: str, stop: threading.Event | None = None) -> Broker:
    """A consumer's connection to the broker that `settings.broker` names."""
    with_secret = dataclasses.replace(settings, broker=with_password(settings.broker))
    return _adapter(settings.broker).open_broker(with_secret, consumer, stop)


class Reader(Protocol):
    """What `stream` keeps for an output stream, read back (`stream-stats`, `live`)."""

    def window_counts(self, output_stream: str, last: int = 10) -> list[dict]:
        """The counts of the `last` windows that have any, oldest first:
        [{"window_start_ms": ..., "key": ..., "counts": {label: n}}]."""

    def totals(self, output_stream: str) -> dict[str, int]:
        """Scored, dead-lettered, late and alerts since the group began; window_s; watermark."""

    def alerts(self, output_stream: str, last: int = 10, examples: bool = False) -> list[Alert]:
        """The `last` alerts, newest first; with `examples`, their example comments, redacted."""

    def close(self) -> None: ...


def open_reader(url: str) -> Reader:
    return _adapter(url).open_reader(with_password(url))


def window_counts(url: str, output_stream: str, last: int = 10) -> list[dict]:
    """Reader.window_counts through a connection of its own."""
    reader = open_reader(url)
    try:
        return reader.window_counts(output_stream, last)
    finally:
        reader.close()


def _adapter(url: str):
    scheme = urlsplit(url).scheme
    if scheme not in ADAPTERS:
        schemes = ", ".join(f"{scheme}://" for scheme in ADAPTERS)
        raise ConfigError(f"--broker takes {schemes} URLs, not {shown_url(url)!r}")
    # Imported by name: the adapter imports this module, and only the chosen one needs its client library.
    return importlib.import_module(f".{ADAPTERS[scheme]}", __package__)


def shown_url(url: str) -> str:
    """The URL as every message, log line and summary shows it: any password (in the address or as
    a `password=` parameter) replaced by ***, and a user name without a password too (some write
    the password there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    shown = url
    if "@" in parts.netloc:
        userinfo, _, host = parts.netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        shown = shown.replace(parts.netloc, f"{user}:***@{host}" if colon else f"***@{host}", 1)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() in SECRET_PARAMETERS for k, _ in query):
        masked = [(k, "***" if k.lower() in SECRET_PARAMETERS else v) for k, v in query]
        shown = shown.replace(f"?{parts.query}", f"?{urlencode(masked, safe='*')}", 1)
    return shown


def with_password(url: str) -> str:
    """The URL with the password from REDIS_PASSWORD added, as a `password=` parameter, when it has
    none: what the driver connects with, and what the consumer actors are given, on whichever node
    they run (actor arguments are neither logged nor written to Ray's files; a runtime_env is)."""
    password = os.environ.get(PASSWORD_ENV)
    parts = urlsplit(url)
    if not password or parts.password or any(k.lower() in SECRET_PARAMETERS for k, _ in parse_qsl(parts.query)):
        return url
    return f"{url}{'&' if parts.query else '?'}password={quote(password, safe='')}"
