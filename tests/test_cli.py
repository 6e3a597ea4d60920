"""The `ray-sentiment` command as a user runs it: real processes, real exit codes. Refusals come
before Ray starts (unit); commands that do work join the session's Ray (integration)."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from conftest import EXAMPLES, EXAMPLES_TEST, ROOT, cli_in_process, run_cli


def test_evaluate_on_ray_prints_the_report_as_json(bundle, ray_address, tmp_path):
    result = run_cli(
        "evaluate",
        "--model",
        str(bundle),
        "--data",
        str(EXAMPLES_TEST),
        "--output",
        str(tmp_path / "report.json"),
        "--json",
        env=ray_address,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc_ovr"):
        assert 0.0 <= report[key] <= 1.0
    assert report["rows_scored"] == 120 and report["rows_skipped"] == 0
    assert report["confusion_matrix"]["labels"] == ["negative", "neutral", "positive"]
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == 120
    assert set(report["per_class"]) == {"negative", "neutral", "positive"}


def test_predict_prints_one_json_line_per_text(bundle, capsys):
    texts = ("I love the new update 😍", "this app is trash 😡")
    result = cli_in_process(capsys, "predict", "--model", str(bundle), *texts)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["I love the new update 😍", "this app is trash 😡"]
    for line in lines:
        assert set(line) == {"text", "label", "confidence", "p_negative", "p_neutral", "p_positive", "error"}
        probabilities = [line[f"p_{label}"] for label in ("negative", "neutral", "positive")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5) and line["error"] is None
        assert line["confidence"] == max(probabilities) == line[f"p_{line['label']}"]


def test_predict_prints_an_error_line_for_a_text_it_cannot_score_and_exits_2(bundle, capsys):
    not_utf8 = os.fsdecode(b"caf\xe9")  # an argument in latin-1, as Python's sys.argv holds it
    args = ("--model", str(bundle), "--max-text-chars", "20", "fine", "   ", "x" * 21, not_utf8)
    result = cli_in_process(capsys, "predict", *args)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["error"] for line in lines] == [
        None,
        "text is empty",
        "text is 21 characters, more than --max-text-chars 20",
        "text is not valid UTF-8",
    ]
    assert lines[0]["label"] and lines[1]["label"] is None and lines[2]["p_positive"] is None
    assert lines[3]["text"] == "caf\udce9"  # the byte as Python holds it, escaped in the JSON
    _one_line_error(result, "3 of 4 texts could not be scored")


def stdin_of(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_predict_reads_one_text_per_line_from_standard_input(bundle, capsys, monkeypatch):
    stdin_of(monkeypatch, b"I love it\r\n-terrible\n\ncaf\xe9\n")
    result = cli_in_process(capsys, "predict", "--model", str(bundle), "-")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["I love it", "-terrible", "", "caf\udce9"]
    assert [line["error"] for line in lines] == [None, None, "text is empty", "text is not valid UTF-8"]
    _one_line_error(result, "2 of 4 texts could not be scored")


def test_predict_scores_a_field_of_json_lines_and_keeps_the_others(bundle, capsys, monkeypatch):
    rows = [
        {"id": 1, "body": "great flight", "label": "pos"},
        "not json",
        {"id": 3},
        {"id": 4, "body": 5},
    ]
    stdin_of(monkeypatch, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode())
    result = cli_in_process(capsys, "predict", "--model", str(bundle), "--text-field", "body")
    first, *refused = [json.loads(line) for line in result.stdout.splitlines()]
    assert first["id"] == 1 and first["input_label"] == "pos" and first["label"] in ("negative", "neutral", "positive")
    assert [r["error"] for r in refused] == [
        "line is not JSON",
        "line has no field 'body'",
        "field 'body' is not a string",
    ]
    assert refused[0]["line"] == "not json" and refused[2]["id"] == 4 and refused[2]["label"] is None
    _one_line_error(result, "3 of 4 texts could not be scored")


def test_predict_says_how_to_pass_a_text_that_begins_with_a_dash(bundle, capsys):
    result = cli_in_process(capsys, "predict", "--model", str(bundle), "-terrible")
    assert result.returncode == 2
    assert "unrecognized arguments: -terrible; a text that begins with '-' goes after '--'" in result.stderr
    assert (
        json.loads(cli_in_process(capsys, "predict", "--model", str(bundle), "--", "-terrible").stdout)["text"]
        == "-terrible"
    )


def test_predict_into_a_pipe_closed_early_ends_quietly(bundle):
    """`predict ... | head -1`: the reader goes away; no BrokenPipeError traceback."""
    texts = " ".join(f"'comment number {i}'" for i in range(3000))
    command = f"{sys.executable} -m ray_sentiment.cli predict --model {bundle} {texts} | head -1"
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(result.stdout)["text"] == "comment number 0"
    assert result.stderr == ""


def _one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("ray-sentiment: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_diverging_loss_stops_training_with_one_line_and_no_bundle(ray_address, tmp_path):
    result = run_cli(
        "train",
        "--train",
        str(EXAMPLES),
        "--output",
        str(tmp_path / "b"),
        "--epochs",
        "2",
        "--preset",
        "seed",
        "--learning-rate",
        "1e20",
        "--storage-path",
        str(tmp_path / "ckpt"),
        env=ray_address,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("ray-sentiment: error:")]
    assert "the training loss became nan in epoch 1" in line and "lower --learning-rate" in line
    # Stopped, not raised: no worker traceback, no retry. (Ray's own background actors may print
    # tracebacks of theirs when another local Ray runs beside this one, as the tests' own does.)
    assert "errors.TrainingError" not in result.stderr and "Traceback" not in result.stdout
    assert not (tmp_path / "b").exists()


# Runs the CLI in-process in a fresh interpreter, then says whether Ray or torch were imported.
PROBE = (
    "import sys; from ray_sentiment.cli import main; code = main(sys.argv[1:]); "
    "print('imported:', *sorted(m for m in ('ray', 'torch') if m in sys.modules)); sys.exit(code)"
)


def refusals(bundle: Path, tmp_path: Path, busy_port: int) -> list[tuple[tuple, dict, tuple]]:
    """Each command a user gets wrong: its arguments, its environment, what its one line must say."""
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos"] * 3}).to_parquet(tmp_path / "one.parquet")
    pd.DataFrame({"comment": ["a", "b"], "label": ["x", "y"]}).to_csv(tmp_path / "nocol.csv", index=False)
    pd.DataFrame({"text": ["a", "b"], "label": ["positive", "angry"]}).to_csv(tmp_path / "angry.csv", index=False)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncafé au lait,positive\nmauvais,negative\n".encode("latin-1"))
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    out, model = str(tmp_path / "b"), str(bundle)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_SENTIMENT_API_KEY")}
    not_utf8 = ("latin1.csv is not UTF-8 text: byte 0xe9 at offset 14, line 2",)
    cases = [
        (("train", "--train", str(tmp_path / "nope.parquet"), "--output", out), ("no such file", "nope.parquet")),
        (
            ("train", "--train", str(tmp_path / "nocol.csv"), "--output", out),
            ("has no column 'text'", "comment, label"),
        ),
        (("train", "--train", str(tmp_path / "one.parquet"), "--output", out), ("only the label 'pos'",)),
        (("train", "--train", str(latin1), "--output", out), not_utf8),
        (
            ("train", "--train", str(EXAMPLES), "--output", out, "--num-workers", "0"),
            ("--num-workers must be at least 1",),
        ),
        (("predict", "--model", str(broken), "hi"), ("model.safetensors is corrupt",)),
        (("evaluate", "--model", str(broken), "--data", str(EXAMPLES)), ("model.safetensors is corrupt",)),
        (
            ("evaluate", "--model", model, "--data", str(tmp_path / "angry.csv")),
            ("labels the model does not know: angry",),
        ),
        (("evaluate", "--model", model, "--data", str(latin1)), not_utf8),
        (
            (
                "evaluate",
                "--model",
                model,
                "--data",
                str(EXAMPLES),
                "--split-column",
                "label",
                "--test-split",
                "none-such",
            ),
            ("none-such",),
        ),
        (("score", "--model", model, "--input", str(tmp_path / "nope.parquet"), "--output", out), ("no such file",)),
        (
            (
                "stream",
                "--model",
                model,
                "--redis",
                "redis://127.0.0.1:1/0",
                "--input-stream",
                "a",
                "--output-stream",
                "b",
            ),
            ("cannot reach Redis at redis://127.0.0.1:1/0",),
        ),
        (("serve", "--model", model, "--port", str(busy_port)), ("Address already in use",)),
        (("report", "--input", str(tmp_path / "nope.parquet"), "--output", out), ("no such file",)),
    ]
    return [
        *((args, env, fragments) for args, fragments in cases),
        (("serve", "--model", model), {**env, "RAY_SENTIMENT_API_KEY": ""}, ("is set but empty",)),
    ]


def test_an_address_where_no_ray_answers_is_one_line_at_once(bundle, capsys, monkeypatch):
    """Ray itself would retry such an address for minutes; --address local starts no cluster at all
    for evaluate's small input (scored in this process) even where RAY_ADDRESS names one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ("--model", str(bundle), "--data", str(EXAMPLES_TEST))
    result = cli_in_process(capsys, "evaluate", "--address", closed, *args)
    _one_line_error(result, f"cannot reach the Ray cluster at {closed}: Connection refused")
    monkeypatch.setenv("RAY_ADDRESS", closed)
    result = cli_in_process(capsys, "evaluate", "--address", "local", *args, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows_scored"] == 120


def test_refusals_are_one_line_exit_2_and_come_before_ray_and_torch(bundle, tmp_path):
    """Each refusal is one line naming the problem, decided before Ray starts or torch loads: that
    is what makes it arrive within a second or so (benchmarks/cli_refusals.py times them; timing
    is not asserted here). One fresh interpreter per refusal, two at a time."""

    def probe(case):
        args, env, _ = case
        command = [sys.executable, "-c", PROBE, *args]
        return case, subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    with socket.socket() as busy, ThreadPoolExecutor(2) as pool:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for (args, _, fragments), result in pool.map(probe, refusals(bundle, tmp_path, busy.getsockname()[1])):
            _one_line_error(result, *fragments)
            assert result.stdout.strip() == "imported:", (args, result.stdout)
