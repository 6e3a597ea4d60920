import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
from cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("RAY_SENTIMENT_DATASETS", ROOT.parent / "shared" / "datasets"))
EXAMPLES = ROOT / "examples" / "train.csv"
EXAMPLES_TEST = ROOT / "examples" / "test.csv"


# Three tiers, run in this order, each timed (printed at the end of the run):
#   unit         pure functions and refusals: starts no Ray, Redis or server, trains no model
#   integration  the shared session services: one local Ray, Redis, S3, bundles trained once
#   e2e          the product as a user runs it: the CLI on its own local Ray, `ray job submit`,
#                the README's walk-through
# A test that uses one of these fixtures is an integration test wherever it lives; a test that
# starts something otherwise (a CLI that starts its own Ray) carries its mark itself.
TIERS = ("unit", "integration", "e2e")
SERVICE_FIXTURES = {"ray_local", "redis_server", "s3_server", "airline_bundle"}
# `make test` runs two lanes at once (`--lane main` and `--lane side`), since either alone leaves
# about a quarter of this machine's 2 CPUs idle: the e2e tier, which shares nothing with the others,
# and before it the modules named here, which need only a Ray of their own; the rest in the main
# lane, where the e2e tests of the modules named last run at its end. Both sets even the lanes' times.
SIDE_LANE_MODULES = {"test_multinode.py", "test_pretrain.py"}
MAIN_LANE_E2E_MODULES = {"test_batch.py", "test_serve.py"}


def pytest_addoption(parser):
    parser.addoption("--lane", choices=("all", "main", "side"), default="all", help="run one lane of `make test`")


def tier(item) -> str:
    if item.get_closest_marker("e2e"):
        return "e2e"
    return "integration" if item.get_closest_marker("integration") else "unit"


def lane(item) -> str:
    if tier(item) == "e2e":
        return "main" if item.path.name in MAIN_LANE_E2E_MODULES else "side"
    return "side" if item.path.name in SIDE_LANE_MODULES else "main"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks added here
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if tier(item) == "unit" and SERVICE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)
        if tier(item) == "e2e" and "ray_local" in fixtures:
            raise pytest.UsageError(f"{item.nodeid}: an e2e test starts its own Ray; the session's is gone by then")
    wanted = config.getoption("lane")
    if wanted != "all":
        config.hook.pytest_deselected(items=[item for item in items if lane(item) != wanted])
        items[:] = [item for item in items if lane(item) == wanted]
    # Stable: each module's tests stay together within a tier, so its fixtures start once per tier.
    items.sort(key=lambda item: TIERS.index(tier(item)))


_tier_times: dict[str, list[float]] = {}  # tier -> [first start, last end, tests]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.monotonic()
    try:
        return (yield)
    finally:
        times = _tier_times.setdefault(tier(item), [started, started, 0])
        times[1], times[2] = time.monotonic(), times[2] + 1


def pytest_terminal_summary(terminalreporter):
    if not _tier_times:
        return
    terminalreporter.section("wall time per tier")
    for name in TIERS:
        if name in _tier_times:
            start, end, count = _tier_times[name]
            terminalreporter.write_line(f"{name:<12} {end - start:7.0f} s  {count:4d} tests")


def pytest_runtest_setup(item):
    """The session's Ray ends where the e2e tier begins: those tests start their own, and a local
    Ray left running beside them (its leftover actors included) slowed each of their commands."""
    ray = sys.modules.get("ray")
    if tier(item) == "e2e" and ray is not None and ray.is_initialized():
        ray.shutdown()


# Lines Ray writes on its own: process output "(RayTrainWorker pid=1)" or "(pid=gcs_server)", C++
# logs "[2026-… E 1 1] x.cc:1:", Python logs "2026-… WARNING x.py:1 --", and warnings; colours aside.
RAY_LINE = re.compile(
    r"^\((\w+ )?pid=\w+|^\[\d{4}-\d\d-\d\d [\d:,.]+ [IWEF] \d+ \d+\]|^\d{4}-\d\d-\d\d [\d:,.]+\s+(INFO|WARNING|DEBUG)\b"
    r"|Warning:|Progress bars disabled|Token authentication"
)
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def ray_lines(output: str) -> list[str]:
    return [line for line in COLOUR.sub("", output).splitlines() if RAY_LINE.search(line)]


