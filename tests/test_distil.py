"""`train --teacher`: the targets a teacher gives (here, without Ray), and a teacher that does not fit
refused before Ray starts. A whole distilled training run on Ray Train is test_pretrain.py's
`--init-from` test, which also learns from a teacher."""

import queue

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ray_sentiment import Predictor
from ray_sentiment.model.bundle import load_bundle
from ray_sentiment.progress import Reporter
from ray_sentiment.text.tokens import Encoder
from ray_sentiment.train.distil import TEACHER_SHARE, Teacher

from conftest import EXAMPLES, SAMPLE_TEXTS, cli_in_process, write_random_bundle

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_random_bundle(tmp_path_factory.mktemp("teacher") / "hybrid", seed=3, hybrid=True)[0]


def test_labelled_rows_learn_half_label_half_teacher_and_unlabelled_rows_the_teacher(teacher):
    import torch

    encoder = Encoder(["<pad>", "<unk>", "love", "worst", "app"], 12)
    scorer = Teacher(
        load_bundle(teacher),
        encoder=encoder,
        labels=LABELS,
        threads=torch.get_num_threads(),
        device="cpu",
        reporter=Reporter(queue.Queue()),
    )
    expected = Predictor.load(teacher).predict_proba(SAMPLE_TEXTS)
    labels = ["positive", "negative", "neutral", "positive", "neutral"]

    labelled = scorer(pa.table({"text": SAMPLE_TEXTS, "label": labels}))
    onehot = np.eye(3)[[LABELS.index(label) for label in labels]]
    np.testing.assert_allclose(labelled["target"], TEACHER_SHARE * expected + (1 - TEACHER_SHARE) * onehot, atol=1e-6)
    np.testing.assert_allclose(labelled["target"].sum(axis=1), 1, atol=1e-5)
    ids, lengths = encoder(pa.chunked_array([SAMPLE_TEXTS]))
    np.testing.assert_array_equal(labelled["ids"], ids)  # in the student's vocabulary, not the teacher's
    np.testing.assert_array_equal(labelled["length"], lengths)

    unlabelled = scorer(pa.table({"text": SAMPLE_TEXTS}))
    np.testing.assert_allclose(unlabelled["target"], expected, atol=1e-6)


def test_a_teacher_of_other_labels_or_no_bundle_is_refused_before_ray(teacher, tmp_path, capsys):
    two = tmp_path / "two.csv"
    rows = pd.read_csv(EXAMPLES)
    rows[rows["label"] != "neutral"].to_csv(two, index=False)
    for train, given, message in (
        (two, teacher, "predicts the labels negative, neutral, positive, the training data has negative, positive"),
        (EXAMPLES, tmp_path / "nothing", "nothing"),
    ):
        result = cli_in_process(
            capsys, "train", "--train", str(train), "--output", str(tmp_path / "b"), "--teacher", str(given)
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "b").exists()
