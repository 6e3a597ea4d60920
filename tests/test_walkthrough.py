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

import numpy as np
import pytest
import safetensors.numpy

from ray_sentiment import Predictor
from ray_sentiment.model.bundle import load_encoder

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


def test_make_quickstart_trains_the_default_teacher_then_student_and_prints_at_most_30_lines(tmp_path):
    """The README's first command, and the one run of the default model's two-stage job in the
    suite: the teacher (a hybrid: pretraining, then a linear model weighed against its LSTM), then
    the student, one LSTM of the reference's shape taught by it, on 2 Train workers; the model
    beats the majority on the 120 held-out comments. benchmarks/train_accuracy.py measures the
    full model on real tweets."""
    venv, run = Path(sys.prefix), tmp_path / "example"
    result = run_group(
        ["make", "-s", "-o", f"{venv}/.installed", "quickstart", f"VENV={venv}", f"RUN={run}"],
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

    # A majority-class model has macro recall 1/3 and never predicts the other classes.
    report = json.loads((run / "test_report.json").read_text())
    assert report["rows"] == 120 and report["macro_recall"] > 1 / 3 + 0.12, report
    assert min(c["recall"] for c in report["per_class"].values()) > 0.1, report

    # The student: one LSTM of the reference's shape, no linear model, taught on every training text.
    student, metrics = Predictor.load(str(run)), json.loads((run / "metrics.json").read_text())
    config = student.bundle.model_config
    assert (config.hidden_dim, config.bidirectional, student.linear) == (128, False, None)
    assert metrics["settings"]["teacher"] == str(run / "teacher") and metrics["settings"]["embedding_init"] == "ppmi"
    rows = metrics["rows"]
    assert rows["train"]["read"] == 360 and rows["train"]["rows"] + rows["val"]["rows"] == 360
    assert rows["teacher"]["rows"] == rows["train"]["rows"] and metrics["restarts"] == []
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, metrics["epochs_run"] + 1))
    assert history[-1]["loss"] < history[0]["loss"], history
    assert metrics["best_epoch"] == min(history, key=lambda h: h["val_loss"])["epoch"]
    assert metrics["validation"]["loss"] == pytest.approx(history[metrics["best_epoch"] - 1]["val_loss"])
    weights = safetensors.numpy.load_file(run / "model.safetensors")
    assert all(np.isfinite(w).all() for w in weights.values())

    # The teacher, trained first in the same job: pretrained, its linear model weighed on the
    # validation rows, its encoder kept; the same vocabulary as the student.
    teacher, taught_by = Predictor.load(str(run / "teacher")), json.loads((run / "teacher/metrics.json").read_text())
    assert taught_by["settings"]["preset"] == "hybrid" and teacher.bundle.model_config.bidirectional
    assert [e["pretrain_epoch"] for e in taught_by["pretraining"]] == [1, 2]
    assert teacher.linear is not None and teacher.bundle.linear_weight == taught_by["linear_weight"]["chosen"]
    assert len(taught_by["linear_weight"]["val_log_loss"]) == 11
    encoder = load_encoder(str(run / "teacher/pretrained"))
    assert encoder.vocab == teacher.bundle.vocab == student.bundle.vocab


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
