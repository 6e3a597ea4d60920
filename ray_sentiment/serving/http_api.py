"""The HTTP API as one plain ASGI app: routing, limits, the API key, backpressure and draining,
with no framework on the hot path. The Serve replica (app.py) runs it under uvicorn and hands it
a `score` coroutine; nothing here needs Ray.

    POST /v1/sentiment  {"texts": [...]}  → {"model": {...}, "results": [{label, confidence, p_<label>...}]}
                        {"texts": [...], "explain": true} also gives each result its tokens' contributions
    GET  /v1/model      labels, preset, training metrics
    GET  /healthz       200 while the server takes requests (also /-/healthz, the path KubeRay probes)
    GET  /docs          OpenAPI (the document is built once, at start)

Client errors are 4xx with {"detail": ...}; a full queue, a slow model or a server that is
stopping is 503 with Retry-After and {"detail": ...}; a client error is never a 500.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from ..access import KeyDigest
from ..port_lock import APP_HEADER
from ..results import MAX_TEXT_CHARS, result_records, text_problem
from ..settings import MAX_TEXTS_PER_REQUEST as MAX_TEXTS
from ..settings import ServeSettings

MAX_BODY_BYTES = 1 << 20
# An explained text costs up to (tokens + 1) model rows, so explaining takes fewer, shorter texts.
EXPLAIN_MAX_TEXTS = 32
EXPLAIN_MAX_CHARS = 2_000
# Explanations in progress per replica; one more is answered 503 at once, so that they cannot
# fill the places that plain requests need.
EXPLAIN_IN_FLIGHT = 2
MODEL_TIMEOUT_S = 30.0
RETRY_AFTER_S = "1"
# After a drain starts, how long new requests keep getting their 503 before the socket closes: the
# time a load balancer needs to see /healthz fail and stop sending.
DRAIN_NOTICE_S = 0.3


@dataclass(frozen=True)
class Route:
    """One route: what the handler answers there, and all that /openapi.json says of it."""

    method: str
    summary: str
    responses: dict[int, str]  # status → when it is answered
    body: dict | None = None  # JSON Schema of the request body
    keyed: bool = True  # needs the API key, when one is set


# Any route: a request head (or body) slower than --client-timeout-s is answered 408 by the server.
SLOW = {408: "the request head or body stalled longer than --client-timeout-s; the connection closes"}
KEYED = {401: "an API key is set and the request did not send it (Authorization: Bearer <key>)"}
GET_ONLY = {405: "a method other than GET or HEAD"}
HEALTH = {200: "it takes requests", 503: "it is stopping", **SLOW}
BUSY = "the replica is stopping, its queue is full, or the model did not answer in time; see Retry-After"
SENTIMENT_REQUEST = {
    "type": "object",
    "required": ["texts"],
    "properties": {
        "texts": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": MAX_TEXTS,
            "description": f"1 to {MAX_TEXTS:,} comments, each at most --max-text-chars characters "
            f"(with explain: {EXPLAIN_MAX_TEXTS} comments of at most {EXPLAIN_MAX_CHARS:,} characters)",
        },
        "explain": {
            "type": "boolean",
            "default": False,
            "description": "also give each result `tokens`: every token's contribution to its label "
            "(leave-one-token-out occlusion)",
        },
    },
}
ROUTES = {
    "/v1/sentiment": Route(
        "POST",
        "Label, confidence and one probability per class (`p_<label>`) for each text, in order.",
        {
            200: "the results",
            405: "a method other than POST",
            413: "a body over 1 MiB, or more texts than one request may carry",
            422: "a body that is not the JSON object described, or a text that cannot be scored",
            503: BUSY,
            **KEYED,
            **SLOW,
        },
        body=SENTIMENT_REQUEST,
    ),
    "/v1/model": Route(
        "GET",
        "The model's name, version (a hash of its weights), labels, preset and validation metrics.",
        {200: "the model", **GET_ONLY, **KEYED, **SLOW},
    ),
    "/healthz": Route(
        "GET",
        "Whether the server takes requests (any method).",
        {200: "it does", 503: "it is stopping", **SLOW},
        keyed=False,
    ),
    "/-/healthz": Route(
        "GET",
        "The same, in the form KubeRay's probe reads.",
        {200: "it does", 503: "it is stopping", **SLOW},
        keyed=False,
    ),
    "/openapi.json": Route("GET", "This document.", {200: "the document", **GET_ONLY, **KEYED, **SLOW}),
    "/docs": Route("GET", "This document as a page.", {200: "the page", **GET_ONLY, **KEYED, **SLOW}),
}

Score = Callable[[list[str]], Awaitable[np.ndarray]]
Explain = Callable[[list[str]], Awaitable[list[dict]]]


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def busy(detail: str) -> HTTPError:
    return HTTPError(503, detail, {"Retry-After": RETRY_AFTER_S})


def parse_texts(body: bytes, max_chars: int = MAX_TEXT_CHARS) -> tuple[list[str], bool]:
    """The texts of a request body and whether to explain them, or an HTTPError saying exactly
    what is wrong with it."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(422, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(422, "body is nested too deeply") from None
    if not isinstance(request, dict) or "texts" not in request:
        raise HTTPError(422, 'body must be a JSON object with a "texts" list')
    texts, explain = request["texts"], request.get("explain", False)
    if not isinstance(explain, bool):
        raise HTTPError(422, '"explain" must be true or false')
    most = EXPLAIN_MAX_TEXTS if explain else MAX_TEXTS
    if not isinstance(texts, list) or not texts:
        raise HTTPError(422, f'"texts" must be a list of 1 to {most:,} strings')
    if len(texts) > most:
        why = " with explain" if explain else ""
        raise HTTPError(413, f"{len(texts):,} texts in one request{why}; at most {most:,}")
    if explain:
        max_chars = min(max_chars, EXPLAIN_MAX_CHARS)
    for i, text in enumerate(texts):
        if problem := text_problem(text, max_chars):
            raise HTTPError(422, f"texts[{i}]: {problem}" + (" (the limit with explain)" if explain else ""))
    return texts, explain


