"""Dynamic batching for the HTTP replicas: the texts of concurrent requests go to the model in one
call. The call runs on a thread of its own (torch releases the GIL), so while it runs the event
loop keeps reading requests, and those that arrive meanwhile form the next batch. Under load
batches fill without a timer; a lone request is scored at once. Other work on the model (an
explanation) comes in short steps that run only when no batch waits."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Batcher:
    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_texts: int, wait_s: float = 0.0):
        """`predict` maps texts to probabilities; a batch holds at most `max_texts` texts (one
        request may hold more, and is then a batch of its own); `wait_s` is how long a batch that
        is not full waits for more before it goes."""
        self.predict, self.max_texts, self.wait_s = predict, max_texts, wait_s
        self.waiting: deque[tuple[list[str], asyncio.Future]] = deque()
        self.steps: deque[tuple[Callable, tuple, asyncio.Future]] = deque()  # see `run`
        self.arrived = asyncio.Event()
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.worker: asyncio.Task | None = None

    async def score(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((texts, future))
        self._wake()
        return await future

    async def run(self, fn: Callable, *args):
        """`fn(*args)` on the model's thread, when no batch is waiting: batches go first, so a
        request waits at most for the one step already running. Long work comes in short steps."""
        future = asyncio.get_running_loop().create_future()
        self.steps.append((fn, args, future))
        self._wake()
        return await future

    def _wake(self) -> None:
        if self.worker is None:
            self.worker = asyncio.create_task(self._run())
        self.arrived.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            if not self.waiting and not self.steps:
                self.arrived.clear()
                continue
            if not self.waiting:
                fn, args, future = self.steps.popleft()
                if not self.steps:
                    self.arrived.clear()
                try:
                    result = await loop.run_in_executor(self.thread, fn, *args)
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
                    continue
                if not future.done():
                    future.set_result(result)
                continue
            if self.wait_s and sum(len(t) for t, _ in self.waiting) < self.max_texts:
                await asyncio.sleep(self.wait_s)
            batch = [self.waiting.popleft()]
            size = len(batch[0][0])
            while self.waiting and size + len(self.waiting[0][0]) <= self.max_texts:
                size += len(self.waiting[0][0])
                batch.append(self.waiting.popleft())
            if not self.waiting and not self.steps:
                self.arrived.clear()
            texts = [t for request, _ in batch for t in request]
            try:
                proba = await loop.run_in_executor(self.thread, self.predict, texts)
            except Exception as exc:  # every request of the batch gets it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for request, future in batch:
                if not future.done():  # a request whose client gave up is cancelled
                    future.set_result(proba[start : start + len(request)])
                start += len(request)

    def close(self) -> None:
        if self.worker:
            self.worker.cancel()
        self.thread.shutdown(wait=False)
