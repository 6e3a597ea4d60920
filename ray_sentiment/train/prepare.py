"""The training rows: validation split, vocabulary, encoded ids and co-occurrence counts, each
computed per block in Ray tasks with only small partial results merged on the driver.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
import scipy.sparse as sp

from ..data.read import label_counts, read_labelled, split_rows
from ..inputs import check_known_labels, check_split_has_rows, check_validation_rows, require_classes
from ..model.embeddings import cooccurrence_counts
from ..settings import TrainSettings
from ..text.tokens import TOKENISE_ROWS, Encoder, build_vocab, count_tokens
from .checks import split_rows_named


@dataclass
class LabelledData:
    train: ray.data.Dataset
    val: ray.data.Dataset
    labels: list[str]
    counts: dict = field(default_factory=dict)  # rows read/dropped/kept per split, per class


def stratified_split(ds: ray.data.Dataset, fraction: float, seed: int) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """Hold out round(fraction × n) rows of every class, chosen by a seeded hash of the text.

    Hashing the text (not the row position) makes the split independent of file order and
    blocking, and keeps duplicate texts on the same side. Only one float per row reaches the driver.
    """
    key = f"{seed:016d}"[-16:]

    def add_draw(batch: pa.Table) -> pa.Table:
        h = pd.util.hash_array(np.asarray(batch["text"].to_pylist(), dtype=object), hash_key=key)
        return batch.append_column("_draw", pa.array(h.astype(np.float64) / 2.0**64))

    drawn = ds.map_batches(add_draw, batch_format="pyarrow").materialize()
    draws: dict[str, list[np.ndarray]] = {}
    for batch in drawn.select_columns(["label", "_draw"]).iter_batches(batch_format="pandas", batch_size=65536):
        for label, group in batch.groupby("label"):
            draws.setdefault(label, []).append(group["_draw"].to_numpy())
    cutoff = {}
    for label, parts in draws.items():
        values = np.sort(np.concatenate(parts))
        k = int(round(fraction * len(values)))
        cutoff[label] = values[k - 1] if k > 0 else -1.0  # val: draw <= cutoff

    def side(want_val: bool):
        def select(batch: pa.Table) -> pa.Table:
            limits = pa.array([cutoff[x] for x in batch["label"].to_pylist()], pa.float64())
            mask = pc.less_equal(batch["_draw"], limits)
            return batch.filter(mask if want_val else pc.invert(mask)).drop_columns(["_draw"])

        return select

    train = drawn.map_batches(side(False), batch_format="pyarrow").materialize()
    val = drawn.map_batches(side(True), batch_format="pyarrow").materialize()
    return train, val


def load_labelled(s: TrainSettings) -> LabelledData:
    """Training and validation rows: --val, else the --val-split rows, else a stratified fraction.
    The label checks are those train/checks.py makes before Ray starts, here on all that was read."""
    train = read_labelled(s.train_path, s.text_column, label_column=s.label_column, split_column=s.split_column)
    val_rows = None
    if s.split_column:
        val_rows = split_rows(train.dataset, s.val_split) if s.val_split else None
        train.dataset = split_rows(train.dataset, s.train_split, exclude=s.val_split or ())
    counts = label_counts(train.dataset)
    check_split_has_rows(counts, s.train_path, split_column=s.split_column, values=s.train_split)
    require_classes(counts, s.train_path)
    labels = sorted(counts)
    summary: dict[str, dict] = {"train": {"read": train.rows_read, "dropped": train.rows_dropped}}
    if s.val_path:
        val = read_labelled(s.val_path, s.text_column, label_column=s.label_column)
        check_known_labels(set(label_counts(val.dataset)), set(labels), rows=f"{s.val_path} has")
        train_ds, val_ds = train.dataset, val.dataset
        summary["val"] = {"read": val.rows_read, "dropped": val.rows_dropped}
    elif val_rows is not None:
        check_known_labels(set(label_counts(val_rows)), set(labels), rows=split_rows_named(s))
        train_ds, val_ds = train.dataset, val_rows
        summary["val"] = {"split": list(s.val_split or ())}
    else:
        train_ds, val_ds = stratified_split(train.dataset, s.val_fraction, s.seed)
        summary["val"] = {"held_out_from_train": s.val_fraction}
        counts = label_counts(train_ds)
    summary["train"]["rows"] = train_ds.count()
    summary["val"]["rows"] = val_ds.count()
    check_validation_rows(summary["val"]["rows"], s.split_column, s.val_split)
    summary["class_counts"] = dict(sorted(counts.items()))
    return LabelledData(train_ds, val_ds, labels, summary)


def fit_vocab(ds: ray.data.Dataset, vocab_size: int) -> list[str]:
    """Token counts per block in Ray tasks, merged on the driver, cut to the most frequent."""

    def per_block(batch: pa.Table) -> pa.Table:
        counts = count_tokens(batch["text"])
        return pa.table(
            {"token": list(counts), "n": list(counts.values())},
            schema=pa.schema([("token", pa.string()), ("n", pa.int64())]),
        )

    total: Counter[str] = Counter()
    per_blocks = ds.map_batches(per_block, batch_format="pyarrow", batch_size=TOKENISE_ROWS)
    for batch in per_blocks.iter_batches(batch_format="pyarrow"):
        total.update(dict(zip(batch["token"].to_pylist(), batch["n"].to_pylist())))
    return build_vocab(total, vocab_size)


def encode_dataset(
    ds: ray.data.Dataset, vocab: list[str], *, max_len: int, labels: list[str] | None = None
) -> ray.data.Dataset:
    """text[, label] → ids (int32 [max_len]), length (int32)[, label_id (int64)], tokenised in Ray tasks."""
    encoder = Encoder(vocab, max_len)
    label_ids = {label: i for i, label in enumerate(labels or [])}

    def encode(batch: pa.Table) -> dict:
        ids, lengths = encoder(batch["text"])
        if not labels:
            return {"ids": ids, "length": lengths}
        y = np.fromiter((label_ids[x] for x in batch["label"].to_pylist()), np.int64, batch.num_rows)
        return {"ids": ids, "length": lengths, "label_id": y}

    return ds.map_batches(encode, batch_format="pyarrow", batch_size=TOKENISE_ROWS).materialize()


def cooccurrence_matrix(encoded: ray.data.Dataset, vocab_size: int) -> sp.csr_matrix:
    """Word co-occurrence counts over an encoded dataset: per block in Ray tasks, summed on the driver."""

    def per_block(batch: dict) -> dict:
        counts = cooccurrence_counts(batch["ids"], batch["length"], vocab_size=vocab_size).tocoo()
        return {"row": counts.row.astype(np.int32), "col": counts.col.astype(np.int32), "n": counts.data}

    total = sp.csr_matrix((vocab_size, vocab_size), dtype=np.float32)
    partial = encoded.select_columns(["ids", "length"]).map_batches(per_block, batch_format="numpy", batch_size=16384)
    for batch in partial.iter_batches(batch_format="numpy", batch_size=None):
        total += sp.csr_matrix((batch["n"], (batch["row"], batch["col"])), shape=(vocab_size, vocab_size))
    return total
