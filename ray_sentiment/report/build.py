"""`ray-sentiment report`: how users feel per key (brand, product) and over time, and why.

    ray-sentiment report --input scored/ --time-column created_at --key-column airline --output report/

Ray Data reads only the columns needed; each batch becomes partial counts in its task
(source.py), and the driver adds the partials up as they stream in. It holds counts, never
rows, so 100M rows need no more driver memory than 1M. A small local input (runtime.in_process)
goes through the same partials in this process, without starting Ray. The statistics are
stats.py's; the page, plots and tables are page.py's.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from ..errors import DataError, user_errors
from ..inputs import open_dataset
from ..runtime import ensure_ray, in_process
from ..settings import ReportSettings
from ..storage import failing_as
from ..text.redact import dedupe_key, redact
from .source import COUNTED, EXAMPLES, NO_TIME, ReportInput, partial_counts, partial_examples, partial_words
from .stats import distinctive_words, movers, shares, timeline

EXPLAINED_PER_LABEL = 200  # comments explained per label for the tokens that drove it
DRIVERS = 10  # tokens shown per label
BATCH_ROWS = 131_072  # rows per partial count
MERGE_ROWS = 2_000_000  # partial rows held before they are merged
MAX_KEYS = 20  # keys broken down in words, examples and plots (by most comments); the tables hold all
WORD_CELL = ["key", "label", "word"]


@dataclass
class Report:
    settings: ReportSettings
    rows: int
    unscored: int
    labels: list[str]
    counts: pd.DataFrame  # key, period, label, n (scored rows only)
    label_shares: pd.DataFrame
    key_shares: pd.DataFrame
    timeline: pd.DataFrame = field(default_factory=pd.DataFrame)
    movers: pd.DataFrame = field(default_factory=pd.DataFrame)
    words: pd.DataFrame = field(default_factory=pd.DataFrame)
    examples: pd.DataFrame = field(default_factory=pd.DataFrame)
    drivers: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)  # what the report could not do, and why


def build_report(s: ReportSettings, source: ReportInput) -> Report:
    rows: Rows
    if in_process(s.input, source.files):
        rows = RowsHere(s, source)
    else:
        ensure_ray()
        rows = RowsOnRay(s, source)
    with user_errors(f"{s.input}: "):  # a file that cannot be read, say, found by a Ray task
        return _build(s, source, rows)


Partial = Callable[..., pa.Table]  # source.py's partial_*: (batch, settings, **options) -> table


class Rows(Protocol):
    """The input's rows, as the report reads them: partials of each batch, and a sample of texts."""

    def each_batch(self, partial: Partial, **options) -> Iterator[pa.Table]: ...

    def sample(self, column: str, fraction: float) -> list: ...


class RowsOnRay:
    def __init__(self, s: ReportSettings, source: ReportInput):
        self.s, self.ds = s, _read(s, source)

    def each_batch(self, partial: Partial, **options) -> Iterator[pa.Table]:
        """`partial` in Ray tasks on batches of BATCH_ROWS: the larger the batch, the more rows one
        partial row stands for (Ray Data's default of 1,024 rows would send the driver partials
        nearly as long as the input)."""
        partials = self.ds.map_batches(
            partial, fn_args=(self.s,), fn_kwargs=options, batch_format="pyarrow", batch_size=BATCH_ROWS
        )
        return partials.iter_batches(batch_format="pyarrow", batch_size=None)

    def sample(self, column: str, fraction: float) -> list:
        return self.ds.select_columns([column]).random_sample(fraction, seed=0).to_pandas()[column].tolist()


class RowsHere:
    def __init__(self, s: ReportSettings, source: ReportInput):
        self.s = s
        dataset, _ = open_dataset(source.fmt, source.files, columns=source.columns, path=s.input)
        with failing_as(DataError, f"cannot read {s.input}"):
            self.table = dataset.to_table(columns=source.columns)

    def each_batch(self, partial: Partial, **options) -> Iterator[pa.Table]:
        for start in range(0, self.table.num_rows, BATCH_ROWS):
            yield partial(self.table.slice(start, BATCH_ROWS), self.s, **options)

    def sample(self, column: str, fraction: float) -> list:
        keep = np.random.default_rng(0).random(self.table.num_rows) < fraction
        return self.table[column].filter(pa.array(keep)).to_pylist()