async def read_body(scope, receive, *, timeout_s: float, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, refused with 413 by its Content-Length or, when chunked, as soon as the
    bytes read pass the limit (at most `limit` bytes are ever kept). A body that stalls for
    `timeout_s` (a Content-Length larger than what is sent), or trickles in for 6 times that, is a
    408 and the connection closes: it would hold its place in the replica until the client gave up."""
    length = dict(scope["headers"]).get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise HTTPError(413, f"request body over {limit:,} bytes")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 6 * timeout_s
    body, more = bytearray(), True
    while more:
        try:
            message = await asyncio.wait_for(receive(), min(timeout_s, max(0.0, deadline - loop.time())))
        except asyncio.TimeoutError:
            raise HTTPError(
                408, f"the request body stopped arriving ({len(body):,} bytes read)", {"Connection": "close"}
            ) from None
        if message["type"] != "http.request":
            raise ConnectionAbortedError("the client went away")
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise HTTPError(413, f"request body over {limit:,} bytes")
    return bytes(body)


class SentimentApp:
    """The ASGI app, answering the ROUTES. /healthz stays open without the key, for load
    balancers; everything else needs it when one is set. A request without the key has its body
    left unread."""

    def __init__(
        self,
        score: Score,
        *,
        summary: dict,
        key: KeyDigest | None,
        settings: ServeSettings,
        docs: dict,
        explain: Explain,
        app: str = "",
    ):
        """`settings` gives the limits: text length, requests scored and waiting per replica.
        `explain`: results with their tokens' contributions, for requests that ask. `app`: which
        app this replica belongs to, told on /healthz (port_lock.py)."""
        self.score, self.summary, self.key, self.settings = score, summary, key, settings
        self.explain = explain
        self.app_header = {APP_HEADER: app}
        self.model_ref = json.dumps({"name": summary["name"], "version": summary["version"]})
        self.labels = summary["labels"]
        self.places = asyncio.Semaphore(settings.max_ongoing_requests)
        self.in_flight = self.queued = self.explaining = 0
        self.draining = False
        self.static = {
            "/v1/model": ("application/json", json.dumps(summary).encode()),
            "/openapi.json": ("application/json", json.dumps(docs["openapi"]).encode()),
            "/docs": ("text/html; charset=utf-8", docs["html"].encode()),
        }

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        route = ROUTES.get(path)
        try:
            if route is None:
                raise HTTPError(404, f"no route {path}; see /docs")
            if not route.keyed:  # the health checks: open to load balancers, whatever the method
                if self.draining:
                    raise HTTPError(503, "shutting down", self.app_header)
                if path == "/-/healthz":  # what KubeRay's readiness probe looks for
                    return await _send(send, 200, body=b"success", kind="text/plain", headers=self.app_header)
                return await _send(send, 200, body=b'{"status":"ok"}', headers=self.app_header)
            if self.key and not self.key.allows(scope):
                raise HTTPError(
                    401, "missing or wrong API key: send Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
                )
            if method != route.method and not (method == "HEAD" and route.method == "GET"):
                raise HTTPError(405, f"use {route.method}", {"Allow": route.method})
            if path == "/v1/sentiment":
                return await _send(send, 200, body=await self.sentiment(scope, receive), close=self.draining)
            kind, body = self.static[path]
            return await _send(send, 200, body=body, kind=kind)
        except HTTPError as error:
            body = json.dumps({"detail": error.detail}).encode()
            await _send(send, error.status, body=body, headers=error.headers, close=self.draining)
        except ConnectionAbortedError:
            pass

    async def sentiment(self, scope, receive) -> bytes:
        if self.draining:
            raise busy("shutting down; retry on another server")
        body = await read_body(scope, receive, timeout_s=self.settings.client_timeout_s)
        texts, explain = parse_texts(body, self.settings.max_text_chars)
        if self.places.locked() and self.queued >= self.settings.max_queued_requests:
            raise busy("busy: too many requests queued; retry shortly")
        if explain and self.explaining >= EXPLAIN_IN_FLIGHT:
            raise busy(f"busy: {EXPLAIN_IN_FLIGHT} explanations in progress; retry shortly")
        self.in_flight += 1
        self.queued += 1
        self.explaining += explain
        try:
            async with self.places:
                self.queued -= 1
                try:
                    if explain:
                        records = await asyncio.wait_for(self.explain(texts), MODEL_TIMEOUT_S)
                    else:
                        records = result_records(
                            await asyncio.wait_for(self.score(texts), MODEL_TIMEOUT_S), self.labels
                        )
                except asyncio.TimeoutError:
                    raise busy(f"the model did not answer within {MODEL_TIMEOUT_S:.0f} s") from None
        finally:
            self.in_flight -= 1
            self.explaining -= explain
        results = json.dumps(records)
        return f'{{"model":{self.model_ref},"results":{results}}}'.encode()

    async def drain(self) -> int:
        """Before the socket closes: /healthz and new requests answer 503 until DRAIN_NOTICE_S
        after the last request in flight was answered (within the model timeout), so that a client
        reconnecting after that answer gets its 503 rather than a closing socket. Returns how many
        requests were still in flight at the timeout."""
        self.draining = True
        loop = asyncio.get_running_loop()
        quiet_until, deadline = loop.time() + DRAIN_NOTICE_S, loop.time() + MODEL_TIMEOUT_S
        while (self.in_flight or loop.time() < quiet_until) and loop.time() < deadline:
            if self.in_flight:
                quiet_until = loop.time() + DRAIN_NOTICE_S
            await asyncio.sleep(0.02)
        return self.in_flight


async def _send(send, status, *, body: bytes, kind="application/json", headers=None, close=False) -> None:
    head = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:  # a stopping server: the client's next request should open a new connection elsewhere
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def api_docs() -> dict:
    """The OpenAPI document, written from ROUTES (what the handler answers), and the /docs page."""
    from fastapi.openapi.docs import get_swagger_ui_html

    error = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
    paths = {}
    for path, route in ROUTES.items():
        operation: dict = {"summary": route.summary, "responses": {}}
        for status, when in sorted(route.responses.items()):
            answer: dict = {"description": when}
            if status >= 400:
                answer["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            operation["responses"][str(status)] = answer
        if route.body:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
        if route.keyed:
            operation["security"] = [{"apiKey": []}, {}]  # the key, when the server has one
        paths[path] = {route.method.lower(): operation}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "ray-sentiment", "description": "Sentiment of social-media comments.", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"Error": error},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
    html = get_swagger_ui_html(openapi_url="/openapi.json", title="ray-sentiment").body
    return {"openapi": document, "html": bytes(html).decode()}
