"""Classification metrics as plain functions of labels and probabilities (scikit-learn underneath)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm


def classification_report(
    y_true: Sequence[int] | np.ndarray, proba: np.ndarray, labels: Sequence[str]
) -> dict:
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


def evaluate_path(
    model_path: str, data_path: str, text_column: str = "text", label_column: str = "label", device: str = "cpu"
) -> dict:
    """Score labelled data with a bundle in a Ray Data actor; only numbers come back to the driver."""
    import pyarrow as pa

    from .bundle import load_bundle
    from .data import check_input, label_counts, read_labelled
    from .errors import DataError
    from .predictor import Predictor
    from .runtime import ensure_ray, quiet_ray_data

    bundle = load_bundle(model_path)  # a broken bundle fails here, before any Ray work
    labels = bundle.labels
    check_input(data_path)  # a wrong path or a file that is not UTF-8 fails now, before Ray starts
    ensure_ray()
    quiet_ray_data()
    split = read_labelled(data_path, text_column, label_column)
    unknown = set(label_counts(split.dataset)) - set(labels)
    if unknown:
        raise DataError(f"{data_path} has labels the model does not know: {', '.join(sorted(unknown))}; "
                        f"the model's labels are: {', '.join(labels)}")

    class Score:
        def __init__(self):
            self.predictor = Predictor(bundle, device=device)
            self.index = {label: i for i, label in enumerate(labels)}

        def __call__(self, batch: pa.Table) -> dict:
            y = np.fromiter((self.index[x] for x in batch["label"].to_pylist()), np.int64, batch.num_rows)
            return {"y": y, "proba": self.predictor.predict_proba(batch["text"].to_pylist())}

    y, proba = [np.zeros(0, np.int64)], [np.zeros((0, len(labels)), np.float32)]
    scored = split.dataset.map_batches(
        Score, batch_format="pyarrow", batch_size=4096, concurrency=1, num_gpus=1 if device == "cuda" else 0
    )
    for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
        y.append(batch["y"])
        proba.append(batch["proba"])
    y, proba = np.concatenate(y), np.concatenate(proba)
    if len(y) == 0:
        raise DataError(f"{data_path} has no rows with both a text and a label")
    report = classification_report(y, proba, labels)
    report["rows_scored"], report["rows_skipped"] = int(len(y)), split.rows_dropped
    return report
