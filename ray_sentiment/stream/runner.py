"""Scoring a comment feed: consumer actors read a stream, score batches, commit exactly once.

    ray-sentiment stream --model runs/example --input-stream comments --output-stream comments:scored

    broker (Redis Streams; see redis_broker.py)          consumer actors (Ray, model loaded once)
    read a batch (new entries, or stale ones claimed) ──▶ check each entry, score the good ones
    commit: outputs + dead letters + counts + acks   ◀── one Result per entry
            in one atomic step, skipping entries already committed

A crash before the commit leaves the batch pending, to be claimed and scored again; a crash after
it leaves nothing to redo; a commit retried after a lost connection writes nothing twice. The
broker sits behind `Broker` so that another log (Kafka) can follow without touching the consumer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import ray
from ray.exceptions import RayActorError, RayTaskError

from ..errors import RaySentimentError, user_cause, user_message
from ..model.bundle import ModelBundle, load_bundle
from ..model.predictor import Predictor
from ..results import result_names
from ..runtime import ensure_ray, stop_on_signals
from ..settings import StreamSettings
from .broker import Entry, Result, open_broker, with_password

# -- turning entries into results: plain functions, no Ray, no broker -----------------------------


def entry_problem(entry: Entry, settings: StreamSettings) -> str | None:
    """Why an entry cannot be scored (the broker's reasons first, then the text's), or None."""
    if entry.deliveries > settings.max_deliveries:
        return f"delivered {entry.deliveries} times, more than --max-deliveries {settings.max_deliveries}"
    if settings.text_field.encode() not in entry.fields:
        return f"entry has no {settings.text_field!r} field"
    if settings.time_field and settings.time_field.encode() not in entry.fields:
        return f"entry has no {settings.time_field!r} field (--time-field)"
    return None


def event_time_ms(value: bytes, fmt: str | None) -> int:
    """Epoch milliseconds of a time field: with `fmt`, strptime's; without, ISO-8601 or a number
    of epoch seconds (or milliseconds, from 10^11 on, which as seconds would be after year 5000).
    A time without a zone is UTC. Raises ValueError naming the value."""
    text = value.decode("utf-8", "replace").strip()
    try:
        if fmt is None and text.replace(".", "", 1).isdigit():
            number = float(text)
            return int(number if number >= 1e11 else number * 1000)
        moment = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
    except ValueError:
        expected = repr(fmt) if fmt else "ISO-8601 or epoch seconds/ms; give --time-format"
        raise ValueError(f"{text[:100]!r} does not parse as {expected}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _checked(entry: Entry, settings: StreamSettings) -> tuple[str | None, int]:
    """Why the entry cannot be scored (or None), and the start of its counting window, by its
    event time or the broker's."""
    why = entry_problem(entry, settings)
    if why is not None:
        return why, 0
    at = entry.time_ms
    if settings.time_field is not None:
        try:
            at = event_time_ms(entry.fields[settings.time_field.encode()], settings.time_format)
        except ValueError as exc:
            return f"time field {settings.time_field!r}: {exc}", 0
    return None, at // (settings.window_s * 1000) * (settings.window_s * 1000)


def score_entries(predictor: Predictor, entries: list[Entry], settings: StreamSettings) -> list[Result]:
    """One Result per entry: scored through `Predictor.score`, or a dead letter with the reason."""
    text_field = settings.text_field.encode()
    checked = [_checked(e, settings) for e in entries]
    problems, windows = [why for why, _ in checked], [window for _, window in checked]
    good = [i for i, why in enumerate(problems) if why is None]
    records = predictor.score([entries[i].fields[text_field] for i in good], settings.max_text_chars)
    taken = {"source_id", *result_names(predictor.labels)}
    key_field = settings.key_field.encode() if settings.key_field else None
    results = [dead_letter(e, why) if why else None for e, why in zip(entries, problems)]
    for i, record in zip(good, records):
        entry = entries[i]
        if record["error"]:
            results[i] = dead_letter(entry, record["error"])
            continue
        fields: list[tuple[str | bytes, bytes | str]] = [("source_id", entry.id)]
        fields += [(name, str(value)) for name, value in record.items() if name != "error"]
        fields += passed_through(entry, text_field, taken)
        key = entry.fields.get(key_field, b"").decode("utf-8", "replace") if key_field else ""
        results[i] = Result(entry.id, fields, record["label"], windows[i], key)
    return results  # type: ignore[return-value]  # every slot is filled above


