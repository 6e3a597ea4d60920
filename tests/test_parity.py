"""One common test over every runtime (scikit-learn's habit): the same texts, bad ones included,
give the same labels, probabilities and refusal reasons through `predict`, `score`, `serve` and
`stream` as through `Predictor.score`. Each runtime runs for real: the CLI process, Ray Data
(and `score`'s path for a small local input, in this process), Ray Serve over HTTP, Redis Streams
with consumer actors."""

import contextlib
import functools
import json
import time

import numpy as np
import pandas as pd
import pytest
import requests

from ray_sentiment import Predictor
from ray_sentiment.scoring.score import score_parquet
from ray_sentiment.settings import ScoreSettings, ServeSettings, StreamSettings

from conftest import SAMPLE_TEXTS, free_port, run_cli, scoring_on_ray, wait_healthy

LIMIT = 60  # --max-text-chars in every runtime
# Texts every runtime can carry: good ones, and the bad ones a command line, a Parquet string
# column, a JSON body and a stream field can all hold.
TEXTS = [*SAMPLE_TEXTS[:4], "", "   ", "x" * (LIMIT + 1), "ok then", "y" * LIMIT]
FIELDS = ("label", "confidence", "p_negative", "p_neutral", "p_positive", "error")


def via_predict(bundle, texts, tmp_path, redis_server) -> list[dict]:
    result = run_cli("predict", "--model", str(bundle), "--max-text-chars", str(LIMIT), *texts)
    assert result.returncode == 2 and "3 of 9 texts could not be scored" in result.stderr, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def via_score(bundle, texts, tmp_path, redis_server, on_ray: bool = True) -> list[dict]:
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_parquet(tmp_path / "in.parquet")
    settings = ScoreSettings(str(bundle), str(tmp_path / "in.parquet"), str(tmp_path / "out"), max_text_chars=LIMIT)
    with scoring_on_ray() if on_ray else contextlib.nullcontext():
        score_parquet(settings)
    out = pd.read_parquet(tmp_path / "out").sort_values("id")
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in out[list(FIELDS)].to_dict("records")]


def via_serve(bundle, texts, tmp_path, redis_server) -> list[dict]:
    """Good texts in one request; each bad one alone, since a request with a bad text is a 422."""
    from ray import serve

    from ray_sentiment.serving.app import build, start

    port = free_port()
    start(build(ServeSettings(model=str(bundle), port=port, max_text_chars=LIMIT)), name="parity")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        records = []
        for text in texts:
            response = requests.post(f"{url}/v1/sentiment", json={"texts": [text]}, timeout=60)
            if response.status_code == 422:
                detail = response.json()["detail"]
                assert detail.startswith("texts[0]: "), detail
                records.append({"error": detail.removeprefix("texts[0]: ")})
            else:
                assert response.status_code == 200, response.text
                records.append({**response.json()["results"][0], "error": None})
        return records
    finally:
        serve.delete("parity")


def via_stream(bundle, texts, tmp_path, redis_server) -> list[dict]:
    from ray_sentiment.stream.runner import StreamRunner

    client = redis_server.client()
    ids = [client.xadd("comments", {"text": text}).decode() for text in texts]
    settings = StreamSettings(broker=redis_server.url, output_stream="scored", block_ms=200, max_text_chars=LIMIT)
    runner = StreamRunner(str(bundle), settings)
    try:
        deadline = time.monotonic() + 120
        while client.xlen("scored") + client.xlen("comments:dead-letter") < len(texts):
            assert time.monotonic() < deadline, runner.progress()
            runner.poll(timeout=0.2)
    finally:
        runner.stop()
    by_id = {}
    for _, fields in client.xrange("scored"):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        by_id[f["source_id"]] = {**{k: f[k] for k in FIELDS[:1]}, **{k: float(f[k]) for k in FIELDS[1:5]}}
        by_id[f["source_id"]]["error"] = None
    for _, fields in client.xrange("comments:dead-letter"):
        by_id[fields[b"source_id"].decode()] = {"error": fields[b"reason"].decode()}
    return [by_id[i] for i in ids]


RUNTIMES = {
    "predict": via_predict,
    "score": via_score,
    "score, in this process": functools.partial(via_score, on_ray=False),
    "serve": via_serve,
    "stream": via_stream,
}


@pytest.mark.parametrize("kind", ["lstm", "hybrid"])
@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_every_runtime_gives_the_predictors_labels_probabilities_and_reasons(
    runtime, kind, serve_instance, redis_server, bundle, hybrid_bundle, tmp_path
):
    """A hybrid's linear model runs in the tokenising tasks of `score`, in the Predictor elsewhere."""
    bundle = hybrid_bundle if kind == "hybrid" else bundle
    expected = Predictor.load(bundle, max_text_chars=LIMIT).score(TEXTS)
    assert [e["error"] for e in expected] == [None] * 4 + [
        "text is empty",
        "text is empty",
        f"text is {LIMIT + 1} characters, more than --max-text-chars {LIMIT}",
        None,
        None,
    ]
    got = RUNTIMES[runtime](bundle, TEXTS, tmp_path, redis_server)
    assert len(got) == len(TEXTS)
    for text, want, have in zip(TEXTS, expected, got):
        assert have["error"] == want["error"], text
        if want["error"] is None:
            assert have["label"] == want["label"], text
            np.testing.assert_allclose([have[k] for k in FIELDS[1:5]], [want[k] for k in FIELDS[1:5]], atol=1e-6)
        else:
            assert all(have.get(k) is None for k in FIELDS[:5]), (text, have)
