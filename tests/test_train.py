"""Ray Train end to end on real tweets: 2 data-parallel workers and their checkpoints. A worker lost
with its node, and the run resumed from its checkpoint, is test_multinode.py's."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy

from ray_sentiment import Predictor
from ray_sentiment.metrics import classification_report
from ray_sentiment.model.bundle import load_encoder
from ray_sentiment.settings import TrainSettings
from ray_sentiment.text.tokens import tokenize
from ray_sentiment.train.driver import train

from conftest import dataset

ROWS, UNLABELLED = 2_000, 1_000


@pytest.fixture(scope="module")
def tweets_sample(tmp_path_factory):
    """ROWS rows of tweets/train, every class in its natural share."""
    rows = pd.read_parquet(dataset("tweets/train.parquet")).sample(n=ROWS, random_state=0)
    path = tmp_path_factory.mktemp("tweets") / "sample.parquet"
    rows[["text", "label"]].to_parquet(path)
    return path


def test_the_default_trains_a_hybrid_teacher_then_a_fast_student_that_beats_the_majority(
    ray_local, tweets_sample, tmp_path
):
    """The default model, as `train` makes it, in one job on two workers: first its teacher, the
    hybrid (pretraining, the linear model beside it), then the student, one LSTM of the reference's
    shape learning from the teacher's probabilities on the labelled and the unlabelled tweets. Three
    epochs each and 1,000 unlabelled tweets: enough to prove each part and to beat the baseline
    (benchmarks/train_accuracy.py measures the full model)."""
    unlabelled = tmp_path / "unlabelled.parquet"
    pd.read_parquet(dataset("unlabeled/tweets.parquet")).head(UNLABELLED).to_parquet(unlabelled)
    bundle = train(
        TrainSettings(
            train_path=str(tweets_sample),
            output=str(tmp_path / "bundle"),
            preset="default",
            num_workers=2,
            epochs=3,
            learning_rate=3e-3,
            storage_path=str(tmp_path / "ckpt"),
            keep_checkpoints=True,
            unlabelled_path=str(unlabelled),
        )
    )
    val = pd.read_parquet(dataset("tweets/val.parquet"))
    predictor = Predictor.load(bundle)
    y = val["label"].map({label: i for i, label in enumerate(predictor.labels)}).to_numpy()
    report = classification_report(y, predictor.predict_proba(val["text"].tolist()), predictor.labels)
    majority_accuracy = val["label"].value_counts(normalize=True).max()
    # A majority-class model has macro recall 1/3 and never predicts the minority classes.
    assert report["macro_recall"] > 1 / 3 + 0.12, report
    assert report["accuracy"] > majority_accuracy + 0.05, report
    assert min(report["per_class"][c]["recall"] for c in predictor.labels) > 0.1

    metrics = json.loads((Path(bundle) / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, metrics["epochs_run"] + 1))
    assert history[-1]["loss"] < history[0]["loss"], history
    assert metrics["best_epoch"] == min(history, key=lambda h: h["val_loss"])["epoch"]
    assert metrics["validation"]["loss"] == pytest.approx(history[metrics["best_epoch"] - 1]["val_loss"])
    assert metrics["rows"]["train"]["read"] == ROWS
    assert (
        metrics["rows"]["train"]["rows"] + metrics["rows"]["val"]["rows"] == ROWS - metrics["rows"]["train"]["dropped"]
    )
    assert metrics["restarts"] == []
    weights = safetensors.numpy.load_file(Path(bundle) / "model.safetensors")
    assert all(np.isfinite(w).all() for w in weights.values())
    assert metrics["rows"]["unlabelled"]["read"] == UNLABELLED
    assert metrics["settings"]["embedding_init"] == "ppmi"

    # The student: one LSTM of the reference's shape, no linear model, taught on every text.
    config = predictor.bundle.model_config
    assert (config.hidden_dim, config.bidirectional, predictor.linear) == (128, False, None)
    teacher_dir = Path(bundle) / "teacher"
    assert metrics["settings"]["teacher"] == str(teacher_dir)
    taught = metrics["rows"]["train"]["rows"] + UNLABELLED - metrics["rows"]["unlabelled"]["dropped"]
    assert metrics["rows"]["teacher"]["rows"] == taught

    # The teacher, trained first: pretraining on labelled and unlabelled texts, then a linear
    # model weighed against its LSTM on the validation rows; the same vocabulary as the student.
    teacher = Predictor.load(teacher_dir)
    taught_by = json.loads((teacher_dir / "metrics.json").read_text())
    assert taught_by["settings"]["preset"] == "hybrid" and teacher.bundle.model_config.bidirectional
    losses = [epoch["lm_loss"] for epoch in taught_by["pretraining"]]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert teacher.linear is not None
    assert teacher.bundle.linear_weight == taught_by["linear_weight"]["chosen"]
    assert len(taught_by["linear_weight"]["val_log_loss"]) == 11
    encoder = load_encoder(str(teacher_dir / "pretrained"))
    assert encoder.vocab == teacher.bundle.vocab == predictor.bundle.vocab
    labelled_tokens = set(tokenize(pd.read_parquet(tweets_sample)["text"].tolist()).flatten().to_pylist())
    assert len(set(encoder.vocab) - labelled_tokens) > 1000  # the vocabulary also comes from the unlabelled texts

    # keep_checkpoints: every epoch's checkpoint of both runs stays, the teacher's pretraining included
    runs = {Path(m["checkpoint"]).parent: m for m in (metrics, taught_by)}
    assert len(runs) == 2
    for run, m in runs.items():
        kept = [c for c in run.iterdir() if c.is_dir() and c.name.startswith("checkpoint_")]
        assert len(kept) == len(m["pretraining"]) + m["epochs_run"], run
