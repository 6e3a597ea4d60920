"""What `report` reads, checked before Ray starts, and the per-batch partial counts that Ray Data
tasks compute from it. Pure pyarrow: each function takes a batch and returns a small table, so
the driver only ever holds counts, never rows.

Every group_by here passes use_threads=False: Ray Data may call a function from several threads of
one worker, and Acero's threaded grouping then fails ("thread index 10 is out of range").
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from ..inputs import NONE, check_columns, check_utf8, is_text, list_input_files, open_dataset
from ..settings import ReportSettings
from ..text.redact import dedupe_key
from ..text.tokens import tokenize

NO_TIME = -(2**62)  # the period of a row whose time is null
OTHER_KEY = "(other)"  # the keys beyond those broken down in words and examples
COUNTED = ["key", "period", "label", "problem"]  # partial_counts' groups
UNITS = {"H": "hour", "D": "day", "W": "week", "M": "month"}
# Times the report can place on its time axis: a 9999-12-31 placeholder would stretch it past what
# matplotlib draws (and squash every real period into one pixel).
YEARS = (1900, 2200)
WORD = r"^#?\p{L}"  # distinctive words start with a letter: no <url>, numbers, emoji or punctuation
CANDIDATES = 20  # rows per group and batch that may become an example, before de-duplication
EXAMPLES = pa.schema(  # the candidate examples a batch gives
    [("key", pa.string()), ("label", pa.string()), ("text", pa.large_string()), ("confidence", pa.float32())]
)


@dataclass(frozen=True)
class ReportInput:
    """The input's files and what the report can do with its columns."""

    fmt: str
    files: list[str]
    columns: list[str]  # the columns read
    text_column: str | None  # None: no words, no examples
    time_format: str | None  # strptime format of a text time column; None: a timestamp column, or none
    has_confidence: bool


def check_report_input(s: ReportSettings) -> ReportInput:
    """Files, columns and the time column's format, from the schema and the first rows."""
    fmt, files = list_input_files(s.input)
    if fmt != "parquet":
        for f in files:
            check_utf8(f)
    dataset, _ = open_dataset(fmt, files, columns=[], path=s.input)
    names = dataset.schema.names
    text = s.text_column or ("text" if "text" in names else None)
    wanted = [c for c in (s.label_column, s.text_column, s.time_column, s.key_column) if c]
    check_columns(names, wanted, s.input)
    if text and pa.types.is_null(dataset.schema.field(text).type):
        text = None  # no text at all (every value null): the report leaves out words and examples
    if text and not is_text(dataset.schema.field(text).type, null_too=False):
        raise DataError(f"{s.input}: column {text!r} holds {dataset.schema.field(text).type}, not text")
    first = dataset.head(1000, columns=[s.label_column, *([s.time_column] if s.time_column else [])])
    if first.num_rows == 0:
        raise DataError(f"{s.input} has no rows")
    time_format = None
    if s.time_column:
        time_format = _time_format(s, dataset.schema.field(s.time_column).type, first[s.time_column])
    extra = ["confidence"] if text and "confidence" in names else []
    columns = list(dict.fromkeys([*wanted, *([text] if text else []), *extra]))
    return ReportInput(fmt, files, columns, text, time_format, bool(extra))


def _time_format(s: ReportSettings, kind: pa.DataType, sample: pa.ChunkedArray) -> str | None:
    """None for a timestamp or date column; for text, --time-format or the format of the first
    value, checked on the first rows so that a wrong guess is refused before any work."""
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return None
    if not is_text(kind, null_too=False):
        raise DataError(f"time column {s.time_column!r} holds {kind}; give a timestamp or text column")
    fmt = s.time_format
    if fmt is None:
        from pandas.tseries.api import guess_datetime_format

        values = [v for v in sample.to_pylist() if v and v.strip()]
        if not values:
            return "%Y-%m-%dT%H:%M:%S"  # nothing to guess from; a later value that does not parse is refused
        fmt = guess_datetime_format(values[0].strip())
        if fmt is None:
            raise DataError(
                f"time column {s.time_column!r}: cannot tell the format of {values[0]!r}; "
                "give --time-format, e.g. '%Y-%m-%d %H:%M'"
            )
    periods(sample, fmt, freq=s.freq, name=s.time_column or "")
    return fmt


