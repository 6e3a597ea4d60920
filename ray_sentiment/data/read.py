"""Tables and labelled comments as Ray Datasets: find files, read, check columns, normalise
labels, drop empty rows; shared by training, evaluation and the report.

Aggregates (row and label counts) are computed per block in Ray tasks and only the small partial
results are merged on the driver; texts never travel to the driver.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import ray

from ..errors import user_errors
from ..inputs import check_columns, check_text_column, labelled_rows, list_input_files, rows_in_split


@dataclass
class Split:
    dataset: ray.data.Dataset  # columns: text (str), label (normalised str)
    rows_read: int
    rows_dropped: int

    @property
    def rows(self) -> int:
        return self.rows_read - self.rows_dropped


# Ray Data (2.60) lists Parquet files by reading their footers on a pool of new actors, 32 per
# read by default: sized for buckets of thousands of files. For a few files those processes cost
# more than the read itself (benchmarks/parquet_read.py). One actor per 100 files instead, up to
# Ray's 32, unless the user sized the pool.
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_ACTOR = 100


def read_parquet(files: list[str]) -> ray.data.Dataset:
    if FOOTER_ACTORS_ENV in os.environ:
        return ray.data.read_parquet(files)
    # Ray Data reads the variable as read_parquet builds the read, in this process: set for this call only
    os.environ[FOOTER_ACTORS_ENV] = str(min(32, -(-len(files) // FILES_PER_FOOTER_ACTOR)))
    try:
        return ray.data.read_parquet(files)
    finally:
        del os.environ[FOOTER_ACTORS_ENV]


def read_table(path: str, string_columns: tuple[str, ...] = ()) -> ray.data.Dataset:
    """Read Parquet, CSV or JSONL (chosen by extension) as a Ray Dataset."""
    fmt, files = list_input_files(path)
    with user_errors(f"cannot read {path}: "):
        if fmt == "parquet":
            return read_parquet(files)
        if fmt == "csv":  # never let CSV type inference turn a text column into numbers
            types = {c: pa.string() for c in string_columns}
            return ray.data.read_csv(files, convert_options=pacsv.ConvertOptions(column_types=types))
        return ray.data.read_json(files)


def require_columns(ds: ray.data.Dataset, path: str, *, columns: list[str], text_column: str | None = None) -> None:
    """Fail before any work starts when a column is missing, or the text column holds no strings."""
    with user_errors(f"cannot read {path}: "):
        schema = ds.schema()
    check_columns(schema.names, columns, path)
    if text_column is not None and hasattr(schema, "base_schema"):
        check_text_column(schema.base_schema, text_column, path)


def read_labelled(
    path: str,
    text_column: str = "text",
    *,
    label_column: str | None = "label",
    split_column: str | None = None,
    group_column: str | None = None,
) -> Split:
    """Read, keep text and label, normalise labels (stripped, lower-cased), drop null/empty rows.

    With `label_column=None`, unlabelled comments: only the text is kept. A `split_column` is kept
    as `split` (text), for `load_labelled` to divide the rows by; a `group_column` as `group`
    (text, NONE where null), for per-group metrics."""
    optional = [c for c in (split_column, group_column) if c]
    columns = list(dict.fromkeys([text_column] + ([label_column] if label_column else []) + optional))
    ds = read_table(path, tuple(columns))
    require_columns(ds, path, columns=columns, text_column=text_column)

    clean = partial(
        labelled_rows,
        text_column=text_column,
        label_column=label_column,
        split_column=split_column,
        group_column=group_column,
    )
    with user_errors(f"cannot read {path}: "):
        rows_read = ds.count()
        cleaned = ds.map_batches(clean, batch_format="pyarrow").materialize()
    return Split(cleaned, rows_read, rows_read - cleaned.count())


def label_counts(ds: ray.data.Dataset) -> Counter:
    def per_block(batch: pa.Table) -> pa.Table:
        counts = pc.value_counts(batch["label"])
        return pa.table({"label": counts.field("values"), "n": counts.field("counts")})

    total: Counter[str] = Counter()
    for row in ds.map_batches(per_block, batch_format="pyarrow").iter_rows():
        total[row["label"]] += row["n"]
    return total


def split_rows(ds: ray.data.Dataset, values: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> ray.data.Dataset:
    """The rows whose `split` is one of `values` (all of them if None) and none of `exclude`."""
    select = partial(rows_in_split, values=values, exclude=exclude)
    return ds.map_batches(select, batch_format="pyarrow").materialize()
