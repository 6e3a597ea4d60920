"""Input files, checked before Ray starts: they exist, they are UTF-8, they have the columns, and
(up to PREFLIGHT_BYTES of them) their labels make sense. A user error is refused in about a
second, with one line. Pure pyarrow: importing this starts nothing and loads neither Ray nor torch.

The same checks run again inside Ray on what is actually read (data/read.py), which also covers inputs
too large to scan here.
"""

from __future__ import annotations

import codecs
import fnmatch
import os
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from .errors import DataError
from .storage import is_uri, resolve_filesystem

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json", ".ndjson": "json"}
PREFLIGHT_BYTES = 1 << 30  # labels are counted before Ray starts in inputs up to this size
LabelCounts = dict  # split value (None without a split column) → Counter of normalised labels
NONE = "(none)"  # what a null group or key is called in metrics and reports


def list_input_files(path: str) -> tuple[str, list[str]]:
    """A file, a directory or a glob, local or any URI pyarrow understands → (format, files)."""
    if is_uri(path):
        prefix = path[: path.index("://") + 3]
        target = path[len(prefix) :]
    else:
        prefix, target = "", os.path.abspath(path)
    pattern = target if is_glob(target) else None
    root = glob_base(target) if pattern else target
    try:
        fs = resolve_filesystem(prefix + root)[0]
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot open {path}: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"no such file or directory: {path}")
    if info.type == pafs.FileType.File:
        files = [root]
    else:
        files = sorted(
            f.path
            for f in found
            if f.type == pafs.FileType.File
            and not os.path.basename(f.path).startswith(("_", "."))
            and (pattern is None or fnmatch.fnmatch(f.path, pattern))
        )
    if not files:
        raise DataError(f"no data files found at {path}")
    odd = [f for f in files if os.path.splitext(f)[1].lower() not in FORMATS]
    if odd:
        raise DataError(f"{odd[0]}: unknown file type; use .parquet, .csv or .jsonl")
    formats = {FORMATS[os.path.splitext(f)[1].lower()] for f in files}
    if len(formats) > 1:
        raise DataError(f"{path} mixes file types ({', '.join(sorted(formats))}); give one type per input")
    return formats.pop(), [prefix + f for f in files]


NEWLINE = b"\n"