def passed_through(entry: Entry, text_field: bytes, taken: set[str]) -> list[tuple[str | bytes, bytes | str]]:
    """The entry's other fields, unchanged; a name the result already uses gets an `input_` prefix."""
    out: list[tuple[str | bytes, bytes | str]] = []
    for name, value in entry.fields.items():
        if name == text_field:
            continue
        text_name = name.decode("utf-8", "replace")
        out.append((f"input_{text_name}" if text_name in taken else name, value))
    return out


def dead_letter(entry: Entry, reason: str) -> Result:
    return Result(entry.id, [("source_id", entry.id), ("reason", reason), *entry.fields.items()])


# -- Ray: consumer actors and their supervisor ----------------------------------------------------


class StreamConsumer:
    """A Ray actor holding the model. `run` loops until `stop`; the actor is threaded so that
    `stop` is answered while `run` works."""

    def __init__(self, bundle: ModelBundle, settings: StreamSettings, name: str):
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        self.settings, self.name = settings, name
        self.predictor = Predictor(bundle, device="cuda" if settings.use_gpu else "cpu")
        self.stopping = threading.Event()

    def run(self) -> None:
        broker = open_broker(self.settings, self.name, self.stopping)
        try:
            while not self.stopping.is_set():
                entries = broker.read(self.settings.batch_size, self.settings.block_ms)
                if not entries:
                    continue
                # Committed also when stopping: the batch in flight is finished.
                broker.commit(score_entries(self.predictor, entries, self.settings))
        finally:
            broker.close()

    def stop(self) -> None:
        self.stopping.set()

    def process(self) -> tuple[str, int]:
        """Node and process id: a restarted actor runs in a new process (Ray's own way of saying
        so, `was_current_actor_reconstructed`, goes through a deprecated state API)."""
        return ray.get_runtime_context().get_node_id(), os.getpid()


@dataclass
class StreamSummary:
    scored: int
    dead_lettered: int
    pending: int | None
    restarted_consumers: int
    seconds: float
    totals_lost: bool = False  # Redis lost its totals (restarted without persistence): counts are a floor
    late: int = 0  # scored, but older than the counts keep behind the stream's latest window: in no window
    alerts: int = 0
    webhook: str = ""  # what the webhook delivered, when there is one

    def line(self) -> str:
        rate = (self.scored + self.dead_lettered) / self.seconds if self.seconds else 0.0
        late = f"; {self.late} scored late, older than the counts keep behind the latest window, counted in no window"
        lost = (
            "; Redis lost its totals during the run (a restart without persistence?): the counts add what this "
            "command saw before and after, and may miss the entries committed just before the loss"
        )
        return (
            f"scored {self.scored}, dead-lettered {self.dead_lettered}, still pending {self.pending}, "
            f"consumers restarted {self.restarted_consumers}, {self.seconds:.1f} s, {rate:,.0f} entries/s"
            + (late if self.late else "")
            + (f"; {self.alerts} alert(s) raised" if self.alerts else "")
            + (f"; {self.webhook}" if self.webhook else "")
            + (lost if self.totals_lost else "")
        )


TOTALS = ("scored", "dead_lettered", "late", "alerts")


class RunTotals:
    """This run's counts from the broker's totals, which outlive consumers and are committed with
    their entries. A total that falls means the broker lost them (Redis restarted without
    persistence): what was seen before is carried over, and the loss is said."""

    def __init__(self, at_start: dict[str, int]):
        self.base = {name: at_start.get(name, 0) for name in TOTALS}
        self.seen = dict(self.base)
        self.carried = dict.fromkeys(TOTALS, 0)
        self.lost = False

    def update(self, totals: dict[str, int]) -> dict[str, int]:
        for name in TOTALS:
            now = totals.get(name, 0)
            if now < self.seen[name]:
                self.lost = True
                self.carried[name] += self.seen[name] - self.base[name]
                self.base[name] = 0
            self.seen[name] = now
        return {name: self.carried[name] + self.seen[name] - self.base[name] for name in TOTALS}


