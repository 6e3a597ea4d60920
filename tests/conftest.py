import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("RAY_SENTIMENT_DATASETS", ROOT.parent / "shared" / "datasets"))
EXAMPLES = ROOT / "examples" / "train.csv"
EXAMPLES_TEST = ROOT / "examples" / "test.csv"


def dataset(relative: str) -> Path:
    path = DATASETS / relative
    if not path.is_file():
        pytest.fail(f"dataset {path} not found; set RAY_SENTIMENT_DATASETS to the shared datasets folder")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster for the whole session, shut down even when tests fail."""
    import ray

    from ray_sentiment.runtime import ensure_ray, quiet_ray_data

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=2)
    quiet_ray_data()
    yield ray
    ray.shutdown()


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `ray-sentiment ARGS` in its own process group; the whole group is killed on timeout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray_sentiment.cli", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"ray-sentiment {' '.join(args)} ran past {timeout}s\n{out}\n{err}")
    finally:
        try:  # anything the command left behind in its group (Ray daemons) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
