"""Reasons for a label: Predictor.explain (occlusion) on a model trained on the airline tweets,
`predict --explain`, and `evaluate --group-column --errors` through the CLI, on Ray and in-process."""

import json

import pandas as pd
import pytest

from ray_sentiment import Predictor
from ray_sentiment.errors import InvalidTextError
from ray_sentiment.inputs import list_input_files
from ray_sentiment.runtime import in_process
from ray_sentiment.scoring.evaluate import evaluate_path
from ray_sentiment.settings import EvaluateSettings

from conftest import ROOT, cli_in_process, dataset, run_cli

# (praise, the same praise negated, the word that carries it)
PAIRS = [
    ("the flight was good", "the flight was not good", "good"),
    ("the crew was great", "the crew was not great", "great"),
    ("i am happy with the service", "i am not happy with the service", "happy"),
]


def assert_close(here, there, path="report"):
    """Equal JSON values, floats to 1e-5 (the two paths batch the same rows differently)."""
    if isinstance(there, float):
        assert here == pytest.approx(there, abs=1e-5), path
    elif isinstance(there, dict):
        assert set(here) == set(there), path
        for key in there:
            assert_close(here[key], there[key], f"{path}.{key}")
    elif isinstance(there, list):
        assert len(here) == len(there), path
        for i, (a, b) in enumerate(zip(here, there)):
            assert_close(a, b, f"{path}[{i}]")
    else:
        assert here == there, path


def contribution(record: dict, token: str) -> float:
    return next(t["contribution"] for t in record["tokens"] if t["token"] == token)


@pytest.mark.parametrize(("praise", "negated", "word"), PAIRS)
def test_contributions_change_sign_when_praise_is_negated(airline_bundle, praise, negated, word):
    predictor = Predictor.load(airline_bundle)
    plain, turned = predictor.explain([praise, negated], label="positive")
    assert contribution(plain, word) > 0  # the word pushes towards positive
    assert contribution(turned, "not") < 0  # and "not" pushes away from it
    assert turned["p_positive"] < plain["p_positive"]


def test_explain_gives_score_s_answer_and_one_contribution_per_token(airline_bundle):
    predictor = Predictor.load(airline_bundle)
    texts = ["@united my flight was cancelled and nobody helps", "thanks for the great service!"]
    explained, scored = predictor.explain(texts), predictor.score(texts)
    for why, record in zip(explained, scored):
        assert why["label"] == record["label"]
        for name in ("confidence", "p_negative", "p_neutral", "p_positive"):
            assert why[name] == pytest.approx(record[name], abs=1e-6)  # batches of other shapes: float32 noise
    assert [t["token"] for t in explained[0]["tokens"]] == [
        "<user>",
        "my",
        "flight",
        "was",
        "cancelled",
        "and",
        "nobody",
        "helps",
    ]
    assert explained[0]["label"] == "negative" and contribution(explained[0], "cancelled") > 0
    assert explained[1]["label"] == "positive" and contribution(explained[1], "great") > 0


def test_explain_costs_at_most_tokens_plus_one_model_rows_per_text(airline_bundle):
    predictor = Predictor.load(airline_bundle)
    calls: list[int] = []
    model_call = predictor.predict_proba_encoded

    def counted(ids, lengths, linear=None):
        calls.append(len(ids))
        return model_call(ids, lengths, linear)

    predictor.predict_proba_encoded = counted
    long_text = " ".join(["delayed"] * 500)  # more tokens than the model reads (max_len 40)
    texts = ["not good", "the flight was good", long_text] * 20
    records = predictor.explain(texts, batch_size=100)
    read = predictor.encoder.max_len
    assert sum(calls) == sum(min(len(r["tokens"]), read) + 1 for r in records) == 20 * (3 + 5 + read + 1)
    assert len(records[2]["tokens"]) == read  # only the tokens the model reads are explained
    assert max(calls) <= 100 + read  # every variant of a text in one call, calls near the batch size


