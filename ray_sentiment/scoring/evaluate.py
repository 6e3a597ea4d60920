"""Evaluate a bundle on labelled data, scored through the same Ray Data path as `score`.

    ray-sentiment evaluate --model runs/example --data examples/test.csv

Only the labels and probabilities come back to the driver; the metrics are `metrics.py`'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from ..data.read import label_counts, read_labelled, split_rows
from ..errors import DataError
from ..metrics import classification_report
from ..model.bundle import ModelBundle
from ..runtime import ensure_ray
from ..settings import EvaluateSettings
from .checks import check_evaluate, unknown_labels
from .pipeline import Columns, ScoringPlan, score_dataset

NO_LIMIT = 2**31 - 1  # labelled rows are measured, never refused for their length


def evaluate_path(s: EvaluateSettings, bundle: ModelBundle | None = None) -> dict:
    """Metrics of the bundle on the labelled rows (those whose `split_column` is in `test_split`,
    if given); with `group_column`, also per value of that column; with `errors`, the N most
    confident mistakes per true label with their tokens' contributions. `bundle`: what
    checks.check_evaluate returned, if the caller ran it already."""
    bundle = bundle or check_evaluate(s)
    labels = bundle.labels
    ensure_ray()
    split = read_labelled(
        s.data, s.text_column, label_column=s.label_column, split_column=s.split_column, group_column=s.group_column
    )
    if s.split_column:
        split.dataset = split_rows(split.dataset, s.test_split)
    unknown_labels(set(label_counts(split.dataset)), labels, s.data)
    # The true label travels as `true`: the results take the name `label`.
    use_gpu = s.device == "cuda" or (s.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    kept = ("label", *(["group"] if s.group_column else []), *(["text"] if s.errors else []))
    plan = ScoringPlan(bundle, Columns("text", kept, {"label": "true"}), 4096, 1, use_gpu, max_text_chars=NO_LIMIT)
    scored = score_dataset(split.dataset, plan)
    index = {label: i for i, label in enumerate(labels)}
    y, proba, groups = [np.zeros(0, np.int64)], [np.zeros((0, len(labels)), np.float32)], []
    mistakes = pd.DataFrame()
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        y.append(np.fromiter((index[x] for x in batch["true"].to_pylist()), np.int64, batch.num_rows))
        proba.append(np.column_stack([batch[f"p_{label}"].to_numpy() for label in labels]))
        if s.group_column:
            groups.append(batch["group"].to_numpy(zero_copy_only=False))
        if s.errors:
            mistakes = _most_confident_mistakes(mistakes, batch, s.errors)
    y_true, p = np.concatenate(y), np.concatenate(proba)
    if len(y_true) == 0:
        raise DataError(f"{s.data} has no rows with both a text and a label")
    report = classification_report(y_true, p, labels)
    report["rows_scored"], report["rows_skipped"] = len(y_true), split.rows_dropped
    if s.group_column:
        group = np.concatenate(groups)
        report["groups"] = {
            str(g): classification_report(y_true[group == g], p[group == g], labels) for g in sorted(set(group))
        }
    if s.errors:
        report["errors"] = _explained(mistakes, bundle)
    return report


def _most_confident_mistakes(held: pd.DataFrame, batch: pa.Table, n: int) -> pd.DataFrame:
    """The n most confident wrong predictions per true label among those held and this batch's."""
    rows = batch.select(["text", "true", "label", "confidence"]).to_pandas()
    rows = rows[rows["true"] != rows["label"]]
    rows = rows if held.empty else pd.concat([held, rows], ignore_index=True)
    return rows.sort_values("confidence", ascending=False, kind="stable").groupby("true").head(n)


def _explained(mistakes: pd.DataFrame, bundle: ModelBundle) -> list[dict]:
    """Each mistake with the contributions of its tokens to the label it was wrongly given."""
    from ..model.predictor import Predictor

    if mistakes.empty:
        return []
    mistakes = mistakes.sort_values(["true", "confidence"], ascending=[True, False])
    why = Predictor(bundle, max_text_chars=NO_LIMIT).explain(mistakes["text"].tolist())
    return [
        {"true": t, "predicted": pred, "confidence": float(c), "text": text, "tokens": w["tokens"]}
        for t, pred, c, text, w in zip(
            mistakes["true"], mistakes["label"], mistakes["confidence"], mistakes["text"], why
        )
    ]