class StreamRunner:
    """Starts `consumers` actors on one consumer group. An actor that dies is restarted by Ray and
    its `run` retried there (max_restarts and max_task_retries unlimited); the entries it held are
    taken over by whichever consumer claims them first."""

    def __init__(self, model: str, settings: StreamSettings, stop: threading.Event | None = None):
        self.settings = settings
        bundle = load_bundle(model)  # a broken bundle fails here, before Ray starts
        self.broker = open_broker(settings, "ray-sentiment-driver", stop)
        self.broker.ensure_group()  # also fails fast, with a clear message, when Redis is unreachable
        self.totals = RunTotals(self.broker.totals())
        self.started = time.perf_counter()
        ensure_ray()
        total_cpus = ray.cluster_resources().get("CPU", 1.0)
        actor = ray.remote(StreamConsumer).options(
            max_restarts=-1,
            max_task_retries=-1,
            max_concurrency=3,
            num_cpus=1.0 if settings.use_gpu else min(1.0, total_cpus / settings.consumers),
            num_gpus=1 if settings.use_gpu else 0,
        )
        # Through the object store, so no node needs the model directory; held here for as long as
        # the actors live, since Ray rebuilds a restarted actor from it.
        self.bundle_ref = ray.put(bundle)
        for_actors = dataclasses.replace(settings, broker=with_password(settings.broker), alert_webhook=None)
        self.actors = [actor.remote(self.bundle_ref, for_actors, f"consumer-{i}") for i in range(settings.consumers)]
        self.processes = ray.get([a.process.remote() for a in self.actors])  # every model loaded: a failure shows here
        self.runs = [a.run.remote() for a in self.actors]
        self.webhook = None
        if settings.alert_webhook:  # sent from this process, which alone holds the URL
            from .webhook import WebhookSender  # Redis's: imported only when asked for

            self.webhook = WebhookSender(settings.alert_webhook, with_password(settings.broker), settings.output_stream)
            self.webhook.start()

    def poll(self, timeout: float = 1.0) -> None:
        """Wait up to `timeout` s; a consumer that raised, or that Ray could not restart, ends the run."""
        done, _ = ray.wait(self.runs, num_returns=1, timeout=timeout)
        for ref in done:
            try:
                ray.get(ref)
            except RayActorError as exc:
                raise RaySentimentError(
                    f"a stream consumer died and could not be restarted: {user_message(exc)}"
                ) from None
            except RayTaskError as exc:  # the consumer raised: retrying would raise again
                cause = user_cause(exc)  # the broker refused (BrokerError), say
                if cause is None:  # a bug: the CLI reports it as one
                    raise
                raise RaySentimentError(f"a stream consumer failed: {user_message(cause)}") from None
            self.runs.remove(ref)  # returned: only after a stop

    def progress(self) -> dict:
        """This run's scored and dead-lettered entries so far; called often, so that a loss of the
        broker's totals is seen."""
        return self.totals.update(self.broker.totals())

    def restarted_consumers(self) -> int:
        """Consumers now running as a restarted actor (Ray rebuilt them after a failure): the ones
        answering from another process than at the start."""
        calls = {a.process.remote(): first for a, first in zip(self.actors, self.processes)}
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=10)
        return sum(ray.get(call) != calls[call] for call in ready)

    def stop(self, timeout: float = 120.0) -> StreamSummary:
        """Ask every actor to finish its batch in flight, wait for them, and sum up from the broker."""
        restarted = self.restarted_consumers()
        for actor in self.actors:
            actor.stop.remote()
        ray.wait(self.runs, num_returns=len(self.runs), timeout=timeout)
        for actor in self.actors:
            ray.kill(actor)
        done = self.progress()
        seconds = time.perf_counter() - self.started
        pending = self.broker.pending()
        summary = StreamSummary(
            done["scored"],
            done["dead_lettered"],
            pending,
            restarted,
            seconds,
            self.totals.lost,
            late=done["late"],
            alerts=done["alerts"],
        )
        if self.webhook:
            summary.webhook = self.webhook.close()
        self.broker.close()
        return summary


def run_until_signalled(model: str, settings: StreamSettings, report_every_s: float = 10.0) -> StreamSummary:
    """The `stream` command: run until SIGTERM or SIGINT, then finish the batches in flight."""
    stop = threading.Event()
    stop_on_signals(stop)  # while connecting to Redis and loading the model
    runner = StreamRunner(model, settings, stop)
    stop_on_signals(stop)  # again: ray.init replaced the SIGTERM handler
    try:
        watch(runner, stop, settings=settings, report_every_s=report_every_s)
    finally:
        summary = runner.stop()
    return summary


def watch(runner: StreamRunner, stop: threading.Event, *, settings: StreamSettings, report_every_s: float) -> None:
    print(
        f"scoring {settings.input_stream} → {settings.output_stream} with {settings.consumers} consumer(s) "
        f"in group {settings.group}; SIGTERM or Ctrl-C stops",
        flush=True,
    )
    last_report = time.monotonic()
    while not stop.is_set():
        runner.poll(timeout=0.5)
        done = runner.progress()
        if time.monotonic() - last_report >= report_every_s:
            last_report = time.monotonic()
            print(f"scored {done['scored']}, dead-lettered {done['dead_lettered']}", flush=True)