def own_lines(output: str) -> list[str]:
    """The lines that are not Ray's own."""
    return [line for line in COLOUR.sub("", output).splitlines() if not RAY_LINE.search(line)]


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request):
    """Keeps the unit tier honest: a unit test that starts Ray fails, and says how to mark it.
    (Unit tests run first, so Ray is never already up when one runs.)"""
    yield
    ray = sys.modules.get("ray")
    if tier(request.node) == "unit" and ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this unit test started Ray: give it the ray_local fixture or @pytest.mark.integration")


def dataset(relative: str) -> Path:
    path = DATASETS / relative
    if not path.is_file():
        pytest.fail(f"dataset {path} not found; set RAY_SENTIMENT_DATASETS to the shared datasets folder")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster for the whole session, shut down even when tests fail."""
    import ray

    from ray_sentiment.runtime import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def serve_instance(ray_local):
    """One Serve instance for the module (as Ray's own Serve tests share one); a test that adds an
    application deletes it (serve.delete) when done."""
    from ray import serve

    yield serve
    serve.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_local) -> dict:
    """The environment that makes a `ray-sentiment` process join the session's Ray (RAY_ADDRESS, as
    under `ray job submit`) instead of starting its own: for CLI tests of a command's behaviour.
    Tests of quiet local start-up (e2e) leave it out."""
    return {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}


def actor_pids(class_prefix: str, besides: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Processes of this session's own Ray cluster running an actor of that class. Ray titles an
    actor's process "ray::ClassName"; looking among our descendants never finds another cluster's.
    `besides`: processes to leave out, e.g. an earlier test's actors that may still be ending."""
    import psutil

    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.pid in besides:
                continue
            if process.cmdline()[:1] and process.cmdline()[0].startswith(f"ray::{class_prefix}"):
                pids.append(process.pid)
        except psutil.Error:
            pass
    return pids


@contextlib.contextmanager
def cli_process(*args: str, env: dict | None = None):
    """`ray-sentiment ARGS` running in its own process group, for tests that signal it; the whole
    group (Ray's daemons included) is killed on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray_sentiment.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `ray-sentiment ARGS` to its end; on timeout the test fails. Its process group (Ray's
    daemons included) is killed either way."""
    with cli_process(*args, env={**os.environ, **(env or {})}) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"ray-sentiment {' '.join(args)} ran past {timeout}s\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """`ray-sentiment ARGS` as the console script calls it, in this interpreter, for commands and
    refusals that start no Ray: a fresh interpreter per case costs a second or more of imports.
    (That refusals come before Ray and torch load is tested in fresh interpreters, in test_cli.)"""
    from ray_sentiment.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["ray-sentiment", *args], code, out, err)


def wait_healthy(url: str, timeout: float = 120, explain=lambda: "") -> None:
    """Until GET url/healthz answers 200; else the test fails, with `explain()` appended."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not healthy after {timeout}s{explain()}")


def scoring_on_ray():
    """`score` (and `evaluate`) take Ray's path even for a small local input, which they would score
    in this process: the tests of the Ray Data pipeline itself. The environment is restored after."""
    from ray_sentiment.runtime import IN_PROCESS_ENV

    return mock.patch.dict(os.environ, {IN_PROCESS_ENV: "0"})


