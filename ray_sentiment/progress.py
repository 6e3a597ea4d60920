"""Progress of long commands, shown by the driver whatever process does the work.

Train workers and scoring actors put small events on a `ray.util.queue.Queue`; a thread on the
driver drains it and draws one display: a tqdm bar on a terminal, else a plain line every
PLAIN_EVERY_S seconds (CI logs, `ray job logs`), plus the lines that are always printed (one per
epoch). Workers never print, so the same lines read the same locally, under `ray job submit`,
and with Ray's worker output hidden.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

PLAIN_EVERY_S = 10.0  # without a terminal: a progress line at most this often
SEND_EVERY_S = 1.0  # a worker sends counts at most this often
POLL_S = 0.5


@dataclass
class Update:
    """`done` of `total` units (rows, batches) of a task named `what`; total None: unknown."""

    what: str
    done: int
    total: int | None = None
    unit: str = "rows"
    rate_scale: float = 1.0  # units per counted unit, e.g. samples per batch over all workers
    add: bool = False  # `done` adds to the count (several actors) rather than replacing it


@dataclass
class Line:
    """Printed as is, above the bar: an epoch's result."""

    text: str


class Reporter:
    """The sending side, picklable into Ray workers and actors. Counts are batched: at most one
    send per SEND_EVERY_S, so even a per-batch call costs almost nothing."""

    def __init__(self, queue) -> None:
        self.queue, self._pending, self._sent = queue, 0, 0.0

    def line(self, text: str) -> None:
        self._put(Line(text))

    def update(self, what: str, done: int, total: int | None = None, *, unit: str = "rows", scale: float = 1.0) -> None:
        now = time.monotonic()
        if now - self._sent >= SEND_EVERY_S or (total is not None and done >= total):
            self._sent = now
            self._put(Update(what, done, total, unit, scale))

    def add(self, what: str, count: int, unit: str = "rows") -> None:
        """`count` more units done by this process; several processes may add to one count."""
        self._pending += count
        now = time.monotonic()
        if now - self._sent >= SEND_EVERY_S:
            self._sent, pending, self._pending = now, self._pending, 0
            self._put(Update(what, pending, None, unit, add=True))

    def _put(self, event) -> None:
        with contextlib.suppress(Exception):  # progress must never fail the work
            self.queue.put_nowait(event)

    def __getstate__(self):
        return {"queue": self.queue}

    def __setstate__(self, state):
        self.__init__(state["queue"])


class LocalQueue:
    """The three calls of Ray's Queue that progress uses, for work in the driver's own process."""

    def __init__(self) -> None:
        self._events: collections.deque = collections.deque()

    def put_nowait(self, event) -> None:
        self._events.append(event)

    def qsize(self) -> int:
        return len(self._events)

    def get_nowait_batch(self, n: int) -> list:
        return [self._events.popleft() for _ in range(n)]


class Display:
    """The drawing side, on the driver."""

    def __init__(self, stream=None, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.bar = None
        self.what: str | None = None
        self.done, self.started, self.last_plain = 0, time.monotonic(), 0.0
        self.total: int | None = None
        self.scale, self.unit = 1.0, "rows"

    def show(self, event) -> None:
        if isinstance(event, Line):
            if self.bar is not None:
                self.bar.write(event.text, file=self.stream)
            else:
                print(event.text, file=self.stream, flush=True)
            return
        if event.what != self.what:
            self._start(event)
        self.done = self.done + event.done if event.add else event.done
        if event.total is not None:
            self.total = event.total
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.n = self.done
            if self.scale != 1:
                self.bar.set_postfix_str(f"{self._rate() * self.scale:,.0f} samples/s", refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self.last_plain >= PLAIN_EVERY_S:
            self.last_plain = time.monotonic()
            print(self.plain(), file=self.stream, flush=True)

    def _start(self, event: Update) -> None:
        self.close()
        self.what, self.done, self.total, self.unit = event.what, 0, event.total, event.unit
        self.scale, self.started, self.last_plain = event.rate_scale, time.monotonic(), time.monotonic()
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=event.total, desc=event.what, unit=event.unit, leave=False, file=self.stream)

    def plain(self) -> str:
        """`what: done/total (pct) rate unit/s, ETA m:ss`, the same facts a bar shows."""
        rate = self._rate()
        parts = [f"{self.what}: {self.done:,}" + (f"/{self.total:,}" if self.total else "")]
        if self.total:
            parts.append(f"({100 * self.done / self.total:.0f}%)")
        if self.scale == 1:
            parts.append(f"{rate:,.{0 if rate >= 10 else 2}f} {self.unit}/s")
        else:
            parts.append(f"{rate * self.scale:,.0f} samples/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        return " ".join(parts)

    def _rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.what = None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@contextlib.contextmanager
def progress(display: Display | None = None, *, here: bool = False):
    """A Reporter for the work started inside the block; its events are drawn until the block
    ends, and those still queued then are drawn before it returns. `here`: the work runs in this
    process, so the events need no Ray."""
    if here:
        queue: Any = LocalQueue()
    else:
        from ray.util.queue import Queue

        queue = Queue(actor_options={"num_cpus": 0})
    display = display or Display()
    stop = threading.Event()

    def drain() -> None:
        while True:
            finished = stop.is_set()
            with contextlib.suppress(Exception):
                for event in queue.get_nowait_batch(queue.qsize()):
                    display.show(event)
            if finished:
                return
            stop.wait(POLL_S)

    thread = threading.Thread(target=drain, name="progress", daemon=True)
    thread.start()
    try:
        yield Reporter(queue)
    finally:
        stop.set()
        thread.join()
        display.close()
        with contextlib.suppress(Exception):
            queue.shutdown()
