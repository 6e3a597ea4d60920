"""Batch scoring with Ray Data: Parquet in, Parquet out, every input row in the output.

    ray-sentiment score --model runs/example --input comments/ --output scored/ --id-column id

read_parquet → check and tokenise (CPU tasks) → score (actor pool, the model loaded once per actor,
on GPU with use_gpu) → write_parquet. Streaming execution keeps memory flat as the input grows. A
row whose text cannot be scored keeps its place, with a null label and the reason in `error`.
With an id column, a rerun after a failure skips the ids already written (resume).
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
import ray
from ray.data.datasource import FilenameProvider

from .bundle import ModelBundle, load_bundle
from .data import check_columns, list_input_files
from .errors import DataError, user_message
from .linear import LinearModel
from .outputs import OutputDir, check_apart, open_output
from .predictor import Predictor
from .progress import Reporter, progress
from .results import check_texts, result_columns, result_names
from .runtime import cpus_per_process, ensure_ray
from .settings import Concurrency, ScoreSettings
from .storage import resolve_filesystem
from .text import Encoder, tokenize_batch

# Input columns with these names (or p_*) are kept as input_<name>: the results take them.
RESERVED = (*result_names([]), "error", "_ids", "_length")
BLOCK_BYTES = 1 << 20


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
    check_apart(s.input, files, s.output)
    schema, rows_in, keep = _check_parquet_files(files, s.input, s.text_column, s.id_column, s.columns)
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
        _write_empty(out, schema, keep, renamed, bundle.labels)
    else:
        _run(s, files, keep, renamed, done, bundle, out, rows_in - (0 if done is None else len(done)))
    rows_out, errors = _count_output(out)
    return ScoreSummary(
        rows_in, rows_out, errors, 0 if done is None else len(done), time.perf_counter() - started, renamed
    )


def _run(
    s: ScoreSettings,
    files: list[str],
    keep: list[str],
    renamed: dict,
    done,
    bundle: ModelBundle,
    out: OutputDir,
    rows: int,
) -> None:
    ensure_ray()
    with progress() as reporter:
        reporter.update("scoring", 0, rows)
        _write_scored(s, files, keep, renamed, done, bundle, out, reporter)


def _write_scored(s, files, keep, renamed, done, bundle, out, reporter: Reporter) -> None:
    # Small blocks: every actor gets work, and output files (the unit of resume) are written as
    # the run goes, not all at its end. Ray packs small files into one read task otherwise.
    context = ray.data.DataContext.get_current()
    default_block_size, context.target_max_block_size = context.target_max_block_size, BLOCK_BYTES
    try:
        ds = ray.data.read_parquet(files, columns=sorted(set(keep) | {s.text_column}))
        if done is not None and len(done):
            ds = ds.map_batches(_drop_done, fn_args=(s.id_column, done), batch_format="pyarrow")
        scored = score_dataset(
            ds, bundle, s.text_column, keep, renamed, s.batch_size, s.concurrency, s.use_gpu, s.max_text_chars, reporter
        )
        scored.write_parquet(out.shown, filename_provider=FilenameProvider(out.file_prefix, "parquet"))
    except Exception as exc:
        raise DataError(f"scoring {s.input} failed: {user_message(exc)}") from None
    finally:
        context.target_max_block_size = default_block_size


def score_dataset(
    ds: ray.data.Dataset,
    bundle: ModelBundle,
    text_column: str,
    keep: list[str],
    renamed: dict,
    batch_size: int,
    concurrency: Concurrency,
    use_gpu: bool,
    max_text_chars: int,
    reporter: Reporter | None = None,
) -> ray.data.Dataset:
    """check and tokenise (tasks) → score (actor pool): the `keep` columns (renamed) followed by
    label, confidence, p_<label>... and error. Shared by `score` and `evaluate`.

    The bundle travels to the actors through Ray's object store, so on a cluster no node needs
    the model directory on its own disk."""
    pool = _actor_pool(concurrency)
    encoder = Encoder(bundle.vocab, bundle.tokenizer.max_len)
    tokenised = ds.map_batches(
        _tokenise,
        fn_args=(text_column, keep, renamed, encoder, bundle.linear, max_text_chars),
        batch_format="pyarrow",
        batch_size=batch_size,
    )
    return tokenised.map_batches(
        _Scorer,
        fn_constructor_args=(bundle, "cuda" if use_gpu else "cpu", reporter),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=pool,
        num_gpus=1 if use_gpu else 0,
        num_cpus=cpus_per_process(pool.max_size, use_gpu),
    )


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


def _actor_pool(concurrency: Concurrency) -> ray.data.ActorPoolStrategy:
    if isinstance(concurrency, int):
        return ray.data.ActorPoolStrategy(size=concurrency)
    return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])


def _check_parquet_files(
    files: list[str], path: str, text_column: str, id_column: str | None, columns: tuple[str, ...] | None
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


def result_fields(labels: list[str]) -> list[pa.Field]:
    """The columns `score` adds after the input's, with their Parquet types."""
    kinds = {"label": pa.string(), "error": pa.string()}
    return [pa.field(name, kinds.get(name, pa.float32())) for name in [*result_names(labels), "error"]]


