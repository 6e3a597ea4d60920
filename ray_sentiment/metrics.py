"""Classification metrics: pure functions of true labels and probabilities (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm


def classification_report(y_true: Sequence[int] | np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> dict:
    """Every rate is a fraction in [0, 1]. `y_true` holds indices into `labels`;
    `proba` has one column per label, in `labels` order."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    classes = np.arange(len(labels))
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    return {
        "rows": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "roc_auc_ovr": roc_auc_ovr(y_true, proba),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": {
            "labels": list(labels),  # rows: true label, columns: predicted label
            "matrix": skm.confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        },
    }


def roc_auc_ovr(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC-AUC; None when it is undefined (a class never occurs in y_true)."""
    if len(np.unique(y_true)) < proba.shape[1]:
        return None
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    return float(skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))