def _build(s: ReportSettings, source: ReportInput, rows_in: Rows) -> Report:
    counts = _summed(rows_in.each_batch(partial_counts, time_format=source.time_format), COUNTED)
    problems = counts["problem"].dropna()
    if len(problems):
        raise DataError(f"{s.input}: {problems.iloc[0]}")
    counts = counts.drop(columns="problem")
    rows = int(counts["n"].sum())
    if rows == 0:
        raise DataError(f"{s.input} has no rows")
    unscored = int(counts.loc[counts["label"] == "", "n"].sum())
    counts = counts[counts["label"] != ""].reset_index(drop=True)
    if counts.empty:
        raise DataError(f"{s.input}: none of its {rows:,} rows has a {s.label_column!r}; is it score's output?")
    labels = sorted(counts["label"].unique())
    report = Report(s, rows, unscored, labels, counts, shares(counts, []), shares(counts, ["key"]))
    if s.time_column:
        dated = counts[counts["period"] != NO_TIME].assign(period=lambda t: pd.to_datetime(t["period"], unit="s"))
        if s.focus_label not in labels:
            raise DataError(
                f"--focus-label {s.focus_label!r} is not among the labels ({', '.join(labels)}); choose one"
            )
        if s.key_column:  # every key's comments together, as key "" ("all")
            dated = pd.concat([dated, dated.assign(key="")], ignore_index=True)
        report.timeline = timeline(dated, s.focus_label)
        report.movers = movers(report.timeline, s.focus_label, freq=s.freq)
    if source.text_column is None:
        report.notes.append("no text column: no distinctive words or examples")
        return report
    keys = report.key_shares.groupby("key")["n"].sum().nlargest(MAX_KEYS).index.tolist()
    if len(report.key_shares["key"].unique()) > MAX_KEYS:
        report.notes.append(
            f"words and examples per {s.key_column} are shown for the {MAX_KEYS} with the most comments; "
            "the counts and shares cover every one"
        )
    options = {"text_column": source.text_column, "keys": keys}
    words = _summed(rows_in.each_batch(partial_words, **options), WORD_CELL)
    report.words = distinctive_words(words, s.min_word_count, s.top_words)
    if source.has_confidence and s.examples:
        report.examples = _examples(s, rows_in.each_batch(partial_examples, **options))
    elif s.examples:
        report.notes.append("no confidence column: no representative comments")
    if s.model:
        report.drivers = _drivers(rows_in, s.model, text_column=source.text_column, rows=rows)
    return report


def _read(s: ReportSettings, source: ReportInput) -> ray.data.Dataset:
    """Only the columns the report uses: on a wide scored file most bytes are never read."""
    from ..data.read import read_parquet, read_table

    if source.fmt == "parquet":
        return read_parquet(source.files).select_columns(source.columns)
    return read_table(s.input, tuple(source.columns)).select_columns(source.columns)


def _summed(partials: Iterator[pa.Table], keys: list[str]) -> pd.DataFrame:
    """The partial counts of every batch added up as they arrive. What the driver holds is bounded
    by the number of distinct groups (cells, or words per key and label), not by the rows."""
    held: list[pa.Table] = []
    rows = 0
    for batch in partials:
        held.append(batch)
        rows += batch.num_rows
        if rows > MERGE_ROWS:
            held = [_merge(held, keys)]
            rows = held[0].num_rows
    return _merge(held, keys).to_pandas() if held else pd.DataFrame(columns=[*keys, "n"])


def _merge(tables: list[pa.Table], keys: list[str]) -> pa.Table:
    merged = pa.concat_tables(tables).group_by(keys).aggregate([("n", "sum")])
    return merged.rename_columns([*keys, "n"])


def _examples(s: ReportSettings, partials: Iterator[pa.Table]) -> pd.DataFrame:
    """The most confident comments per key and label, de-duplicated across batches, masked unless
    --no-redact."""
    candidates = pa.concat_tables([EXAMPLES.empty_table(), *partials]).to_pandas()
    candidates = candidates.sort_values("confidence", ascending=False, kind="stable")
    candidates["dedupe"] = [dedupe_key(t) for t in candidates["text"]]
    chosen = candidates.drop_duplicates(["key", "label", "dedupe"]).groupby(["key", "label"]).head(s.examples)
    shown = [html.unescape(t) for t in chosen["text"]]  # tweets arrive with &amp; for &
    chosen = chosen.assign(text=[redact(t) for t in shown] if s.redact else shown)
    return chosen.drop(columns="dedupe").sort_values(["key", "label", "confidence"], ascending=[True, True, False])


def _drivers(rows_in: Rows, model: str, *, text_column: str, rows: int) -> pd.DataFrame:
    """Per label the model predicts, the tokens that most often contributed most to it, over a
    seeded sample of comments explained by occlusion (Predictor.explain)."""
    from ..model.predictor import Predictor
    from ..results import text_problem

    predictor = Predictor.load(model)
    wanted = 2 * EXPLAINED_PER_LABEL * len(predictor.labels)  # twice: the labels are not equally common
    sample = rows_in.sample(text_column, min(1.0, 2 * wanted / rows))
    texts = [t for t in sample if text_problem(t, predictor.max_text_chars) is None]
    texts = texts[:wanted]
    rows_out = []
    for record in predictor.explain(texts):
        if record["tokens"]:
            top = max(record["tokens"], key=lambda t: t["contribution"])
            if top["contribution"] > 0:
                rows_out.append((record["label"], top["token"], top["contribution"]))
    table = pd.DataFrame(rows_out, columns=["label", "token", "contribution"])
    explained = table.groupby("label").head(EXPLAINED_PER_LABEL)
    drivers = explained.groupby(["label", "token"], as_index=False).agg(
        texts=("contribution", "size"), mean_contribution=("contribution", "mean")
    )
    drivers = drivers.sort_values(["label", "texts", "mean_contribution"], ascending=[True, False, False])
    return drivers.groupby("label").head(DRIVERS).reset_index(drop=True).astype({"mean_contribution": np.float64})