def periods(times: pa.ChunkedArray | pa.Array, fmt: str | None, *, freq: str, name: str) -> pa.Array:
    """Each row's period start (seconds since the epoch; NO_TIME for a null or empty time). Times
    with a zone are counted in UTC. A value that does not parse is a DataError naming it."""
    seconds, problem = parse_periods(times, fmt, freq=freq, name=name)
    if problem is not None:
        raise DataError(problem)
    return seconds


def parse_periods(
    times: pa.ChunkedArray | pa.Array, fmt: str | None, *, freq: str, name: str
) -> tuple[pa.Array, str | None]:
    """`periods`, with a value that does not parse given NO_TIME and named in the message returned."""
    if isinstance(times, pa.ChunkedArray):
        times = times.combine_chunks()
    problem = None
    if fmt is not None:
        text = pc.utf8_trim_whitespace(times)
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text)
        parsed = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
        bad = pc.and_(pc.is_valid(text), pc.is_null(parsed))
        if pc.any(bad).as_py():
            value = text.filter(bad)[0].as_py()
            problem = f"time column {name!r}: {value!r} does not parse as {fmt!r}; give --time-format"
        times = parsed
    elif pa.types.is_date(times.type):
        times = times.cast(pa.timestamp("s"))
    if times.type.tz is not None:
        times = times.cast(pa.timestamp(times.type.unit))  # the same instant, in UTC
    outside = pc.or_(
        pc.less(times, _scalar(YEARS[0], times.type)), pc.greater_equal(times, _scalar(YEARS[1], times.type))
    )
    if pc.any(outside).as_py():
        if problem is None:
            value = times.filter(outside)[0].as_py()
            problem = (
                f"time column {name!r}: {value} is outside the years {YEARS[0]}-{YEARS[1] - 1} the report draws "
                "(a placeholder date?); filter those rows out or fix them"
            )
        times = pc.if_else(outside, pa.scalar(None, times.type), times)
    start = pc.floor_temporal(times, unit=UNITS[freq], week_starts_monday=True)
    seconds = start.cast(pa.timestamp("s")).cast(pa.int64())
    return pc.fill_null(seconds, NO_TIME), problem


def _keys(batch: pa.Table, key_column: str | None) -> pa.Array:
    if key_column is None:
        return pa.array([""] * batch.num_rows, pa.string())
    values = batch[key_column].combine_chunks()
    return pc.fill_null(values if is_text(values.type, null_too=False) else values.cast(pa.string()), NONE).cast(
        pa.string()
    )


def _labels(batch: pa.Table, label_column: str) -> pa.Array:
    return pc.fill_null(batch[label_column].combine_chunks().cast(pa.string()), "")  # "": not scored


def partial_counts(batch: pa.Table, s: ReportSettings, *, time_format: str | None) -> pa.Table:
    """Comments per key, period and label in one batch. A time that does not parse is not raised
    here, where Ray would wrap it in a traceback: the batch's `problem` column names it, and the
    driver refuses the input with that line."""
    period, problem = pa.array([NO_TIME] * batch.num_rows, pa.int64()), None
    if s.time_column:
        period, problem = parse_periods(batch[s.time_column], time_format, freq=s.freq, name=s.time_column)
    table = pa.table(
        {
            "key": _keys(batch, s.key_column),
            "period": period,
            "label": _labels(batch, s.label_column),
            "problem": pa.array([problem] * batch.num_rows, pa.string()),
        }
    )
    counted = table.group_by(COUNTED, use_threads=False).aggregate([([], "count_all")])
    return counted.rename_columns([*COUNTED, "n"])