def _write_empty(out: OutputDir, schema: pa.Schema, keep: list[str], renamed: dict, labels: list[str]) -> None:
    """0 rows in: one empty file with the columns a non-empty run would write, so readers still work."""
    fields = [pa.field(renamed.get(c, c), schema.field(c).type) for c in keep] + result_fields(labels)
    pq.write_table(pa.schema(fields).empty_table(), f"{out.path}/{out.file_prefix}_empty.parquet", filesystem=out.fs)


def _drop_done(batch: pa.Table, id_column: str, done) -> pa.Table:
    ids = batch[id_column].to_numpy(zero_copy_only=False)
    return batch.filter(pa.array(~np.isin(ids, done)))


def _texts(column: pa.ChunkedArray) -> list:
    """Python values of the text column; bytes (a binary column, or a string column holding bytes
    that are not UTF-8) stay bytes, for `check_texts` to decode or refuse."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        return column.cast(pa.binary()).to_pylist()


def _tokenise(
    batch: pa.Table,
    text_column: str,
    keep: list[str],
    renamed: dict,
    encoder: Encoder,
    linear: LinearModel | None,
    max_text_chars: int,
) -> pa.Table:
    """The CPU side: checks, token ids and, for a hybrid bundle, the linear model's probabilities."""
    good, problems = check_texts(_texts(batch[text_column]), max_text_chars)
    ok = np.array([p is None for p in problems], dtype=bool)
    ids = np.zeros((len(problems), encoder.max_len), dtype=np.int32)
    lengths = np.zeros(len(problems), dtype=np.int32)
    tokens = tokenize_batch(good)
    if good:
        ids[ok], lengths[ok] = encoder.encode_tokens(tokens)
    out = batch.select(keep).rename_columns([renamed.get(c, c) for c in keep])
    out = out.append_column("_ids", pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), encoder.max_len))
    out = out.append_column("_length", pa.array(lengths))
    if linear is not None:
        proba = np.zeros((len(problems), linear.intercept.shape[0]), dtype=np.float32)
        if good:
            proba[ok] = linear.predict_proba(tokens)
        out = out.append_column("_linear", pa.FixedSizeListArray.from_arrays(pa.array(proba.ravel()), proba.shape[1]))
    return out.append_column("error", pa.array(problems, pa.string()))


class _Scorer:
    """One per actor: the model is loaded once and reused for every batch."""

    def __init__(self, bundle: ModelBundle, device: str, reporter: Reporter | None):
        self.predictor = Predictor(bundle, device=device)
        self.reporter = reporter
        self.fields = result_fields(self.predictor.labels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        ok = pc.is_null(batch["error"]).to_numpy(zero_copy_only=False)
        ids = _matrix(batch["_ids"], n)
        linear = _matrix(batch["_linear"], n)[ok] if "_linear" in batch.column_names else None
        proba = np.zeros((n, len(self.predictor.labels)), dtype=np.float32)
        proba[ok] = self.predictor.predict_proba_encoded(ids[ok], batch["_length"].to_numpy()[ok], linear)
        out = batch.drop_columns([c for c in ("_ids", "_length", "_linear", "error") if c in batch.column_names])
        values = result_columns(proba, self.predictor.labels)
        for column in self.fields:
            data = batch["error"] if column.name == "error" else pa.array(values[column.name], column.type, mask=~ok)
            out = out.append_column(column, data)
        if self.reporter is not None:
            self.reporter.add("scoring", n)
        return out


def _matrix(column: pa.ChunkedArray, rows: int) -> np.ndarray:
    """A fixed-size list column as a [rows, size] array."""
    return column.combine_chunks().flatten().to_numpy().reshape(rows, -1)


def _count_output(out: OutputDir) -> tuple[int, int]:
    """Rows and rows with errors in this run's files and those of the runs it resumed."""
    rows = errors = 0
    for f in out.fs.get_file_info(pafs.FileSelector(out.path, allow_not_found=True)):
        if f.type == pafs.FileType.File and out.owned(os.path.basename(f.path)):
            error = pq.read_table(f.path, columns=["error"], filesystem=out.fs)["error"]
            rows += len(error)
            errors += len(error) - error.null_count
    return rows, errors