def test_explain_refuses_bad_texts_and_unknown_labels(airline_bundle):
    predictor = Predictor.load(airline_bundle)
    with pytest.raises(InvalidTextError, match=r"#1: text is null"):
        predictor.explain(["fine", None])
    with pytest.raises(ValueError, match="unknown label 'angry'"):
        predictor.explain(["fine"], label="angry")
    assert predictor.explain([]) == []


def test_predict_explain_prints_each_token_s_contribution(airline_bundle):
    result = run_cli("predict", "--model", str(airline_bundle), "--explain", "the crew was not great", " ")
    assert result.returncode == 2 and "1 of 2 texts could not be scored" in result.stderr
    good, bad = (json.loads(line) for line in result.stdout.splitlines())
    assert [t["token"] for t in good["tokens"]] == ["the", "crew", "was", "not", "great"]
    assert all(isinstance(t["contribution"], float) for t in good["tokens"])
    assert bad["error"] == "text is empty" and "tokens" not in bad


def test_evaluate_per_airline_and_the_most_confident_mistakes(airline_bundle, ray_address, tmp_path):
    data = str(dataset("airline/tweets.parquet"))
    args = ["--model", str(airline_bundle), "--data", data, "--split-column", "split", "--test-split", "test"]
    output = tmp_path / "report.json"
    result = run_cli(
        "evaluate", *args, "--group-column", "airline", "--errors", "2", "--output", str(output), env=ray_address
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The summary on the terminal, the whole report in the file
    assert "United: " in result.stdout and "negative taken as" in result.stdout
    report = json.loads(output.read_text())
    rows = pd.read_parquet(data)
    test = rows[rows["split"] == "test"]
    assert {g: r["rows"] for g, r in report["groups"].items()} == test.groupby("airline").size().to_dict()
    assert (
        sum(r["confusion_matrix"]["matrix"][0][0] for r in report["groups"].values())
        == (report["confusion_matrix"]["matrix"][0][0])
    )
    errors = report["errors"]
    assert sorted(e["true"] for e in errors) == ["negative"] * 2 + ["neutral"] * 2 + ["positive"] * 2
    texts = dict(zip(test["text"], test["label"]))
    for e in errors:
        assert texts[e["text"]] == e["true"] != e["predicted"]
        assert e["tokens"] and max(t["contribution"] for t in e["tokens"]) > 0
    scored = pd.DataFrame(Predictor.load(airline_bundle).score(test["text"].tolist()))
    scored["true"], scored["text"] = test["label"].to_numpy(), test["text"].to_numpy()
    wrong = scored[scored["true"] != scored["label"]].sort_values("confidence", ascending=False)
    expected = wrong.groupby("true").head(2).sort_values(["true", "confidence"], ascending=[True, False])
    assert [e["text"] for e in errors] == expected["text"].tolist()
    # The same report scored in this process: the file is small and local, and no RAY_ADDRESS is set
    settings = EvaluateSettings(
        model=str(airline_bundle),
        data=data,
        split_column="split",
        test_split=("test",),
        group_column="airline",
        errors=2,
    )
    assert in_process(data, list_input_files(data)[1])
    assert_close(json.loads(json.dumps(evaluate_path(settings))), report)


def test_evaluate_refuses_a_group_column_that_is_not_there(bundle, capsys):
    data = str(dataset("airline/tweets.parquet"))
    result = cli_in_process(capsys, "evaluate", "--model", str(bundle), "--data", data, "--group-column", "brand")
    assert result.returncode == 2 and "has no column 'brand'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_readmes_python_api_block_runs_and_shows_the_records_as_they_are(bundle):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Python API")[1].split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(block.replace('"model/"', repr(str(bundle))), namespace)
    predictor = namespace["predictor"]
    shown = [line for line in block.splitlines() if line.startswith("# [{")]
    records = [predictor.score(["love it"])[0], predictor.explain(["not good"])[0]]
    assert len(shown) == 2 and all(line.startswith("# [{'label': ") for line in shown)
    assert list(records[0]) == ["label", "confidence", *(f"p_{label}" for label in predictor.labels), "error"]
    assert all(f"'{key}'" in shown[0] for key in records[0])
    assert list(records[1])[-1] == "tokens" and "'tokens': [{'token'" in shown[1]
