"""The Serve app over real HTTP, on a real local Ray, on a free port."""
import json
import os
import signal
import threading
import time
import types

import numpy as np
import pytest
import requests

from conftest import ROOT, SAMPLE_TEXTS, actor_pids, cli_process, free_port, wait_healthy, write_random_bundle
from ray_sentiment import Predictor
from ray_sentiment.errors import ConfigError
from ray_sentiment.serve import API_KEY_ENV, ServeSettings, app_builder, build, start

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_random_bundle(tmp_path_factory.mktemp("model") / "bundle")[0]


@pytest.fixture(scope="module")
def server(ray_local, bundle):
    from ray import serve

    url = start(build(ServeSettings(model=str(bundle))), port=free_port())
    wait_healthy(url)
    yield url
    serve.shutdown()


def post(url: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, (bytes, str, types.GeneratorType)) else json.dumps(body)
    return requests.post(f"{url}/v1/sentiment", data=data, timeout=60,
                         headers={"Content-Type": "application/json", **kwargs.pop("headers", {})}, **kwargs)


def test_results_match_the_predictor_in_input_order(server, bundle):
    texts = SAMPLE_TEXTS + ["the update broke everything", "ok"]
    response = post(server, {"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "bundle" and len(body["model"]["version"]) == 12
    predictor = Predictor.load(bundle)
    expected = predictor.predict_proba(texts)
    got = np.array([[r["scores"][label] for label in predictor.labels] for r in body["results"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [r["label"] for r in body["results"]] == predictor.predict(texts)
    assert [r["confidence"] for r in body["results"]] == pytest.approx(expected.max(axis=1).tolist(), abs=1e-6)


def chunks(total: int, size: int = 64 * 1024):
    sent = 0
    yield b'{"texts": ["'
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'"]}'


BAD_REQUESTS = {
    "malformed JSON": (b'{"texts": ["a"', 422, "body is not valid JSON"),
    "not UTF-8": (b'{"texts": ["\xff\xfe"]}', 422, "body is not valid JSON"),
    "no body": (b"", 422, "body is not valid JSON"),
    "a list, not an object": (["a"], 422, 'body must be a JSON object with a "texts" list'),
    "texts missing": ({}, 422, 'body must be a JSON object with a "texts" list'),
    "texts not a list": ({"texts": "hello"}, 422, "must be a list of 1 to 1,000 strings"),
    "empty list": ({"texts": []}, 422, "must be a list of 1 to 1,000 strings"),
    "null item": ({"texts": ["ok", None]}, 422, "texts[1]: text is null"),
    "number item": ({"texts": [5]}, 422, "texts[0]: text is int, not a string"),
    "empty text": ({"texts": ["ok", "  "]}, 422, "texts[1]: text is empty"),
    "text over 5,000 characters": ({"texts": ["a" * 5001]}, 422, "texts[0] has 5,001 characters; at most 5,000"),
    "1,001 texts": ({"texts": ["a"] * 1001}, 413, "1,001 texts in one request; at most 1,000"),
    "body over 1 MiB": ({"texts": ["a" * 4000] * 300}, 413, "request body over 1,048,576 bytes"),
    "chunked body over 1 MiB": (chunks(2 << 20), 413, "request body over 1,048,576 bytes"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_their_status_and_the_next_request_succeeds(server, case):
    body, status, detail = BAD_REQUESTS[case]
    response = post(server, body)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert post(server, {"texts": ["still fine"]}).status_code == 200


def test_health_model_and_docs(server):
    assert requests.get(f"{server}/healthz", timeout=10).json() == {"status": "ok"}
    info = requests.get(f"{server}/v1/model", timeout=10).json()
    assert info["labels"] == ["negative", "neutral", "positive"] and info["preset"] == "test"
    assert requests.get(f"{server}/docs", timeout=10).status_code == 200
    assert "/v1/sentiment" in requests.get(f"{server}/openapi.json", timeout=10).json()["paths"]


def test_api_key_guards_v1_but_not_healthz(server, bundle, monkeypatch):
    from ray import serve

    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    serve.run(build(ServeSettings(model=str(bundle))), name="secured", route_prefix="/secured")
    url = f"{server}/secured"
    try:
        wait_healthy(url)
        assert post(url, {"texts": ["hi"]}).status_code == 401
        assert post(url, {"texts": ["hi"]}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert requests.get(f"{url}/v1/model", timeout=10).status_code == 401
        assert post(url, {"texts": ["hi"]}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        serve.delete("secured")


def test_a_full_queue_sheds_load_with_503_and_retry_after(server, bundle):
    from ray import serve

    tiny = ServeSettings(model=str(bundle), batching=False, max_ongoing_requests=1, max_queued_requests=1)
    serve.run(build(tiny), name="tiny", route_prefix="/tiny")
    url = f"{server}/tiny"
    try:
        wait_healthy(url)
        statuses, headers = [], []

        def call():
            response = post(url, {"texts": ["a long comment about the app " * 20] * 1000})
            statuses.append(response.status_code)
            headers.append(response.headers.get("Retry-After"))

        threads = [threading.Thread(target=call) for _ in range(16)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1
        assert all(h == "1" for s, h in zip(statuses, headers) if s == 503)
        assert post(url, {"texts": ["after the rush"]}).status_code == 200
    finally:
        serve.delete("tiny")


def test_a_model_replica_killed_under_traffic_is_replaced(server):
    outcomes, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            started = time.monotonic()
            try:
                outcomes.append((post(server, {"texts": ["steady traffic"]}).status_code, time.monotonic() - started))
            except requests.RequestException as exc:
                outcomes.append((type(exc).__name__, time.monotonic() - started))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    [t.start() for t in threads]
    try:
        time.sleep(1)
        [victim] = actor_pids("ServeReplica:sentiment:SentimentModel")
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(1)
            if actor_pids("ServeReplica:sentiment:SentimentModel") and outcomes[-1][0] == 200:
                break
    finally:
        stop.set()
        [t.join(timeout=90) for t in threads]
    assert not any(t.is_alive() for t in threads), "a request hung"
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {200, 503}, statuses  # never a 500, never a client-side timeout
    assert statuses[-1] == 200 and statuses.count(200) > 10
    assert max(seconds for _, seconds in outcomes) < 65  # none past the model timeout (30 s) by much


def test_the_serve_config_file_is_valid_and_its_builder_takes_its_args(bundle):
    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "jobs" / "serve.yaml").read_text()))
    [application] = config.applications
    assert application.import_path == "ray_sentiment.serve:app_builder"
    app = app_builder({**application.args, "model": str(bundle), "replicas": [1, 2]})
    assert isinstance(app, serve.Application)
    with pytest.raises(ConfigError, match="unknown args .*: colour"):
        app_builder({"model": str(bundle), "colour": "red"})


def test_settings_refuse_a_batch_smaller_than_a_request(bundle):
    with pytest.raises(ConfigError, match="--max-batch-size counts texts and must be at least 1,000"):
        ServeSettings(model=str(bundle), max_batch_size=100)


def test_serve_command_prints_the_url_answers_and_stops_on_sigterm(bundle):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", API_KEY_ENV)}
    with cli_process("serve", "--model", str(bundle), "--port", str(port), env=env) as proc:
        wait_healthy(f"http://127.0.0.1:{port}")
        assert post(f"http://127.0.0.1:{port}", {"texts": ["hello"]}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert f"at http://127.0.0.1:{port}" in out and out.strip().endswith("stopped")
