"""HTTP scoring on Ray Serve: each replica holds the model, batches the texts of concurrent requests
(batcher.py) and answers HTTP itself, on `--host:--port`, with the plain ASGI app of http_api.py
under uvicorn. Replicas on one machine share the port (SO_REUSEPORT: the kernel spreads
connections over them), so a request makes no hop between processes. Serve places, restarts and
scales the replicas; its own proxy is off.

Why not Serve's own front doors (Ray 2.60): its HTTP proxy adds a hop per request and capped every
design at about a third of this one; direct ingress gives each replica a port of its own, not one
shared port; and HAProxy mode binds its stats and Prometheus listeners on every interface (ports
8404 and 9101, fixed), which `--host` could not keep on loopback.

    ray-sentiment serve --model runs/example --port 8000 [--replicas 2 | --replicas 1,4]
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time

import ray
import torch
import uvicorn
from ray import serve
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..access import KeyDigest, api_key_digest, bind
from ..errors import ConfigError
from ..model.bundle import ModelBundle, load_bundle
from ..model.predictor import Predictor
from ..port_lock import app_identity, claimed_port, holder_line
from ..runtime import ensure_ray, stop_on_signals
from ..settings import ServeSettings, settings_from
from .batcher import Batcher
from .checks import check_serve
from .http_api import MODEL_TIMEOUT_S, SentimentApp, api_docs

QUIET = {"log_level": "WARNING", "enable_access_log": False}
# Rows of one explanation step: a plain request waits for at most one step, so a step costs about
# what a plain call does (benchmarks/serve_load.py --explain-only measures plain latency beside them).
EXPLAIN_STEP_ROWS = 8
# A stopping replica drains (http_api.SentimentApp.drain) inside Serve's graceful shutdown, which
# must outlast it; Serve checks this often whether the replica is done.
SHUTDOWN = {"graceful_shutdown_wait_loop_s": 0.1, "graceful_shutdown_timeout_s": MODEL_TIMEOUT_S + 5}


@serve.deployment
class SentimentServer:
    """One replica: the Predictor, a batcher, and an HTTP server on the shared port."""

    async def __init__(self, bundle: ModelBundle, settings: ServeSettings, *, summary: dict, key: KeyDigest | None):  # type: ignore[misc]  # Serve awaits it
        self.predictor = Predictor(bundle, "cuda" if settings.use_gpu else "cpu", settings.max_text_chars)
        torch.set_num_threads(max(1, int(settings.cpus_per_replica)))
        max_texts = settings.max_batch_size if settings.batching else 0  # 0: each request on its own
        self.batcher = Batcher(self.predictor.predict_proba, max_texts, settings.batch_wait_ms / 1000)
        app = app_identity(ray.get_runtime_context().gcs_address, serve.get_replica_context().app_name)
        self.app = SentimentApp(
            self.batcher.score,
            summary=summary,
            key=key,
            settings=settings,
            docs=api_docs(),
            explain=self.explain,
            app=app,
        )
        async with claimed_port(settings.host, settings.port, app=app, holder=holder_line(settings.model)):
            self.server = await listen(
                self.app, host=settings.host, port=settings.port, head_timeout_s=settings.client_timeout_s
            )
        # What is loaded now lives as long as the replica: kept out of the collector's full passes,
        # which would otherwise walk torch's, Ray's and FastAPI's objects while requests wait.
        gc.freeze()

    async def explain(self, texts: list[str]) -> list[dict]:
        """On the model's thread, one step of EXPLAIN_STEP_ROWS model rows at a time, each when no
        plain batch waits: a plain request waits for one step at most, not a whole explanation."""
        steps = self.predictor.explain_steps(texts, rows=EXPLAIN_STEP_ROWS)
        while True:
            done, records = await self.batcher.run(_step, steps)
            if done:
                return records

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"in_flight": self.app.in_flight}

    def check_health(self) -> None:
        if self.server.should_exit or not self.server.started:
            raise RuntimeError("the HTTP server stopped")

    async def __del__(self) -> None:
        """Serve's graceful stop: drain, then close the socket and the idle connections."""
        if not hasattr(self, "server"):  # the constructor failed
            return
        await self.app.drain()
        await self.server.stop()
        self.batcher.close()


def _step(steps) -> tuple[bool, list[dict] | None]:
    try:
        next(steps)
        return False, None
    except StopIteration as finished:
        return True, finished.value


async def listen(app, *, host: str, port: int, head_timeout_s: float) -> ReplicaServer:
    """uvicorn serving `app` on host:port, on this event loop, with SO_REUSEPORT so that every
    replica on the machine can bind the same port."""
    sock = bind(host, port, reuse_port=True)
    config = uvicorn.Config(
        app,
        http=type("TimedHead", (HeadTimeout,), {"head_timeout_s": head_timeout_s}),
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,  # after the drain, only idle connections are left to close
    )
    server = ReplicaServer(config)
    server.task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if server.task.done():
            server.task.result()  # raises what stopped it
            raise RuntimeError(f"the HTTP server on {host}:{port} did not start")
        await asyncio.sleep(0.01)
    return server


