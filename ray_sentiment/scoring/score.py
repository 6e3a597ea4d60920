"""`ray-sentiment score`: Parquet in, Parquet out, every input row in the output.

    ray-sentiment score --model runs/example --input comments/ --output scored/ --id-column id

Everything is checked here before Ray starts (bundle, files, schemas, ids, the output directory);
scoring/pipeline.py then runs the Ray Data pipeline, or, for a small local input, the same steps in
this process without starting Ray. A row whose text cannot be scored keeps its place, with a
null label and the reason in `error`. With an id column, a rerun after a failure skips the ids
already written (resume); without one, each row carries `source_file` and `source_row`, so that
results can be joined back to the input (output order is not the input's).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import DataError
from ..inputs import check_columns, list_input_files
from ..model.bundle import load_bundle
from ..outputs import WRITES, OutputDir, check_apart, open_output
from ..results import SOURCE_COLUMNS, result_fields, result_names
from ..runtime import in_process
from ..settings import ScoreSettings
from ..storage import resolve_filesystem

# Input columns with these names (or p_*) are kept as input_<name>: the results take them.
RESERVED = (*result_names([]), "error", "_ids", "_length", *SOURCE_COLUMNS)


@dataclass
class ScoreSummary:
    rows_in: int
    rows_out: int
    rows_with_errors: int
    rows_skipped_as_done: int
    seconds: float
    renamed: dict = field(default_factory=dict)  # input column → its name in the output

    @property
    def rows_per_s(self) -> float:
        return (self.rows_in - self.rows_skipped_as_done) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        note = "".join(f"; input column {a!r} written as {b!r}" for a, b in self.renamed.items())
        return (
            f"rows in {self.rows_in}, rows out {self.rows_out}, rows with errors {self.rows_with_errors}, "
            f"already done {self.rows_skipped_as_done}, {self.seconds:.1f} s, {self.rows_per_s:,.0f} rows/s{note}"
        )


def score_parquet(settings: ScoreSettings) -> ScoreSummary:
    """Every check (bundle, files, schemas, ids, output directory) runs before Ray starts."""
    s, started = settings, time.perf_counter()
    bundle = load_bundle(s.model)
    fmt, files = list_input_files(s.input)
    if fmt != "parquet":
        raise DataError(f"{s.input} holds {fmt} files; score reads Parquet")
    check_apart(s.input, files, output=s.output, writes=WRITES)
    here = in_process(s.input, files) and not s.use_gpu  # a small local input: no Ray to start
    schema, rows_in, keep = _check_parquet_files(
        files, s.input, text_column=s.text_column, id_column=s.id_column, columns=s.columns
    )
    resume_by = s.id_column if s.id_column and not s.allow_duplicate_ids else None
    if s.id_column:
        _check_ids(files, s.id_column, s.allow_duplicate_ids)
    renamed = renamed_columns(keep)
    out = open_output(s.output)
    done = None
    if out.files and s.overwrite:
        out.delete_previous()
    elif out.files and resume_by:
        done = _done_ids(out, renamed.get(resume_by, resume_by))
    elif out.files:
        raise DataError(
            f"output {s.output} already holds a previous run's output; pass --overwrite to replace it, "
            "or --id-column to resume a run that stopped halfway"
        )
    out.claim(keep_previous=done is not None)
    if rows_in == 0:
        _write_empty(out, schema, keep=keep, renamed=renamed, labels=bundle.labels, id_column=s.id_column)
    else:
        # Ray and torch are imported only now, the input checked.
        from .pipeline import Columns, FilesToScore, score_files

        # Lineage travels under names no input column has, and takes its output names last: an
        # input column named source_file is kept as input_source_file beside it.
        taken = {*keep, s.text_column}
        lineage = {} if s.id_column else {_unused(c, taken): out_name for c, out_name in zip(LINEAGE, SOURCE_COLUMNS)}
        todo = rows_in - (0 if done is None else len(done))
        columns = Columns(s.text_column, (*keep, *lineage), {**renamed, **lineage})
        score_files(s, FilesToScore(files, columns, tuple(lineage), done, todo), bundle=bundle, out=out, here=here)
    rows_out, errors = _count_output(out)
    return ScoreSummary(
        rows_in, rows_out, errors, 0 if done is None else len(done), time.perf_counter() - started, renamed
    )


LINEAGE = ("_source_file", "_source_row")  # what the reader calls SOURCE_COLUMNS, unless an input column does


def _unused(name: str, taken: set[str]) -> str:
    while name in taken:
        name = f"_{name}"
    return name


def renamed_columns(keep: list[str]) -> dict[str, str]:
    """Input columns whose names the results take (`label`, `p_positive`, ...) → `input_<name>`."""
    renamed, taken = {}, set(keep)
    for name in keep:
        if name in RESERVED or name.startswith("p_"):
            new = f"input_{name}"
            while new in taken:
                new = f"input_{new}"
            renamed[name] = new
            taken.add(new)
    return renamed


def _check_parquet_files(
    files: list[str], path: str, *, text_column: str, id_column: str | None, columns: tuple[str, ...] | None
) -> tuple[pa.Schema, int, list[str]]:
    """Every file readable, holding every column used, with the same types as the first file.
    Returns the first file's schema, the number of rows (from the files' footers) and the columns
    to keep (`columns`, or all of the first file's, with the id column first)."""
    first: tuple[str, pa.Schema] | None = None
    rows, keep, used = 0, None, []
    for f in files:
        fs, inner = resolve_filesystem(f)
        try:
            metadata = pq.read_metadata(inner, filesystem=fs)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{f} is not a readable Parquet file: {exc}") from None
        schema = metadata.schema.to_arrow_schema()
        if keep is None:
            keep = list(columns or schema.names)
            if id_column and id_column not in keep:
                keep.insert(0, id_column)
            used = list(dict.fromkeys([text_column, *keep]))
        check_columns(schema.names, used, f if len(files) > 1 else path)
        first = first or (f, schema)
        for name in used:
            a, b = first[1].field(name).type, schema.field(name).type
            if _kind(a) != _kind(b) and not (pa.types.is_null(a) or pa.types.is_null(b)):  # all-null fits any
                raise DataError(f"column {name!r} is {a} in {first[0]} but {b} in {f}; make the files agree")
        rows += metadata.num_rows
    assert first is not None and keep is not None  # `files` is never empty
    return first[1], rows, keep


def _kind(type_: pa.DataType) -> pa.DataType:
    """Types that Ray Data reads together: large and plain strings (or binaries) are one kind."""
    return {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}.get(type_, type_)


def _check_ids(files: list[str], id_column: str, allow_duplicates: bool) -> None:
    """Resume needs every row to have an id, and each id once."""
    parts = [
        pq.read_table(inner, columns=[id_column], filesystem=fs)[id_column]
        for fs, inner in map(resolve_filesystem, files)
    ]
    nulls = [
        (f, int(i))
        for f, part in zip(files, parts)
        if part.null_count
        for i in np.flatnonzero(part.is_null().to_numpy(zero_copy_only=False))
    ]
    if nulls:
        where = ", ".join(f"{os.path.basename(f)} row {i}" for f, i in nulls[:3])
        raise DataError(
            f"--id-column {id_column!r} is null in {len(nulls):,} rows (first: {where}); " "give every row an id"
        )
    if allow_duplicates or not parts:
        return
    counts = pc.value_counts(pa.chunked_array([c for part in parts for c in part.chunks]))
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        shown = ", ".join(f"{v['values']!r} ×{v['counts']}" for v in repeated[:3].to_pylist())
        raise DataError(
            f"--id-column {id_column!r} is not unique: {len(repeated):,} ids appear more than once "
            f"(e.g. {shown}); resume needs unique ids: fix them, or pass --allow-duplicate-ids "
            "to score without resume"
        )


def _done_ids(out: OutputDir, id_column: str) -> np.ndarray:
    """The ids a stopped run already wrote. Its files cut short by the failure are deleted (they are
    this tool's own) and their rows scored again."""
    done = []
    for path in list(out.files):
        try:
            done.append(pq.read_table(path, columns=[id_column], filesystem=out.fs)[id_column])
        except (pa.ArrowException, OSError, KeyError):
            out.fs.delete_file(path)
            out.files.remove(path)
    chunks = [c for t in done for c in t.chunks]
    return np.unique(pa.chunked_array(chunks).to_numpy(zero_copy_only=False)) if chunks else np.array([])


def _write_empty(
    out: OutputDir, schema: pa.Schema, *, keep: list[str], renamed: dict, labels: list[str], id_column: str | None
) -> None:
    """0 rows in: one empty file with the columns a non-empty run would write, so readers still work."""
    fields = [pa.field(renamed.get(c, c), schema.field(c).type) for c in keep] + result_fields(labels)
    if not id_column:
        fields[len(keep) : len(keep)] = [
            pa.field(SOURCE_COLUMNS[0], pa.string()),
            pa.field(SOURCE_COLUMNS[1], pa.int64()),
        ]
    pq.write_table(pa.schema(fields).empty_table(), f"{out.path}/{out.file_prefix}_empty.parquet", filesystem=out.fs)


def _count_output(out: OutputDir) -> tuple[int, int]:
    """Rows and rows with errors in this run's files and those of the runs it resumed."""
    rows = errors = 0
    for f in out.fs.get_file_info(pafs.FileSelector(out.path, allow_not_found=True)):
        if f.type == pafs.FileType.File and out.owned(os.path.basename(f.path)):
            error = pq.read_table(f.path, columns=["error"], filesystem=out.fs)["error"]
            rows += len(error)
            errors += len(error) - error.null_count
    return rows, errors