WORDS = ["love", "hate", "app", "update", "great", "broken", "😍", "😡", "!", "the", "is", "not", "so"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """n comments of 1 to 11 words drawn from WORDS."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A random-weights bundle (see write_random_bundle), one per test module."""
    return write_random_bundle(tmp_path_factory.mktemp("model") / "bundle")[0]


@pytest.fixture(scope="module")
def hybrid_bundle(tmp_path_factory):
    """A random-weights hybrid bundle: LSTM and linear model (see write_random_bundle)."""
    return write_random_bundle(tmp_path_factory.mktemp("model") / "hybrid", seed=1, hybrid=True)[0]


SAMPLE_TEXTS = ["I love this 😍", "worst update ever :(", "the app is out", "soooo good!!! #win", "meh " * 300]


def write_random_bundle(path: Path, seed: int = 0, hybrid: bool = False):
    """A small bundle with random weights: enough to check that every path gives the same numbers.
    A hybrid one also has a random linear model, weighted 0.4."""
    import torch

    from ray_sentiment.model.bundle import ModelBundle, save_bundle
    from ray_sentiment.model.lstm import SentimentLSTM
    from ray_sentiment.model.presets import ModelConfig
    from ray_sentiment.text.tokens import TokenizerConfig, build_vocab, count_tokens

    torch.manual_seed(seed)
    vocab = build_vocab(count_tokens(SAMPLE_TEXTS), 50)
    config = ModelConfig(
        num_classes=3,
        vocab_size=len(vocab),
        embed_dim=8,
        hidden_dim=16,
        dense_dim=8,
        bidirectional=True,
        pooling="last+max",
    )
    model = SentimentLSTM(config)
    bundle = ModelBundle(
        labels=["negative", "neutral", "positive"],
        vocab=vocab,
        model_config=config,
        tokenizer=TokenizerConfig(vocab_size=len(vocab), max_len=20),
        state_dict=model.state_dict(),
        preset="test",
        metrics={"note": "unit"},
    )
    if hybrid:
        bundle.linear, bundle.linear_weight = random_linear_model(seed), 0.4
    return Path(save_bundle(bundle, path)), model


def random_linear_model(seed: int = 0, coef_scale: float = 3.0):
    """A linear model of the real shapes (2^18 + 2^19 buckets, 3 classes) with random weights."""
    import numpy as np

    from ray_sentiment.model.linear import CHAR_BITS, WORD_BITS, LinearModel

    rng = np.random.default_rng(seed)
    return LinearModel(
        word_idf=rng.uniform(0, 3, 1 << WORD_BITS).astype(np.float32),
        char_idf=rng.uniform(0, 3, 1 << CHAR_BITS).astype(np.float32),
        coef=rng.normal(0, coef_scale, (3, (1 << WORD_BITS) + (1 << CHAR_BITS))).astype(np.float32),
        intercept=rng.normal(0, 1, 3).astype(np.float32),
    )


class RedisServer:
    """A real redis-server process on a free port, its data in `directory` (append-only file on, so a
    restart keeps the streams, as a production broker would)."""

    def __init__(self, directory: Path):
        import shutil

        if not shutil.which("redis-server"):
            pytest.fail("redis-server not found; install it (apt-get install redis-server)")
        self.port = free_port()
        self.directory, self.process = directory, None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits, as on a redeploy."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, password: str | None = None):
        import redis

        return redis.Redis(port=self.port, password=password)


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_server(module_redis):
    """The module's redis-server, emptied for this test (and started again if a test stopped it)."""
    if module_redis.process.poll() is not None:
        module_redis.start()
    module_redis.client().flushall()
    return module_redis


class S3Server:
    """A real S3-compatible HTTP server (moto's) on a free port, standing in for a cloud bucket.
    `env` is what clients (pyarrow, so Ray Data and Ray Train too) need to reach it."""

    BUCKET = "ray-sentiment-test"

    def __init__(self):
        import requests

        self.port = free_port()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        # Until it answers: refused while it starts, and on a busy machine it may accept the
        # connection and answer its first request (which loads moto's backends) seconds later.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(self.endpoint, timeout=10)
                break
            except requests.RequestException:
                time.sleep(0.05)
        else:
            self.stop()
            pytest.fail(f"moto_server did not answer on port {self.port}")
        self.filesystem().create_dir(self.BUCKET)

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            endpoint_override=self.endpoint,
            allow_bucket_creation=True,
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.BUCKET}/{key}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def session_s3():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_server(session_s3, monkeypatch):
    """The session's S3 server, its endpoint and credentials in this process's environment for
    this test. Tests share its bucket: each writes under keys of its own."""
    for key, value in session_s3.env.items():
        monkeypatch.setenv(key, value)
    return session_s3