def check_utf8(path: str, chunk: int = 1 << 20) -> None:
    """A CSV or JSONL file that is not UTF-8 (say, saved as latin-1 by a spreadsheet) is refused
    here, with the place of the first bad byte, instead of failing deep inside a Ray read task."""
    fs, inner = resolve_filesystem(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with fs.open_input_stream(inner) as stream:
        while True:
            data = stream.read(chunk)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                line = f", line {data.count(NEWLINE, 0, exc.start) + 1}" if not offset else ""
                raise DataError(
                    f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                    f"{offset + exc.start:,}{line}; save it as UTF-8 (it may be latin-1 or cp1252)"
                ) from None
            if not data:
                return
            offset += len(data)


def is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def glob_base(pattern: str) -> str:
    """The directory a glob starts from; a path without wildcards is its own base."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            return "/".join(parts[:i]) or ("/" if pattern.startswith("/") else ".")
    return pattern


def check_columns(names: list[str], wanted: list[str], path: str) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(f"{path} has no column {', '.join(map(repr, missing))}; columns are: {', '.join(names)}")


def is_text(kind: pa.DataType, null_too: bool = True) -> bool:
    """A column of strings (or, with `null_too`, one that holds only nulls)."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or (null_too and pa.types.is_null(kind))


def check_text_column(schema: pa.Schema, text_column: str, path: str) -> None:
    kind = schema.field(text_column).type
    if not is_text(kind):
        raise DataError(f"{path}: column {text_column!r} holds {kind}, not text")


def normalised_labels(labels: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Labels stripped and lower-cased (" Positive" and "positive" are one class), and which of
    them count: not null, not empty."""
    normal = pc.utf8_lower(pc.utf8_trim_whitespace(labels.cast(pa.string())))
    return normal, pc.fill_null(pc.greater(pc.utf8_length(normal), 0), False)


def labelled_rows(
    batch: pa.Table,
    text_column: str,
    *,
    label_column: str | None,
    split_column: str | None = None,
    group_column: str | None = None,
) -> pa.Table:
    """The rows with a non-blank text and, unless `label_column` is None, a label: columns `text`,
    `label` (normalised), `split` (text) and `group` (text, NONE where null) as asked for.
    Called per block inside Ray (data/read.py) and on a whole table in-process (evaluate)."""
    text = batch[text_column].cast(pa.string())
    keep = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    if label_column is None:
        return pa.table({"text": text.filter(pc.fill_null(keep, False))})
    label, labelled = normalised_labels(batch[label_column])
    keep = pc.fill_null(pc.and_kleene(keep, labelled), False)
    out = {"text": text.filter(keep), "label": label.filter(keep)}
    if split_column:
        out["split"] = batch[split_column].cast(pa.string()).filter(keep)
    if group_column:
        out["group"] = pc.fill_null(batch[group_column].cast(pa.string()), NONE).filter(keep)
    return pa.table(out)


def rows_in_split(batch: pa.Table, values: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> pa.Table:
    """The rows whose `split` is one of `values` (all of them if None) and none of `exclude`,
    without the `split` column."""
    split = batch["split"]
    mask = pc.fill_null(pc.is_in(split, pa.array(values, pa.string())), False) if values else None
    if exclude:
        outside = pc.invert(pc.fill_null(pc.is_in(split, pa.array(exclude, pa.string())), False))
        mask = outside if mask is None else pc.and_(mask, outside)
    return (batch if mask is None else batch.filter(mask)).drop_columns(["split"])


def check_labelled(
    path: str,
    text_column: str,
    *,
    label_column: str | None = None,
    split_column: str | None = None,
    group_column: str | None = None,
) -> LabelCounts | None:
    """Files, encoding, columns and the text column's type; then, for an input of at most
    PREFLIGHT_BYTES, the normalised labels counted per split value. None: labels not counted.
    A `group_column` is only checked to be there."""
    fmt, files = list_input_files(path)
    if fmt != "parquet":
        for f in files:
            check_utf8(f)
    columns = [c for c in (text_column, label_column, split_column) if c]
    dataset, size = open_dataset(fmt, files, columns=columns, path=path)
    check_columns(dataset.schema.names, [*columns, *([group_column] if group_column else [])], path)
    check_text_column(dataset.schema, text_column, path)
    if label_column is None or size > PREFLIGHT_BYTES:
        return None
    counts: LabelCounts = {}
    try:
        for batch in dataset.to_batches(columns=[label_column] + ([split_column] if split_column else [])):
            labels, keep = normalised_labels(batch.column(0))
            splits = batch.column(1).cast(pa.string()).filter(keep).to_pylist() if split_column else None
            for split, label in zip(splits or [None] * batch.num_rows, labels.filter(keep).to_pylist()):
                counts.setdefault(split, Counter())[label] += 1
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return counts


def open_dataset(fmt: str, files: list[str], *, columns: list[str], path: str) -> tuple[pads.Dataset, int]:
    """A pyarrow dataset over the files (CSV columns read as text, as data/read.py reads them) and their size."""
    fs = resolve_filesystem(files[0])[0]
    inner = [resolve_filesystem(f)[1] for f in files]
    if fmt == "csv":
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns})
        file_format: pads.FileFormat | str = pads.CsvFileFormat(convert_options=convert)
    else:
        file_format = fmt
    try:
        dataset = pads.dataset(inner, format=file_format, filesystem=fs)
        size = sum(info.size or 0 for info in fs.get_file_info(inner))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return dataset, size


# The label checks of training data, on counts: made before Ray starts on what fits in
# PREFLIGHT_BYTES (train/checks.py), and again inside Ray on what was read (train/prepare.py).


def check_split_has_rows(
    found: Counter, path: str, *, split_column: str | None, values: tuple[str, ...] | None
) -> None:
    if split_column and not found:
        raise DataError(f"{path}: no row has {split_column} in {', '.join(values or ())}")


def check_validation_rows(rows: int, split_column: str | None, val_split: tuple[str, ...] | None) -> None:
    if rows == 0:
        where = f"no row has {split_column} in {', '.join(val_split or ())}" if val_split else "it is empty"
        raise DataError(f"no validation rows: {where}; give --val, --val-split or more training rows")


def check_known_labels(found: set[str], known: set[str], *, rows: str, known_as: str = "the training data") -> None:
    """`rows` (e.g. "val.csv") may hold no label outside `known`."""
    unknown = found - known
    if unknown:
        raise DataError(f"{rows} has labels not in {known_as}: {', '.join(sorted(unknown))}")


def require_classes(counts: Counter, path: str) -> None:
    if len(counts) < 2:
        found = next(iter(counts), None)
        raise DataError(
            f"{path} has {'only the label ' + repr(found) if found else 'no labelled rows'}; "
            "training needs at least two classes"
        )


def total(counts: LabelCounts, values: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> Counter:
    """Label counts over the split values named (all if None), less those excluded."""
    out: Counter = Counter()
    for split, c in counts.items():
        if (values is None or split in values) and split not in exclude:
            out.update(c)
    return out
