"""End to end on a real Ray cluster started with `ray start --head`, driven as a user drives one:
`ray job submit` for training and scoring, `serve deploy` for the endpoint, outputs in a bucket
(an S3-compatible server), token authentication on. The cluster and the server are ended, by
process group, whatever happens."""

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import requests
import yaml
from cluster import BIN, TIMEOUT_S, HeadNode

from ray_sentiment import Predictor

from conftest import EXAMPLES_TEST, ROOT, RedisServer, free_port, wait_healthy

pytestmark = pytest.mark.e2e


class JobsHead(HeadNode):
    """A one-node cluster (tests/cluster.py): 127.0.0.1, token authentication, its own temp folder
    and free ports. `env` is what `ray job submit` and `serve deploy` need."""

    def run(self, *command: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{' '.join(command)} ran past {timeout}s\n{exc.stdout}\n{exc.stderr}")

    def submit(self, submission_id: str, *entrypoint: str, options: tuple = ()) -> subprocess.CompletedProcess:
        return self.run(
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            self.dashboard,
            "--working-dir",
            ".",
            "--submission-id",
            submission_id,
            *options,
            "--",
            *entrypoint,
        )

    def job_status(self, submission_id: str) -> str:
        """From the jobs REST API, which wants the cluster's token like every client."""
        answer = requests.get(
            f"{self.dashboard}/api/jobs/{submission_id}",
            timeout=30,
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        answer.raise_for_status()
        return answer.json()["status"]

    def job_logs(self, submission_id: str) -> str:
        result = self.run(str(BIN / "ray"), "job", "logs", "--address", self.dashboard, submission_id)
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def s3(session_s3):
    with pytest.MonkeyPatch.context() as env:  # this process reads the bucket too
        for key, value in session_s3.env.items():
            env.setenv(key, value)
        yield session_s3


@pytest.fixture(scope="module")
def head(s3):
    node = JobsHead(s3.env)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def trained(head, s3):
    """`jobs/train.py` on the example comments (shipped in the working dir), bundle and checkpoints to
    the bucket; the `seed` preset, since what is tested is the job, not the model."""
    model, checkpoints = s3.uri("models/example"), s3.uri("checkpoints")
    result = head.submit(
        "train-example",
        "python",
        "jobs/train.py",
        "--train",
        "examples/train.csv",
        "--output",
        model,
        "--storage-path",
        checkpoints,
        "--epochs",
        "2",
        "--preset",
        "seed",
    )
    return result, model, checkpoints


def test_train_job_writes_bundle_and_checkpoints_to_the_bucket(head, s3, trained):
    result, model, checkpoints = trained
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert head.job_status("train-example") == "SUCCEEDED"
    assert "bundle written to " + model in head.job_logs("train-example")
    predictor = Predictor.load(model)
    assert predictor.labels == ["negative", "neutral", "positive"]
    assert predictor.bundle.metrics["epochs_run"] == 2
    import pyarrow.fs as pafs

    stored = s3.filesystem().get_file_info(pafs.FileSelector(f"{s3.BUCKET}/checkpoints", recursive=True))
    assert any(f.base_name == "state.pt" for f in stored), [f.path for f in stored]


def test_score_job_scores_every_row_of_the_bucket(head, s3, trained):
    model = trained[1]
    assert trained[0].returncode == 0, "the training job failed; see the test above"
    texts = pd.read_csv(EXAMPLES_TEST)["text"].tolist()
    frame = pd.DataFrame({"id": np.arange(len(texts)), "text": texts})
    with s3.filesystem().open_output_stream(f"{s3.BUCKET}/comments/part-0.parquet") as f:
        frame.to_parquet(f, index=False)

    result = head.submit(
        "score-example",
        "python",
        "jobs/score.py",
        "--model",
        model,
        "--input",
        s3.uri("comments"),
        "--output",
        s3.uri("scored"),
        "--id-column",
        "id",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert head.job_status("score-example") == "SUCCEEDED"
    scored = pads.dataset(f"{s3.BUCKET}/scored", filesystem=s3.filesystem(), format="parquet").to_table()
    scored = scored.to_pandas().sort_values("id")
    assert scored["id"].tolist() == frame["id"].tolist()
    predictor = Predictor.load(model)
    expected = predictor.predict_proba(texts)
    got = scored[[f"p_{label}" for label in predictor.labels]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert scored["label"].tolist() == predictor.predict(texts)
    assert scored["error"].isna().all()


def test_serve_deploy_answers_over_http(head, s3, trained, tmp_path):
    model = trained[1]
    assert trained[0].returncode == 0, "the training job failed; see the test above"
    config = yaml.safe_load((ROOT / "jobs" / "serve.yaml").read_text())
    port = free_port()
    config["applications"][0]["args"].update(model=model, port=port)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    deployed = head.run(str(BIN / "serve"), "deploy", str(path), "--address", head.dashboard)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        url = f"http://127.0.0.1:{port}"

        def serve_status() -> str:
            status = head.run(str(BIN / "serve"), "status", "--address", head.dashboard)
            return f"\n{status.stdout}{status.stderr}"

        wait_healthy(url, TIMEOUT_S, serve_status)
        texts = ["I love the new update 😍", "the app keeps crashing, fix it 😡"]
        answer = requests.post(f"{url}/v1/sentiment", json={"texts": texts}, timeout=30)
        assert answer.status_code == 200, answer.text
        predictor = Predictor.load(model)
        for result, row in zip(answer.json()["results"], predictor.predict_proba(texts)):
            np.testing.assert_allclose([result[f"p_{label}"] for label in predictor.labels], row, atol=1e-6)
        assert requests.get(f"{url}/v1/model", timeout=10).json()["name"] == "example"
    finally:
        head.run(str(BIN / "serve"), "shutdown", "--address", head.dashboard, "-y")


def test_stream_job_scores_until_ray_job_stop_then_reports(head, trained, tmp_path):
    model = trained[1]
    assert trained[0].returncode == 0, "the training job failed; see the test above"
    redis = RedisServer(tmp_path)
    try:
        client = redis.client()
        texts = pd.read_csv(EXAMPLES_TEST)["text"].tolist()
        for text in texts:
            client.xadd("comments", {"text": text})
        # Ray gives a stopped job 3 s before SIGKILL; docs/deploy.md says to allow the consumers more.
        wait = '{"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "30"}}'
        submitted = head.submit(
            "stream-example",
            "python",
            "jobs/stream.py",
            "--model",
            model,
            "--redis",
            redis.url,
            "--input-stream",
            "comments",
            "--output-stream",
            "comments:scored",
            options=("--no-wait", "--runtime-env-json", wait),
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        deadline = time.monotonic() + TIMEOUT_S
        while client.xlen("comments:scored") < len(texts) and time.monotonic() < deadline:
            time.sleep(1)
        assert client.xlen("comments:scored") == len(texts), head.job_logs("stream-example")[-3000:]
        stopped = head.run(str(BIN / "ray"), "job", "stop", "--address", head.dashboard, "stream-example")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert head.job_status("stream-example") == "STOPPED"
        logs = head.job_logs("stream-example")
        assert f"scored {len(texts)}, dead-lettered 0, still pending 0" in logs, logs[-3000:]
    finally:
        redis.stop()


# Jobs that a user gets wrong: submission id, entrypoint, the message the job's log must give
BAD_JOBS = [
    (
        "bad-model",
        [
            "python",
            "jobs/score.py",
            "--model",
            "s3://ray-sentiment-test/no-such-model",
            "--input",
            "s3://ray-sentiment-test/comments",
            "--output",
            "s3://ray-sentiment-test/out",
        ],
        "ray-sentiment: error: model bundle s3://ray-sentiment-test/no-such-model is not a directory",
    ),
    (
        "bad-option",
        ["python", "jobs/train.py", "--output", "runs/x"],
        "error: the following arguments are required: --train",
    ),
]


def test_jobs_given_bad_arguments_fail_with_their_messages(head):
    """Submitted together (each mostly waits for its job to start), checked one by one."""
    with ThreadPoolExecutor(len(BAD_JOBS)) as pool:
        results = list(pool.map(lambda job: head.submit(job[0], *job[1]), BAD_JOBS))
    for (submission_id, _, message), result in zip(BAD_JOBS, results):
        assert result.returncode != 0, submission_id
        assert head.job_status(submission_id) == "FAILED"
        logs = head.job_logs(submission_id)
        assert message in logs, (submission_id, logs[-3000:])
        assert "Traceback" not in logs, submission_id


def test_jobs_api_refuses_a_wrong_token(head):
    wrong = {**head.env, "RAY_AUTH_TOKEN": "0" * 32}
    result = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", head.dashboard],
        env=wrong,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "token" in (result.stdout + result.stderr).lower()
