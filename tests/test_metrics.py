import numpy as np
import pytest
from sklearn import metrics as skm

from ray_sentiment.metrics import classification_report


def _random_case(n_classes: int, n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    proba = rng.dirichlet(np.ones(n_classes), n)
    proba[np.arange(n), y] += rng.random(n)  # better than chance, not perfect
    return y, proba / proba.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_report_agrees_with_scikit_learn(n_classes):
    y, proba = _random_case(n_classes)
    labels = [f"c{i}" for i in range(n_classes)]
    report = classification_report(y, proba, labels)
    pred = proba.argmax(axis=1)
    assert report["rows"] == len(y)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert report["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    expected_auc = (
        skm.roc_auc_score(y, proba[:, 1]) if n_classes == 2 else skm.roc_auc_score(y, proba, multi_class="ovr")
    )
    assert report["roc_auc_ovr"] == pytest.approx(expected_auc)
    f1 = skm.f1_score(y, pred, average=None)
    for i, label in enumerate(labels):
        assert report["per_class"][label]["f1"] == pytest.approx(f1[i])
        assert report["per_class"][label]["support"] == int((y == i).sum())
    assert report["confusion_matrix"]["labels"] == labels
    assert report["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, pred).tolist()
    rates = [report[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc_ovr")]
    assert all(0.0 <= r <= 1.0 for r in rates)


def test_missing_class_gives_no_auc_and_zero_recall_for_it():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    report = classification_report(y, proba, ["a", "b", "c"])
    assert report["roc_auc_ovr"] is None
    assert report["per_class"]["c"]["support"] == 0
    assert report["per_class"]["a"]["recall"] == 0.5
    assert report["macro_recall"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
