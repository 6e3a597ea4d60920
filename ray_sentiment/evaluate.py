"""Evaluate a bundle on labelled data, scored through the same Ray Data path as `score`.

    ray-sentiment evaluate --model runs/example --data examples/test.csv

Only the labels and probabilities come back to the driver; the metrics are `metrics.py`'s.
"""

from __future__ import annotations

import numpy as np
import ray

from .batch import score_dataset
from .bundle import ModelBundle
from .data import label_counts, read_labelled, split_rows
from .errors import DataError
from .metrics import classification_report
from .preflight import check_evaluate, unknown_labels
from .runtime import ensure_ray

NO_LIMIT = 2**31 - 1  # labelled rows are measured, never refused for their length


def evaluate_path(
    model_path: str,
    data_path: str,
    text_column: str = "text",
    label_column: str = "label",
    device: str = "cpu",
    split_column: str | None = None,
    test_split: tuple[str, ...] = (),
    bundle: ModelBundle | None = None,
) -> dict:
    """Metrics of the bundle on the labelled rows (those whose `split_column` is in `test_split`,
    if given). `bundle`: what preflight.check_evaluate returned, if the caller ran it already."""
    bundle = bundle or check_evaluate(model_path, data_path, text_column, label_column, split_column, test_split)
    labels = bundle.labels
    ensure_ray()
    split = read_labelled(data_path, text_column, label_column, split_column)
    if split_column:
        split.dataset = split_rows(split.dataset, test_split)
    unknown_labels(set(label_counts(split.dataset)), labels, data_path)
    # The true label travels as `true`: the results take the name `label`.
    use_gpu = device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    scored = score_dataset(
        split.dataset,
        bundle,
        "text",
        ["label"],
        {"label": "true"},
        batch_size=4096,
        concurrency=1,
        use_gpu=use_gpu,
        max_text_chars=NO_LIMIT,
    )
    index = {label: i for i, label in enumerate(labels)}
    y, proba = [np.zeros(0, np.int64)], [np.zeros((0, len(labels)), np.float32)]
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        y.append(np.fromiter((index[x] for x in batch["true"].to_pylist()), np.int64, batch.num_rows))
        proba.append(np.column_stack([batch[f"p_{label}"].to_numpy() for label in labels]))
    y_true, p = np.concatenate(y), np.concatenate(proba)
    if len(y_true) == 0:
        raise DataError(f"{data_path} has no rows with both a text and a label")
    report = classification_report(y_true, p, labels)
    report["rows_scored"], report["rows_skipped"] = len(y_true), split.rows_dropped
    return report