def _scored_texts(batch: pa.Table, s: ReportSettings, text_column: str, *extra: str) -> pa.Table:
    """The rows with a label and a non-empty text, as key, label, text and the `extra` columns."""
    labels, text = _labels(batch, s.label_column), batch[text_column].combine_chunks().cast(pa.large_string())
    keep = pc.and_(pc.not_equal(labels, ""), pc.fill_null(pc.match_substring_regex(text, r"\S"), False))
    columns = {"key": _keys(batch, s.key_column), "label": labels, "text": text}
    return pa.table({**columns, **{name: batch[name] for name in extra}}).filter(keep)


def partial_words(batch: pa.Table, s: ReportSettings, *, text_column: str, keys: list[str]) -> pa.Table:
    """In how many comments of each key and label each word appears (once per comment); keys not
    in `keys` count together as OTHER_KEY, so the counts stay bounded however many keys there are.
    Words, and key-label cells, become integer codes, so that both countings are one sort of an
    int64 array each, not a hash grouping of strings."""
    rows = _scored_texts(batch, s, text_column)
    shown = pc.is_in(rows["key"], value_set=pa.array(keys, pa.string()))
    key = pc.dictionary_encode(pc.if_else(shown, rows["key"], OTHER_KEY).combine_chunks())
    label = pc.dictionary_encode(rows["label"].combine_chunks())
    labels = len(label.dictionary)
    cell = key.indices.to_numpy().astype(np.int64) * labels + label.indices.to_numpy()
    tokens = tokenize(rows["text"])
    flat, parent = pc.list_flatten(tokens), pc.list_parent_indices(tokens)
    is_word = pc.match_substring_regex(flat, WORD)
    words = pc.dictionary_encode(flat.filter(is_word))
    size = max(1, len(words.dictionary))
    row_word, _ = _unique(parent.filter(is_word).to_numpy().astype(np.int64) * size + words.indices.to_numpy())
    found, n = _unique(cell[row_word // size] * size + row_word % size)
    cells, codes = found // size, found % size
    return pa.table(
        {
            "key": key.dictionary.take(pa.array(cells // labels)).cast(pa.string()),
            "label": label.dictionary.take(pa.array(cells % labels)).cast(pa.string()),
            "word": words.dictionary.take(pa.array(codes)).cast(pa.large_string()),
            "n": pa.array(n, pa.int64()),
        }
    )


def _unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values, sorted, and how often each occurs: np.unique's result, by a sort, which
    on these integer arrays is several times faster than np.unique's hashing."""
    if len(values) == 0:
        return values, np.zeros(0, np.int64)
    ordered = np.sort(values)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return ordered[starts], np.diff(np.r_[starts, len(ordered)])


def partial_examples(batch: pa.Table, s: ReportSettings, *, text_column: str, keys: list[str]) -> pa.Table:
    """Per key and label, the most confident comments of the batch, one per de-duplication key: a
    few more than shown, since the driver de-duplicates again across batches."""
    rows = _scored_texts(batch, s, text_column, "confidence")
    frame = rows.filter(pc.is_in(rows["key"], value_set=pa.array(keys, pa.string()))).to_pandas()
    frame = frame.sort_values("confidence", ascending=False, kind="stable")
    frame = frame.groupby(["key", "label"], sort=False).head(CANDIDATES * max(1, s.examples))
    frame["dedupe"] = [dedupe_key(t) for t in frame["text"]]
    frame = frame.drop_duplicates(["key", "label", "dedupe"]).groupby(["key", "label"], sort=False).head(4 * s.examples)
    return pa.Table.from_pandas(frame.drop(columns="dedupe"), schema=EXAMPLES, preserve_index=False)


def _scalar(year: int, kind: pa.DataType) -> pa.Scalar:
    return pa.scalar(datetime.datetime(year, 1, 1), pa.timestamp("s")).cast(kind)