@contextlib.contextmanager
def worker_killed_after_first_checkpoint(storage: Path):
    """Kills one Ray Train worker once the run under `storage` has registered a checkpoint (Ray
    Train writes its snapshot then: from then on a restarted worker group must resume from it).
    Yields a dict that holds the killed process id afterwards."""
    killed: dict = {}
    earlier = set(actor_pids("RayTrainWorker"))  # an earlier run's workers, which may still be ending

    def kill() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not list(storage.glob("*/checkpoint_manager_snapshot.json")):
            time.sleep(0.2)
        for pid in reversed(actor_pids("RayTrainWorker", besides=earlier)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    yield killed
    killer.join(timeout=5)
    assert "pid" in killed, "the test never found a worker to kill"


@pytest.fixture(scope="session")
def airline_bundle(tmp_path_factory):
    """An LSTM trained on the airline tweets' train split (3 small epochs, about 10 s): for tests
    that need a model that learned something, such as explanations and reports."""
    return train_airline_bundle(tmp_path_factory.mktemp("airline") / "bundle")


def train_airline_bundle(path: Path, epochs: int = 3) -> Path:
    import numpy as np
    import pandas as pd
    import torch

    from ray_sentiment.model.bundle import ModelBundle, save_bundle
    from ray_sentiment.model.lstm import SentimentLSTM
    from ray_sentiment.model.presets import ModelConfig
    from ray_sentiment.text.tokens import Encoder, TokenizerConfig, build_vocab, count_tokens
    from ray_sentiment.train.loop import train_epoch

    torch.manual_seed(0)
    rows = pd.read_parquet(dataset("airline/tweets.parquet"), columns=["text", "label", "split"])
    rows = rows[rows["split"] == "train"]
    labels = sorted(rows["label"].unique())
    vocab = build_vocab(count_tokens(rows["text"].tolist()), 5000)
    tokenizer = TokenizerConfig(vocab_size=len(vocab), max_len=40)
    ids, lengths = Encoder(vocab, tokenizer.max_len)(rows["text"].tolist())
    y = rows["label"].map({label: i for i, label in enumerate(labels)}).to_numpy(np.int64)
    config = ModelConfig(num_classes=len(labels), vocab_size=len(vocab), embed_dim=32, hidden_dim=48, dense_dim=32)
    model = SentimentLSTM(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    # One thread: beside the other lane's work, two spinning OpenMP threads on 2 cores took 4x as long.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        train_epoch(
            model,
            optimizer,
            loss_fn=torch.nn.CrossEntropyLoss(),
            arrays=(ids, lengths, y),
            order=order,
            batch=64,
            steps=len(y) // 64,
            device="cpu",
        )
    torch.set_num_threads(threads)
    model.eval()
    bundle = ModelBundle(labels, vocab, config, tokenizer, model.state_dict(), preset="test", metrics={"note": "test"})
    return Path(save_bundle(bundle, path))


class chromium:
    """Debian's chromium and chromedriver, headless, with the page's console log kept."""

    def __init__(self, width: int):
        self.width = width

    def __enter__(self):
        import shutil

        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
        if not binary or not driver:
            pytest.fail("chromium and chromedriver not found; install them (apt-get install chromium chromium-driver)")
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={self.width},2400"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.browser = webdriver.Chrome(service=Service(driver), options=options)
        return self.browser

    def __exit__(self, *exc):
        self.browser.quit()


# Screenshots and other things a test leaves for a person to look at (kept after the run; ignored by git).
ARTIFACTS = Path(os.environ.get("RAY_SENTIMENT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
