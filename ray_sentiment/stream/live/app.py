"""The live page's server: one plain ASGI app under uvicorn, no Ray. It reads Redis at most once per
refresh, however many pages are open, and holds nothing else.

    GET /           the page (HTML; its script and style ship in the package: no CDN, works offline)
    GET /live.js    the page's script
    GET /v1/live    the JSON the page polls (snapshot.py), for other tools too; needs the API key if set
    GET /healthz    200 while up

The page itself holds no data, so it is open; with RAY_SENTIMENT_API_KEY set, /v1/live needs
`Authorization: Bearer <key>`, which the page asks for once and keeps for the tab's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from importlib import resources

import uvicorn

from ...access import KeyDigest, bind, warn_if_open
from ...errors import RaySentimentError
from ...settings import LiveSettings
from ..broker import Reader, open_reader, shown_url
from .snapshot import snapshot

HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # Only its own script; examples are put in as text, never as HTML.
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'",
    ),
]


def asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


class LiveApp:
    def __init__(self, reader: Reader, settings: LiveSettings, key: KeyDigest | None):
        self.reader, self.s, self.key = reader, settings, key
        page = asset("page.html").decode().replace("{{refresh_ms}}", str(settings.refresh_ms))
        self.files = {
            "/": (b"text/html; charset=utf-8", page.encode()),
            "/live.js": (b"text/javascript; charset=utf-8", asset("live.js")),
        }
        self.latest: tuple[float, int, bytes] | None = None  # when read, status, body
        self.reading = asyncio.Lock()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method not in ("GET", "HEAD"):
            return await respond(send, 405, {"detail": "only GET is answered here"}, [(b"allow", b"GET, HEAD")])
        if path in self.files:
            kind, body = self.files[path]
            return await respond(send, 200, body, [(b"content-type", kind)])
        if path == "/healthz":
            return await respond(send, 200, {"status": "ok"})
        if path != "/v1/live":
            return await respond(send, 404, {"detail": f"no such path: {path[:100]}; the page is at /"})
        if self.key is not None and not self.key.allows(scope):
            return await respond(send, 401, {"detail": "needs Authorization: Bearer <key>"})
        status, body = await self.current()
        await respond(send, status, body, [(b"content-type", b"application/json")])

    async def current(self) -> tuple[int, bytes]:
        """The latest snapshot, read again when older than the refresh interval: one read for all pages."""
        async with self.reading:
            if self.latest is None or time.monotonic() - self.latest[0] >= self.s.refresh_ms / 1000 * 0.8:
                try:
                    data = await asyncio.to_thread(
                        snapshot, self.reader, self.s.output_stream, windows=self.s.windows, max_keys=self.s.max_keys
                    )
                    self.latest = (time.monotonic(), 200, json.dumps(data).encode())
                except RaySentimentError as exc:  # Redis away: said, and asked again at the next poll
                    self.latest = (time.monotonic(), 503, json.dumps({"detail": str(exc)}).encode())
            return self.latest[1:]


async def respond(send, status: int, body: bytes | dict, headers: list | None = None) -> None:
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), [(b"content-type", b"application/json"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": [*HEADERS, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def serve_until_signalled(s: LiveSettings) -> None:
    """The `live` command: check Redis, bind the port, serve until SIGTERM or Ctrl-C."""
    key = warn_if_open(s.host, what="the live page", exposes="read the counts and examples")
    reader = open_reader(s.broker)
    reader.totals(s.output_stream)  # Redis reachable, the password right: said now, not on the first poll
    sock = bind(s.host, s.port)
    host = f"[{s.host}]" if ":" in s.host else s.host
    print(f"live page for {s.output_stream} on {shown_url(s.broker)}: http://{host}:{s.port}/", flush=True)
    config = uvicorn.Config(LiveApp(reader, s, key), log_level="warning", access_log=False, lifespan="off")
    try:
        Server(config).run(sockets=[sock])
    finally:
        reader.close()


class Server(uvicorn.Server):
    """uvicorn, less its raising the signal that stopped it again once stopped: SIGTERM and Ctrl-C
    are how `live` is meant to end, with exit status 0, as `serve` and `stream` do."""

    @contextlib.contextmanager
    def capture_signals(self):
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
