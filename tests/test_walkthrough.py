"""What a new user runs first, as they would run it: `make quickstart`, and the README's airline
walk-through copied out of README.md and run by bash. Both must print only our own lines."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, dataset, free_port, ray_lines

EPOCH_LINE = re.compile(r"^(pretrain )?epoch \d+/\d+ ")

pytestmark = pytest.mark.e2e


def run_group(command: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run in its own process group; once it ends or overruns (returncode -9), whatever it left
    running (Ray's daemons, a failed script's background jobs) is killed with it. Output goes to
    files, not pipes: a leftover process holding a pipe open kept the test waiting for the timeout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())


def test_make_quickstart_prints_at_most_30_lines_and_none_of_rays(tmp_path):
    venv = Path(sys.prefix)
    result = run_group(
        ["make", "-s", "-o", f"{venv}/.installed", "quickstart", f"VENV={venv}", f"RUN={tmp_path / 'example'}"],
        ROOT,
        dict(os.environ),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert ray_lines(output) == []
    lines = [line for line in output.splitlines() if not EPOCH_LINE.match(line)]
    assert len(lines) <= 30, output
    assert "bundle written to" in output and "macro recall" in output and '"label": "positive"' in output
    assert "ray-sentiment serve --model" in lines[-3] and "ray-sentiment stream --model" in lines[-2]


def readme_walkthrough() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Walk-through: the airline tweets") :]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start : section.index("\n```", start)]


def test_the_readme_airline_walkthrough_runs_as_written(tmp_path):
    script = readme_walkthrough()
    # train, evaluate, score, report, serve, stream, stream-stats, live
    assert script.count("ray-sentiment ") == 8, script
    redis_port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AIRLINE": str(dataset("airline/tweets.parquet")),
        "PORT": str(free_port()),
        "REDIS_PORT": str(redis_port),
        "LIVE_PORT": str(free_port()),
    }
    env.pop("RAY_ADDRESS", None)
    try:
        result = run_group(["bash", "-eo", "pipefail", "-c", script], tmp_path, env, timeout=900)
    finally:
        subprocess.run(["redis-cli", "-p", str(redis_port), "shutdown", "nosave"], capture_output=True)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    out = result.stdout
    assert "bundle written to runs/airline" in out
    assert re.search(r"^2,8\d\d rows .* macro recall 0\.\d+", out, re.M), out  # the test split: 2,897 rows
    assert "rows in 14640, rows out 14640, rows with errors" in out
    assert "United" in out and "Southwest" in out  # the crosstab, one row per airline
    assert "report written to runs/airline-report/report.html" in out
    summary = json.loads((tmp_path / "runs/airline-report/summary.json").read_text())
    assert summary["rows"] == 14640 and len(summary["keys"]) == 6 and summary["drivers"]
    assert '"label":' in out  # the HTTP answer
    assert re.search(r"^window start \(UTC\)\s+key\s+negative\s+neutral\s+positive\s+total$", out, re.M), out
    assert re.search(r"^2015-02-24 00:00:00\s+United\s+\d+", out, re.M), out  # the stream's counts, by created_at
    assert '{"output_stream": "airline:scored", "window_s": 86400' in out  # the live page's JSON
    assert ray_lines(out + result.stderr) == []
