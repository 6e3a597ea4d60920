"""The serve replicas' batcher, on a real event loop with a model stand-in that records its calls."""

import asyncio
import json
import threading
import time

import numpy as np
import pytest

from ray_sentiment.serving.batcher import Batcher
from ray_sentiment.serving.http_api import EXPLAIN_IN_FLIGHT, SentimentApp
from ray_sentiment.settings import ServeSettings


class Model:
    """Probabilities that encode each text (its length), and the batches it was called with."""

    def __init__(self, seconds: float = 0.02, fail_on: str | None = None):
        self.seconds, self.fail_on, self.calls = seconds, fail_on, []

    def __call__(self, texts: list[str]) -> np.ndarray:
        assert threading.current_thread() is not threading.main_thread(), "the model must not block the loop"
        self.calls.append(list(texts))
        time.sleep(self.seconds)
        if self.fail_on in texts:
            raise ValueError(f"cannot score {self.fail_on}")
        return np.array([[len(t), 0.0] for t in texts], dtype=np.float32)


def run(coroutine):
    return asyncio.run(coroutine)


def test_each_request_gets_its_own_rows_and_requests_arriving_during_a_call_share_the_next():
    model = Model()
    batcher = Batcher(model, max_texts=100)

    async def main():
        first = asyncio.create_task(batcher.score(["a"]))
        await asyncio.sleep(0.005)  # the first call is running: the next ten wait for it
        rest = [asyncio.create_task(batcher.score(["b" * i] * i)) for i in range(1, 11)]
        return await first, await asyncio.gather(*rest)

    first, rest = run(main())
    assert first.tolist() == [[1, 0]]
    for i, rows in enumerate(rest, start=1):
        assert rows[:, 0].tolist() == [i] * i
    assert [len(c) for c in model.calls] == [1, 55]  # no timer: the second batch formed meanwhile


def test_a_batch_holds_at_most_max_texts_and_a_larger_request_goes_alone():
    model = Model()
    batcher = Batcher(model, max_texts=10)

    async def main():
        blocker = asyncio.create_task(batcher.score(["x"]))
        await asyncio.sleep(0.005)
        waiting = [batcher.score(["y"] * 6), batcher.score(["z"] * 6), batcher.score(["w"] * 25)]
        return await blocker, await asyncio.gather(*waiting)

    run(main())
    assert [len(c) for c in model.calls] == [1, 6, 6, 25]


def test_without_batching_each_request_is_a_call_of_its_own():
    model = Model(seconds=0.001)
    batcher = Batcher(model, max_texts=0)

    async def main():
        return await asyncio.gather(*(batcher.score(["t"] * 2) for _ in range(5)))

    run(main())
    assert [len(c) for c in model.calls] == [2] * 5


def test_a_failing_call_fails_its_requests_only_and_the_next_batch_is_scored():
    model = Model(fail_on="bad")
    batcher = Batcher(model, max_texts=100)

    async def main():
        blocker = asyncio.create_task(batcher.score(["ok"]))
        await asyncio.sleep(0.005)
        doomed = asyncio.gather(batcher.score(["bad"]), batcher.score(["fine"]), return_exceptions=True)
        results = await doomed
        return await blocker, results, await batcher.score(["after"])

    blocker, results, after = run(main())
    assert blocker.tolist() == [[2, 0]]
    assert all(isinstance(r, ValueError) for r in results)
    assert after.tolist() == [[5, 0]]


def test_a_request_whose_client_gave_up_does_not_disturb_the_others():
    model = Model(seconds=0.05)
    batcher = Batcher(model, max_texts=100)

    async def main():
        blocker = asyncio.create_task(batcher.score(["one"]))
        await asyncio.sleep(0.005)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.score(["gone"]), 0.01)
        return await blocker, await batcher.score(["three"])

    blocker, later = run(main())
    assert blocker.tolist() == [[3, 0]] and later.tolist() == [[5, 0]]


def test_long_work_runs_in_steps_and_a_plain_request_waits_for_one_step_at_most():
    """Three explanations of four steps each are under way when a plain request comes: it is
    scored after the one step in progress, before the eleven others."""
    model, log = Model(), []
    batcher = Batcher(lambda texts: log.append("batch") or model(texts), max_texts=100)

    def step(name: str, i: int) -> int:
        log.append(f"{name}{i}")
        time.sleep(0.02)
        return i

    async def explanation(name: str):
        return [await batcher.run(step, name, i) for i in range(4)]

    async def main():
        long = [asyncio.create_task(explanation(name)) for name in "abc"]
        await asyncio.sleep(0.01)  # a0 is running, b0 and c0 wait
        plain = await batcher.score(["a"])
        return await asyncio.gather(*long), plain

    steps, plain = run(main())
    assert steps == [[0, 1, 2, 3]] * 3 and plain.tolist() == [[1, 0]]
    assert log[:2] == ["a0", "batch"] and sorted(log[2:]) == sorted(f"{n}{i}" for n in "abc" for i in range(4))[1:]


def test_explanations_past_the_limit_per_replica_get_503_at_once_and_plain_requests_go_on():
    async def score(texts):
        return np.array([[0.25, 0.75]] * len(texts), dtype=np.float32)

    async def main():
        release = asyncio.Event()

        async def explain(texts):
            await release.wait()
            return [{"label": "b", "tokens": []} for _ in texts]

        summary = {"name": "m", "version": "v", "labels": ["a", "b"]}
        app = SentimentApp(
            score,
            summary=summary,
            key=None,
            settings=ServeSettings(model="m"),
            docs={"openapi": {}, "html": ""},
            explain=explain,
        )

        async def post(body: dict) -> tuple[int, dict, dict]:
            raw, sent = json.dumps(body).encode(), []
            scope = {"type": "http", "path": "/v1/sentiment", "method": "POST", "headers": []}

            async def receive():
                return {"type": "http.request", "body": raw, "more_body": False}

            async def send(message):
                sent.append(message)

            await app(scope, receive, send)
            headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
            return sent[0]["status"], headers, json.loads(sent[1]["body"])

        held = [asyncio.create_task(post({"texts": ["x"], "explain": True})) for _ in range(EXPLAIN_IN_FLIGHT)]
        await asyncio.sleep(0.01)
        refused = await asyncio.wait_for(post({"texts": ["x"], "explain": True}), 5)
        plain = await post({"texts": ["x"]})
        release.set()
        return refused, plain, await asyncio.gather(*held)

    refused, plain, held = run(main())
    assert refused[0] == 503 and refused[1]["retry-after"] == "1"
    assert refused[2]["detail"] == f"busy: {EXPLAIN_IN_FLIGHT} explanations in progress; retry shortly"
    assert plain[0] == 200 and plain[2]["results"][0]["label"] == "b"
    assert [status for status, _, _ in held] == [200] * EXPLAIN_IN_FLIGHT
