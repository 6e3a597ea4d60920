"""The HTTP API's one description: every route and status the ASGI handler answers is in the
OpenAPI document, which is written from the same route table. In-process: no server, no Ray."""

import asyncio
import json

import numpy as np

from ray_sentiment.access import KeyDigest
from ray_sentiment.serving.http_api import MAX_BODY_BYTES, ROUTES, SentimentApp, api_docs
from ray_sentiment.settings import ServeSettings

KEY = [(b"authorization", b"Bearer secret")]
SUMMARY = {"name": "m", "version": "v", "labels": ["negative", "positive"]}


async def score(texts):
    return np.array([[0.25, 0.75]] * len(texts), dtype=np.float32)


async def explain(texts):
    return [{"label": "positive", "tokens": []} for _ in texts]


async def answer(app, method: str, path: str, body: bytes = b"", headers=(), stall: bool = False) -> int:
    sent = []

    async def receive():
        if stall:  # a client that announced a body and never sends it
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    await app(scope, receive, send)
    return sent[0]["status"]


def test_every_route_and_status_the_handler_answers_is_in_the_openapi_document():
    docs = api_docs()
    settings = ServeSettings(model="m", client_timeout_s=0.05)
    texts = json.dumps({"texts": ["good", "bad"]}).encode()

    async def main() -> set[tuple[str, int]]:
        app = SentimentApp(
            score, summary=SUMMARY, key=KeyDigest.of("secret"), settings=settings, docs=docs, explain=explain
        )
        seen = set()
        for path, route in ROUTES.items():
            body = texts if route.body else b""
            for method, headers in ((route.method, KEY), (route.method, ()), ("DELETE", KEY)):
                seen.add((path, await answer(app, method, path, body, headers)))
        post = "/v1/sentiment"
        seen.add((post, await answer(app, "POST", post, b"{not json", KEY)))
        seen.add((post, await answer(app, "POST", post, json.dumps({"texts": ["x"] * 5000}).encode(), KEY)))
        seen.add((post, await answer(app, "POST", post, b"x" * (MAX_BODY_BYTES + 1), KEY)))
        seen.add((post, await answer(app, "POST", post, headers=[*KEY, (b"content-length", b"10")], stall=True)))
        app.draining = True
        for path in ("/v1/sentiment", "/healthz", "/-/healthz"):
            seen.add((path, await answer(app, ROUTES[path].method, path, texts, KEY)))
        return seen

    seen = asyncio.run(main())
    paths = docs["openapi"]["paths"]
    assert set(paths) == set(ROUTES) == {path for path, _ in seen}
    for path, status in sorted(seen):
        documented = paths[path][ROUTES[path].method.lower()]["responses"]
        assert str(status) in documented, f"{path} answers {status}; the document lists {sorted(documented)}"
    assert {status for _, status in seen} >= {200, 401, 405, 408, 413, 422, 503}
    assert paths["/v1/sentiment"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "texts"
    ]
