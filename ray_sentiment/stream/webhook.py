"""Alerts POSTed to a webhook, at least once: a thread in the `stream` driver reads <output>:alerts
through a consumer group of its own and acknowledges an alert only once the receiver answered 2xx.
A failure is counted and retried with backoff; the consumers never wait for it. An alert raised
while the driver was down, or sent but not acknowledged, is sent when it runs again.

The URL often holds a token (Slack's, say): it stays in this process, is never given to Ray and is
shown only as scheme://host."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import redis

from .alerts import Alert, alerts_stream
from .redis_broker import RedisReader

log = logging.getLogger(__name__)
GROUP = "ray-sentiment-webhook"
TIMEOUT_S = 10.0
MAX_DELAY_S = 60.0


def shown(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def payload(alert: Alert) -> bytes:
    """The alert's fields, its headline as `text` (what Slack and Teams-style receivers show) and
    its example comments, redacted."""
    return json.dumps({"text": alert.headline(), "alert": alert.record()}).encode()


class WebhookSender(threading.Thread):
    def __init__(self, url: str, broker_url: str, output_stream: str):
        super().__init__(name="alert-webhook", daemon=True)
        self.url, self.output_stream, self.stop = url, output_stream, threading.Event()
        self.reader = RedisReader(broker_url)
        self.stream = alerts_stream(output_stream)
        self.totals = f"{output_stream}:totals"
        try:  # from now on: alerts raised before the first run with a webhook are not sent
            self.reader.redis.xgroup_create(self.stream, GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.delivered = self.failures = 0

    def run(self) -> None:
        backlog = True  # first what an earlier run read and did not deliver
        while not self.stop.is_set():
            try:
                reply = self.reader.redis.xreadgroup(
                    GROUP, "driver", {self.stream: "0" if backlog else ">"}, count=10, block=None if backlog else 500
                )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("alert webhook: cannot read %s (%s); retrying", self.stream, exc)
                self.stop.wait(1.0)
                continue
            entries = [(i.decode(), f) for _, messages in reply or [] for i, f in messages]
            backlog = backlog and bool(entries)
            for id_, fields in entries:
                alert = Alert.of(id_, {k.decode(): v.decode() for k, v in fields.items()})
                self.reader.add_texts([alert])
                if self.deliver(alert):
                    self.reader.redis.xack(self.stream, GROUP, id_)

    def close(self, timeout: float = 15.0) -> str:
        """Stop (an alert not delivered yet stays pending, for the next run) and say what was sent."""
        self.stop.set()
        self.join(timeout)
        self.reader.close()
        return f"webhook: {self.delivered} delivered, {self.failures} failed attempts"

    def deliver(self, alert: Alert) -> bool:
        """POST until a 2xx, with backoff; False when asked to stop first."""
        delay = 0.5
        while not self.stop.is_set():
            request = urllib.request.Request(
                self.url, data=payload(alert), headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S):
                    self.delivered += 1
                    return True
            except (urllib.error.URLError, OSError) as exc:  # HTTPError (4xx, 5xx) is a URLError
                self.failures += 1
                reason = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else type(exc).__name__
                log.warning("alert webhook %s: %s; retrying in %.1f s", shown(self.url), reason, delay)
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    self.reader.redis.hincrby(self.totals, "webhook_failures", 1)
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_DELAY_S)
        return False
