"""The `ray-sentiment` command as a user runs it: real processes, real exit codes."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pytest

from conftest import EXAMPLES, EXAMPLES_TEST, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def example_bundle(tmp_path_factory):
    """The README's main job: train on the example comments, on a local Ray started by the CLI."""
    out = tmp_path_factory.mktemp("example")
    result = run_cli(
        "train",
        "--train",
        str(EXAMPLES),
        "--output",
        str(out / "bundle"),
        "--epochs",
        "4",
        "--storage-path",
        str(out / "ckpt"),
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1/4" in result.stdout and "bundle written to" in result.stdout
    return out / "bundle"


def test_evaluate_prints_the_report_as_json(example_bundle, tmp_path):
    result = run_cli(
        "evaluate",
        "--model",
        str(example_bundle),
        "--data",
        str(EXAMPLES_TEST),
        "--output",
        str(tmp_path / "report.json"),
        "--json",
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


def test_predict_prints_one_json_line_per_text(example_bundle):
    result = run_cli("predict", "--model", str(example_bundle), "I love the new update 😍", "this app is trash 😡")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["I love the new update 😍", "this app is trash 😡"]
    for line in lines:
        assert set(line) == {"text", "label", "confidence", "p_negative", "p_neutral", "p_positive", "error"}
        probabilities = [line[f"p_{label}"] for label in ("negative", "neutral", "positive")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5) and line["error"] is None
        assert line["confidence"] == max(probabilities) == line[f"p_{line['label']}"]


def test_predict_prints_an_error_line_for_a_text_it_cannot_score_and_exits_2(example_bundle):
    result = run_cli("predict", "--model", str(example_bundle), "--max-text-chars", "20", "fine", "   ", "x" * 21)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["error"] for line in lines] == [
        None,
        "text is empty",
        "text is 21 characters, more than --max-text-chars 20",
    ]
    assert lines[0]["label"] and lines[1]["label"] is None and lines[2]["p_positive"] is None
    _one_line_error(result, "2 of 3 texts could not be scored")


def _one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("ray-sentiment: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_training_file(tmp_path):
    result = run_cli("train", "--train", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "b"))
    _one_line_error(result, "no such file or directory", "nope.parquet")


def test_missing_column_lists_the_columns_that_exist(tmp_path):
    pd.DataFrame({"comment": ["a", "b"], "label": ["x", "y"]}).to_csv(tmp_path / "d.csv", index=False)
    result = run_cli("train", "--train", str(tmp_path / "d.csv"), "--output", str(tmp_path / "b"))
    _one_line_error(result, "has no column 'text'", "columns are: comment, label")


def test_one_class_only(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos"] * 3}).to_parquet(tmp_path / "d.parquet")
    result = run_cli("train", "--train", str(tmp_path / "d.parquet"), "--output", str(tmp_path / "b"))
    _one_line_error(result, "only the label 'pos'")


def test_bad_option_value(tmp_path):
    result = run_cli("train", "--train", str(EXAMPLES), "--output", str(tmp_path / "b"), "--num-workers", "0")
    _one_line_error(result, "--num-workers must be at least 1")


def test_corrupt_bundle(example_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(example_bundle, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    for args in (
        ("predict", "--model", str(broken), "hi"),
        ("evaluate", "--model", str(broken), "--data", str(EXAMPLES)),
    ):
        _one_line_error(run_cli(*args), "model.safetensors is corrupt")


def test_evaluate_with_labels_the_model_does_not_know(example_bundle, tmp_path):
    pd.DataFrame({"text": ["a", "b"], "label": ["positive", "angry"]}).to_csv(tmp_path / "d.csv", index=False)
    result = run_cli("evaluate", "--model", str(example_bundle), "--data", str(tmp_path / "d.csv"))
    _one_line_error(result, "labels the model does not know: angry")


def test_a_tiny_repetitive_dataset_trains_to_finite_weights(tmp_path):
    # Few distinct texts: a rank-deficient co-occurrence matrix, which once gave NaN word vectors.
    rows = [("good good good", "pos"), ("bad bad bad", "neg"), ("good bad", "pos"), ("bad good", "neg")] * 40
    pd.DataFrame(rows, columns=["text", "label"]).to_parquet(tmp_path / "d.parquet")
    result = run_cli(
        "train",
        "--train",
        str(tmp_path / "d.parquet"),
        "--output",
        str(tmp_path / "b"),
        "--epochs",
        "2",
        "--storage-path",
        str(tmp_path / "ckpt"),
        "--keep-checkpoints",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import numpy as np
    from safetensors.numpy import load_file

    weights = load_file(tmp_path / "b" / "model.safetensors")
    assert all(np.isfinite(w).all() for w in weights.values())
    # --keep-checkpoints: every epoch's checkpoint, pretraining's included (the default preset pretrains 2 epochs)
    assert len(_checkpoints(tmp_path / "ckpt")) == 4


def _checkpoints(storage) -> list:
    [run] = [d for d in storage.iterdir() if d.is_dir()]
    return sorted(c for c in run.iterdir() if c.is_dir() and c.name.startswith("checkpoint_"))


def test_a_successful_run_keeps_only_its_latest_checkpoint(example_bundle):
    [latest] = _checkpoints(example_bundle.parent / "ckpt")
    assert json.loads((example_bundle / "metrics.json").read_text())["checkpoint"] == str(latest)


def test_a_diverging_loss_stops_training_with_one_line_and_no_bundle(tmp_path):
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
    )
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("ray-sentiment: error:")]
    assert "the training loss became nan in epoch 1" in line and "lower --learning-rate" in line
    # Stopped, not raised: no worker traceback, no retry. (Ray's own background actors may print
    # tracebacks of theirs when another local Ray runs beside this one, as the tests' own does.)
    assert "errors.TrainingError" not in result.stderr and "Traceback" not in result.stdout
    assert not (tmp_path / "b").exists()


def test_a_latin1_csv_is_refused_with_one_line_naming_the_file_and_the_encoding(tmp_path, example_bundle):
    (tmp_path / "latin1.csv").write_bytes("text,label\ncafé au lait,positive\nmauvais,negative\n".encode("latin-1"))
    for command in (
        ("train", "--train", str(tmp_path / "latin1.csv"), "--output", str(tmp_path / "b")),
        ("evaluate", "--model", str(example_bundle), "--data", str(tmp_path / "latin1.csv")),
    ):
        _one_line_error(run_cli(*command), "latin1.csv is not UTF-8 text: byte 0xe9 at offset 14, line 2")


# Runs the CLI in-process in a fresh interpreter, then says whether Ray or torch were imported.
PROBE = (
    "import sys; from ray_sentiment.cli import main; code = main(sys.argv[1:]); "
    "print('imported:', *sorted(m for m in ('ray', 'torch') if m in sys.modules)); sys.exit(code)"
)


def test_refusals_come_before_ray_and_torch(example_bundle, tmp_path):
    """Each refusal above is decided before Ray starts or torch loads: that is what makes it arrive
    within a second or so (benchmarks/cli_refusals.py times them; timing is not asserted here)."""
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos"] * 3}).to_parquet(tmp_path / "one.parquet")
    pd.DataFrame({"comment": ["a", "b"], "label": ["x", "y"]}).to_csv(tmp_path / "nocol.csv", index=False)
    pd.DataFrame({"text": ["a", "b"], "label": ["positive", "angry"]}).to_csv(tmp_path / "angry.csv", index=False)
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,positive\nok,negative\n".encode("latin-1"))
    broken = tmp_path / "broken"
    shutil.copytree(example_bundle, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    out = str(tmp_path / "b")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    refusals = [
        ("train", "--train", str(tmp_path / "nope.parquet"), "--output", out),
        ("train", "--train", str(tmp_path / "nocol.csv"), "--output", out),
        ("train", "--train", str(tmp_path / "one.parquet"), "--output", out),
        ("train", "--train", str(tmp_path / "latin1.csv"), "--output", out),
        ("train", "--train", str(EXAMPLES), "--output", out, "--num-workers", "0"),
        ("predict", "--model", str(broken), "hi"),
        ("evaluate", "--model", str(broken), "--data", str(EXAMPLES)),
        ("evaluate", "--model", str(example_bundle), "--data", str(tmp_path / "angry.csv")),
        (
            "evaluate",
            "--model",
            str(example_bundle),
            "--data",
            str(EXAMPLES),
            "--split-column",
            "label",
            "--test-split",
            "none-such",
        ),
        ("score", "--model", str(example_bundle), "--input", str(tmp_path / "nope.parquet"), "--output", out),
        (
            "stream",
            "--model",
            str(example_bundle),
            "--redis",
            "redis://127.0.0.1:1/0",
            "--input-stream",
            "a",
            "--output-stream",
            "b",
        ),
        ("serve", "--model", str(example_bundle), "--port", str(busy.getsockname()[1])),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_SENTIMENT_API_KEY")}
    runs = [(args, env) for args in refusals]
    runs.append((("serve", "--model", str(example_bundle)), {**env, "RAY_SENTIMENT_API_KEY": ""}))
    for args, run_env in runs:
        command = [sys.executable, "-c", PROBE, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=run_env)
        _one_line_error(result)
        assert result.stdout.strip() == "imported:", (args, result.stdout)
