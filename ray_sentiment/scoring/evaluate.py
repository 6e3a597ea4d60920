"""Evaluate a bundle on labelled data, scored by the same tokenising and scoring code as `score`:
in this process for a small local input, by Ray Data's actors for a large one or on a cluster.

    ray-sentiment evaluate --model runs/example --data examples/test.csv

Through Ray, only the labels and probabilities come back to the driver. The metrics are `metrics.py`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from ..data.read import label_counts, read_labelled, split_rows
from ..errors import DataError
from ..inputs import labelled_rows, list_input_files, open_dataset, rows_in_split
from ..metrics import classification_report
from ..model.bundle import ModelBundle
from ..model.predictor import resolve_device
from ..runtime import ensure_ray, in_process
from ..settings import EvaluateSettings
from ..storage import failing_as
from .checks import check_evaluate, unknown_labels
from .pipeline import Columns, Scorer, ScoringPlan, Tokenising, score_dataset

NO_LIMIT = 2**31 - 1  # labelled rows are measured, never refused for their length
BATCH_ROWS = 4096


def evaluate_path(s: EvaluateSettings, bundle: ModelBundle | None = None) -> dict:
    """Metrics of the bundle on the labelled rows (those whose `split_column` is in `test_split`,
    if given); with `group_column`, also per value of that column; with `errors`, the N most
    confident mistakes per true label with their tokens' contributions. `bundle`: what
    checks.check_evaluate returned, if the caller ran it already.

    A small local input is scored in this process, a large one (or any, on a cluster) by Ray
    Data's actors: the same tokenising and scoring code either way, so the same report."""
    bundle = bundle or check_evaluate(s)
    labels = bundle.labels
    fmt, files = list_input_files(s.data)
    here = in_process(s.data, files)
    scored, rows_skipped = _scored_here(s, bundle, fmt=fmt, files=files) if here else _scored_on_ray(s, bundle)
    index = {label: i for i, label in enumerate(labels)}
    y, proba, groups = [np.zeros(0, np.int64)], [np.zeros((0, len(labels)), np.float32)], []
    mistakes = pd.DataFrame()
    for batch in scored:
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
    report["rows_scored"], report["rows_skipped"] = len(y_true), rows_skipped
    if s.group_column:
        group = np.concatenate(groups)
        report["groups"] = {
            str(g): classification_report(y_true[group == g], p[group == g], labels) for g in sorted(set(group))
        }
    if s.errors:
        report["errors"] = _explained(mistakes, bundle)
    return report


def _kept(s: EvaluateSettings) -> tuple[str, ...]:
    """The columns scoring keeps beside the results; the true label travels as `true`, since
    the results take the name `label`."""
    return ("label", *(["group"] if s.group_column else []), *(["text"] if s.errors else []))


def _scored_here(
    s: EvaluateSettings, bundle: ModelBundle, *, fmt: str, files: list[str]
) -> tuple[Iterator[pa.Table], int]:
    columns = list(dict.fromkeys(c for c in (s.text_column, s.label_column, s.split_column, s.group_column) if c))
    dataset, _ = open_dataset(fmt, files, columns=columns, path=s.data)
    with failing_as(DataError, f"cannot read {s.data}"):
        table = dataset.to_table(columns=columns)
    rows = labelled_rows(
        table, s.text_column, label_column=s.label_column, split_column=s.split_column, group_column=s.group_column
    )
    skipped = table.num_rows - rows.num_rows
    if s.split_column:
        rows = rows_in_split(rows, s.test_split)
    unknown_labels(set(rows["label"].unique().to_pylist()), bundle.labels, s.data)
    tokenising = Tokenising.of(bundle, Columns("text", _kept(s), {"label": "true"}), NO_LIMIT)
    device = str(resolve_device(s.device))
    scorer = Scorer(
        bundle, device, batch_size=BATCH_ROWS, tokenising=tokenising, reporter=None, threads=os.cpu_count() or 1
    )
    return (scorer(rows.slice(start, BATCH_ROWS)) for start in range(0, rows.num_rows, BATCH_ROWS)), skipped


def _scored_on_ray(s: EvaluateSettings, bundle: ModelBundle) -> tuple[Iterator[pa.Table], int]:
    ensure_ray()
    split = read_labelled(
        s.data, s.text_column, label_column=s.label_column, split_column=s.split_column, group_column=s.group_column
    )
    if s.split_column:
        split.dataset = split_rows(split.dataset, s.test_split)
    unknown_labels(set(label_counts(split.dataset)), bundle.labels, s.data)
    use_gpu = s.device == "cuda" or (s.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    plan = ScoringPlan(
        bundle, Columns("text", _kept(s), {"label": "true"}), BATCH_ROWS, 1, use_gpu, max_text_chars=NO_LIMIT
    )
    scored = score_dataset(split.dataset, plan)
    return scored.iter_batches(batch_format="pyarrow", batch_size=None), split.rows_dropped


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
