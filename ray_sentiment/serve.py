"""HTTP scoring with Ray Serve: a FastAPI ingress that checks requests, and model replicas that
score the texts of many requests together (`@serve.batch`).

    ray-sentiment serve --model runs/example --port 8000

    POST /v1/sentiment  {"texts": [...]}  → {"model": {...}, "results": [{label, confidence, p_<label>...}]}
    GET  /v1/model      labels, preset, training metrics
    GET  /healthz       200 once the model answers
    GET  /docs          OpenAPI

Limits: 1 to 1,000 texts of at most --max-text-chars (10,000) characters each, a body of at most 1 MiB. Client errors
are 4xx with {"detail": ...}; a full queue is 503 with Retry-After; a client error is never a 500.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.
import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import ray
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from .bundle import ModelBundle, load_bundle
from .errors import ConfigError
from .predictor import Predictor
from .results import MAX_TEXT_CHARS, result_records, text_problem
from .runtime import ensure_ray, stop_on_signals
from .settings import MAX_TEXTS_PER_REQUEST as MAX_TEXTS
from .settings import ServeSettings, settings_from

MAX_BODY_BYTES = 1 << 20
API_KEY_ENV = "RAY_SENTIMENT_API_KEY"
MODEL_TIMEOUT_S = 30.0
QUIET = {"log_level": "WARNING", "enable_access_log": False}  # no log line per request
# A replica that is stopping checks this often whether its requests in flight are done.
SHUTDOWN_POLL = {"graceful_shutdown_wait_loop_s": 0.2}
RETRY_AFTER_S = "1"
DRAIN_GRACE_S = 0.2  # after the last request in flight: for the 503s of late arrivals to go out


def count_texts(requests: list[list[str]]) -> int:
    return sum(len(texts) for texts in requests)


@serve.deployment
class SentimentModel:
    """A replica holding the model; `score` gathers the texts of concurrent requests into one call."""

    def __init__(self, bundle: ModelBundle, settings: ServeSettings):
        self.predictor = Predictor(bundle, "cuda" if settings.use_gpu else "cpu", settings.max_text_chars)
        self.score_batched.set_max_batch_size(settings.max_batch_size)
        self.score_batched.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000)

    # The real limits come from ServeSettings in __init__; these are placeholders Serve requires.
    @serve.batch(max_batch_size=MAX_TEXTS, batch_wait_timeout_s=0.0, batch_size_fn=count_texts)
    async def score_batched(self, requests: list[list[str]]) -> list[np.ndarray]:
        proba = self.predictor.predict_proba([t for texts in requests for t in texts])
        return np.split(proba, np.cumsum([len(texts) for texts in requests])[:-1])

    async def score(self, texts: list[str]) -> np.ndarray:
        return self.predictor.predict_proba(texts)

    def labels(self) -> list[str]:
        return self.predictor.labels


class SentimentRequest(BaseModel):  # for the OpenAPI docs; `parse_texts` does the checking
    texts: list[str] = Field(
        min_length=1,
        max_length=MAX_TEXTS,
        description=f"1 to {MAX_TEXTS:,} comments, each at most --max-text-chars characters",
    )


def parse_texts(body: bytes, max_chars: int = MAX_TEXT_CHARS) -> list[str]:
    """The texts of a request body, or an HTTPException saying exactly what is wrong with it."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(422, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPException(422, "body is nested too deeply") from None
    if not isinstance(request, dict) or "texts" not in request:
        raise HTTPException(422, 'body must be a JSON object with a "texts" list')
    texts = request["texts"]
    if not isinstance(texts, list) or not texts:
        raise HTTPException(422, '"texts" must be a list of 1 to 1,000 strings')
    if len(texts) > MAX_TEXTS:
        raise HTTPException(413, f"{len(texts):,} texts in one request; at most {MAX_TEXTS:,}")
    for i, text in enumerate(texts):
        if problem := text_problem(text, max_chars):
            raise HTTPException(422, f"texts[{i}]: {problem}")
    return texts


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by its Content-Length or, for a chunked
    body, as soon as the bytes read pass the limit. The body is read here (at most `limit` bytes
    kept) and handed on whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_large(self.limit)(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await too_large(self.limit)(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over {limit:,} bytes"}, status_code=413)


def model_summary(bundle: ModelBundle, path: str) -> dict:
    """What /v1/model says: name and version (a hash of the weights file), labels, preset, metrics."""
    metrics = {
        k: v
        for k, v in bundle.metrics.get("validation", {}).items()
        if k in ("rows", "accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc_ovr")
    }
    return {
        "name": os.path.basename(os.path.normpath(path)),
        "version": bundle.version,
        "labels": bundle.labels,
        "preset": bundle.preset,
        "validation": metrics,
    }


@dataclass(frozen=True)
class KeyDigest:
    """A salted SHA-256 of the API key: what the replicas hold. The key itself never leaves the
    process that read it, so no runtime_env, deployment config or Ray log can carry it."""

    salt: str
    sha256: str

    @classmethod
    def of(cls, key: str) -> "KeyDigest":
        salt = secrets.token_hex(16)
        return cls(salt, _sha256(salt, key))

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(_sha256(self.salt, key), self.sha256)


def _sha256(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{key}".encode("utf-8", "surrogatepass")).hexdigest()


def api_key_digest() -> KeyDigest | None:
    """From RAY_SENTIMENT_API_KEY where it is set; an empty value is refused, not taken as 'no key'."""
    key = os.environ.get(API_KEY_ENV)
    if key is None:
        return None
    if not key.strip():
        raise ConfigError(f"{API_KEY_ENV} is set but empty; set a key, or unset it to serve without one")
    return KeyDigest.of(key)


class ApiKeyGuard:
    """ASGI middleware: with a key, /v1/*, /docs and /openapi.json need `Authorization: Bearer <key>`
    (the scheme in any case, RFC 7235); /healthz stays open for load balancers."""

    OPEN = ("/healthz",)
    # Set by the ingress replica's constructor (one ingress per replica process). A class attribute,
    # not a module-level dict: Ray pickles the deployment's functions with copies of such globals,
    # but classes by reference, so this is the one object both sides see.
    digest: KeyDigest | None = None

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        digest = ApiKeyGuard.digest
        if scope["type"] == "http" and digest and _route(scope) not in self.OPEN:
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not digest.matches(given.strip()):
                response = JSONResponse(
                    {"detail": "missing or wrong API key: send Authorization: Bearer <key>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _route(scope) -> str:
    """The path within the app, without the route prefix it is mounted at."""
    path, prefix = scope["path"], scope.get("root_path", "")
    return path[len(prefix) :] if prefix and path.startswith(prefix) else path


REQUEST_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": SentimentRequest.model_json_schema()}}}
}
app = FastAPI(title="ray-sentiment", description="Sentiment of social-media comments.")
app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
app.add_middleware(ApiKeyGuard)  # added last, so it runs first: a request without the key reads no body


@serve.deployment
@serve.ingress(app)
class SentimentAPI:
    def __init__(self, model, summary: dict, batching: bool, max_text_chars: int, key: KeyDigest | None):
        self.model, self.summary, self.batching, self.max_text_chars = model, summary, batching, max_text_chars
        self.labels = summary["labels"]
        self.in_flight, self.draining = 0, False
        ApiKeyGuard.digest = key

    @app.post("/v1/sentiment", openapi_extra=REQUEST_DOC)
    async def sentiment(self, request: Request) -> JSONResponse:
        if self.draining:
            raise HTTPException(503, "shutting down; retry on another server", headers={"Retry-After": RETRY_AFTER_S})
        self.in_flight += 1
        try:
            return await self.score(await request.body())
        finally:
            self.in_flight -= 1

    async def drain(self, timeout_s: float) -> int:
        """Before a shutdown: refuse new requests (503, and /healthz 503) and wait for those in
        flight, since Serve's shutdown kills the proxy at once. Returns how many were still running."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return self.in_flight

    async def score(self, body: bytes) -> JSONResponse:
        texts = parse_texts(body, self.max_text_chars)
        method = self.model.score_batched if self.batching else self.model.score
        try:
            proba = await asyncio.wait_for(method.remote(texts), MODEL_TIMEOUT_S)
        except (BackPressureError, DeploymentUnavailableError, RayActorError):  # full, or a replica died
            raise HTTPException(
                503, "busy: too many requests queued; retry shortly", headers={"Retry-After": RETRY_AFTER_S}
            ) from None
        except asyncio.TimeoutError:
            raise HTTPException(
                503, f"the model did not answer within {MODEL_TIMEOUT_S:.0f} s", headers={"Retry-After": RETRY_AFTER_S}
            ) from None
        # A JSONResponse skips FastAPI's generic encoder, which walks every value of every result.
        return JSONResponse(
            {
                "model": {"name": self.summary["name"], "version": self.summary["version"]},
                "results": result_records(proba, self.labels),
            }
        )

    @app.get("/v1/model")
    async def model_info(self) -> dict:
        return self.summary

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        if self.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        try:
            await asyncio.wait_for(self.model.labels.remote(), 5)
        except Exception as exc:  # any reason the model cannot answer is "not ready"
            return JSONResponse({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})


def build(settings: ServeSettings) -> serve.Application:
    bundle = load_bundle(settings.model)
    replicas = settings.replicas
    scaling: dict[str, object] = (
        {"num_replicas": replicas}
        if isinstance(replicas, int)
        else {"autoscaling_config": {"min_replicas": replicas[0], "max_replicas": replicas[1]}}
    )
    model = SentimentModel.options(  # type: ignore[attr-defined]  # added by @serve.deployment
        ray_actor_options={"num_gpus": 1 if settings.use_gpu else 0, "num_cpus": 0 if settings.use_gpu else 1},
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        logging_config=QUIET,
        **SHUTDOWN_POLL,
        **scaling,
    ).bind(bundle, settings)
    # The ingress only checks and awaits, so it takes many requests at once; load is shed where the
    # model replicas' queues are full, with a 503 and Retry-After.
    api = SentimentAPI.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000,
        logging_config=QUIET,
        **SHUTDOWN_POLL,
    )
    return api.bind(
        model, model_summary(bundle, settings.model), settings.batching, settings.max_text_chars, api_key_digest()
    )


def app_builder(args: dict) -> serve.Application:
    """For Serve config files: `import_path: ray_sentiment.serve:app_builder`, `args: {model: DIR, ...}`
    with `replicas` a number or [min, max]."""
    return build(settings_from(ServeSettings, args, "args for ray_sentiment.serve:app_builder"))


def start(application: serve.Application, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve on the running Ray with the app (see `build`); returns its URL."""
    ensure_ray()
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": 2 * MODEL_TIMEOUT_S})
    serve.run(application, name="sentiment", route_prefix="/", blocking=False)
    return f"http://{_url_host(host)}:{port}"


def direct_ingress_ports(proxy_port: int, wait_s: float = 3.0) -> list[int]:
    """The ports of Serve's direct ingress (each ingress replica's own HTTP server, opened on the
    same host as the proxy when throughput-optimized mode is on); empty when it is off. The
    controller learns them from the replicas shortly after they start; without direct ingress it
    lists the proxy instead."""
    controller = serve.context._get_global_client()._controller
    deadline = time.monotonic() + wait_s
    while True:
        groups = ray.get(controller.get_target_groups.remote())
        ports = sorted({t.port for g in groups if g.app_name == "sentiment" for t in g.targets} - {proxy_port, 0})
        if ports or time.monotonic() > deadline:
            return ports
        time.sleep(0.1)


def check_port_free(host: str, port: int) -> None:
    """A busy port is refused in one line before Ray starts, not in a traceback from Serve's proxy."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None


def serve_until_signalled(settings: ServeSettings, host: str, port: int) -> None:
    """The `serve` command: run until SIGTERM or SIGINT, then shut Serve down."""
    application = build(settings)  # a broken bundle, option or API key fails here, before Ray starts
    if not _is_loopback(host) and os.environ.get(API_KEY_ENV) is None:
        print(
            f"warning: serving on {host} without an API key: anyone who reaches this machine can use it; "
            f"set {API_KEY_ENV}",
            file=sys.stderr,
            flush=True,
        )
    check_port_free(host, port)
    # Serve's throughput-optimized mode (direct ingress, user code on the replica's event loop,
    # buffered request logs): more requests/s here than the default (see README, Speed).
    # It applies to the Serve processes of the local Ray started next; on a cluster, set it in its env.
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    ensure_ray()
    stop = threading.Event()
    stop_on_signals(stop)
    url = start(application, host, port)
    direct = ", ".join(f"{_url_host(host)}:{p}" for p in direct_ingress_ports(port)) or "off"
    print(
        f"serving {settings.model} at {url} (POST {url}/v1/sentiment, docs at {url}/docs); "
        f"direct ingress: {direct}; SIGTERM or Ctrl-C stops",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    still_running = serve.get_app_handle("sentiment").drain.remote(MODEL_TIMEOUT_S).result()
    time.sleep(DRAIN_GRACE_S)
    if os.environ.get("RAY_ADDRESS"):
        serve.shutdown()  # on a cluster the application would outlive this command
    ray.shutdown()  # a local Ray ends with its processes, Serve's included: seconds faster than serve.shutdown()
    print("stopped" if not still_running else f"stopped; {still_running} requests were cut short", flush=True)


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