class HeadTimeout(HttpToolsProtocol):
    """uvicorn waits as long as a client likes for a request's head (a slowloris client holds its
    connection forever): here a head not complete `head_timeout_s` after the connection opened, or
    after the request began, gets 408 and the connection closes. (httptools comes with Ray Serve's
    uvicorn[standard].)"""

    head_timeout_s = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(HEAD_TIMED_OUT)
            self.transport.close()


_HEAD_DETAIL = b'{"detail": "the request head took too long"}'
HEAD_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_HEAD_DETAIL), _HEAD_DETAIL)
)


class ReplicaServer(uvicorn.Server):
    task: asyncio.Task

    @contextlib.contextmanager
    def capture_signals(self):
        yield  # the replica's signals are Ray's to handle

    async def stop(self) -> None:
        """Close the socket, finish the requests in flight, close idle connections."""
        self.should_exit = True
        await self.task


def scale_on_requests_in_flight(ctx) -> tuple[float, dict]:
    """Serve autoscaling policy: replicas for the requests in flight, at the target per replica.
    Serve's default counts the requests that pass through its own router, which these never do."""
    in_flight = sum(ctx.aggregated_metrics.get("in_flight", {}).values())
    return in_flight / ctx.config.get_target_ongoing_requests(), {}


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


def build(settings: ServeSettings, bundle: ModelBundle | None = None) -> serve.Application:
    bundle = bundle or load_bundle(settings.model)
    replicas = settings.replicas
    scaling: dict[str, object] = (
        {"num_replicas": replicas}
        if isinstance(replicas, int)
        else {
            "autoscaling_config": {
                "min_replicas": replicas[0],
                "max_replicas": replicas[1],
                "target_ongoing_requests": max(1, settings.max_ongoing_requests // 2),
                "upscale_delay_s": 5,  # Serve's default waits 30 s of load; scaling down stays slow (600 s)
                "policy": {"policy_function": scale_on_requests_in_flight},
            }
        }
    )
    return SentimentServer.options(  # type: ignore[attr-defined]  # added by @serve.deployment
        ray_actor_options={"num_gpus": 1 if settings.use_gpu else 0, "num_cpus": settings.cpus_per_replica},
        # Each replica sheds its own load (http_api.SentimentApp.sentiment); Serve's router never sees a request.
        max_ongoing_requests=settings.max_batch_size,  # else Serve warns that no batch can fill
        logging_config=QUIET,
        **SHUTDOWN,
        **scaling,
    ).bind(bundle, settings, summary=model_summary(bundle, settings.model), key=api_key_digest())


def app_builder(args: dict) -> serve.Application:
    """For Serve config files: `import_path: ray_sentiment.serve:app_builder`, `args: {model: DIR,
    host: 0.0.0.0, port: 8000, ...}` with `replicas` a number or [min, max]."""
    return build(settings_from(ServeSettings, args, "args for ray_sentiment.serve:app_builder"))


def start(application: serve.Application, name: str = "sentiment") -> None:
    """Run the app (see `build`) on the running Ray, with Serve's own HTTP proxy off. A replica
    that cannot take the port (port_lock.py) fails the start with its one line."""
    ensure_ray()
    serve.start(proxy_location="Disabled")
    try:
        serve.run(application, name=name, route_prefix=None, blocking=False)
    except RuntimeError:  # Serve gave up on the replicas; a ConfigError of theirs is the user's to fix
        why = _config_error(name)
        if why is None:
            raise
        serve.delete(name)
        raise ConfigError(why) from None


def serve_until_signalled(settings: ServeSettings, bundle: ModelBundle | None = None) -> None:
    """The `serve` command: run until SIGTERM or SIGINT, then drain every replica and stop.
    `bundle`: what checks.check_serve returned, if the caller ran it (as the CLI does, first)."""
    application = build(settings, bundle or check_serve(settings))
    host, port = settings.host, settings.port
    ensure_ray()
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        start(application)
    except ConfigError:
        ray.shutdown()
        raise
    url = f"http://{_url_host(host)}:{port}"
    replicas = settings.replicas if isinstance(settings.replicas, int) else "-".join(map(str, settings.replicas))
    print(
        f"serving {settings.model} at {url} (POST {url}/v1/sentiment, docs at {url}/docs) with {replicas} "
        f"replica(s); no other port is opened; SIGTERM or Ctrl-C stops",
        flush=True,
    )
    while not stop.wait(0.1):
        pass
    started = time.monotonic()
    # Each replica drains (see SentimentServer.__del__) before it exits. Polled here every 0.1 s:
    # a blocking serve.delete polls once a second.
    serve.delete("sentiment", _blocking=False)
    while "sentiment" in serve.status().applications:
        time.sleep(0.1)
    if os.environ.get("RAY_ADDRESS"):
        serve.shutdown()  # on a cluster Serve's controller would outlive this command
    ray.shutdown()
    print(f"stopped in {time.monotonic() - started:.1f} s", flush=True)


def _config_error(name: str) -> str | None:
    """The message of a ConfigError that failed the application's replicas, if one did. Serve
    reports a replica's failure only as text, its traceback included."""
    app = serve.status().applications.get(name)
    messages = [app.message, *(d.message for d in app.deployments.values())] if app else []
    for line in reversed("\n".join(messages).splitlines()):
        _, found, message = line.partition("ConfigError: ")
        if found:
            return message.strip()
    return None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
