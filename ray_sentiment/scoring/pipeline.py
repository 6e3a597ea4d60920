"""The Ray Data pipeline of `score` and `evaluate`.

read (each row numbered within its file) → check and tokenise → score (actor pool, the model loaded
once per actor) → write_parquet. Streaming execution keeps memory flat as the input grows. A small
local input (runtime.in_process) goes through the same reader, checks and Scorer in this process.

On CPU each actor tokenises its own batches and runs the model with the threads its share of the
node's CPUs allows: the tokenizer is a small part of the work, and shipping token ids between
processes would cost more than it saves. With use_gpu, CPU tasks tokenise and the GPU actors only
run the model, so every CPU of the node feeds them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, FilenameProvider, ReadTask

from ..errors import DataError, user_cause, user_message
from ..model.bundle import ModelBundle
from ..model.linear import LinearModel
from ..model.predictor import Predictor
from ..outputs import OutputDir
from ..progress import Reporter, progress
from ..results import check_texts, result_columns, result_fields
from ..runtime import cpus_per_process, ensure_ray, task_cpus, threads_per_actor
from ..settings import Concurrency, ScoreSettings
from ..storage import resolve_filesystem
from ..text.tokens import TOKENISE_ROWS, Encoder, tokenize

BLOCK_BYTES = 1 << 20
READ_ROWS = 8192  # rows per Parquet read, so a large file streams in small blocks


@dataclass(frozen=True)
class FilesToScore:
    """What `score` has checked and decided before Ray starts (score.score_parquet)."""

    files: list[str]
    columns: Columns  # the lineage names, if any, among `keep`
    lineage: tuple[str, ...]  # the names under which the reader gives each row its file and row number
    done: np.ndarray | None  # ids already written by an earlier run, skipped
    rows: int  # to score, for the progress line


def score_files(s: ScoreSettings, todo: FilesToScore, *, bundle: ModelBundle, out: OutputDir, here: bool) -> None:
    """Score the files into `out`: on Ray, or with `here` in this process (a small local input)."""
    if not here:
        ensure_ray()
    with progress(here=here) as reporter:
        reporter.update("scoring", 0, todo.rows)
        try:
            (_write_here if here else _write_scored)(s, todo, bundle=bundle, out=out, reporter=reporter)
        except Exception as exc:
            cause = user_cause(exc)
            if cause is None:  # a bug: the CLI reports it as one
                raise
            resumable = bool(s.id_column) and not s.allow_duplicate_ids
            message = f"scoring {s.input} failed: {user_message(cause)}{out.left_by_failure(resumable)}"
            raise DataError(message) from None


def _write_here(s: ScoreSettings, todo: FilesToScore, *, bundle: ModelBundle, out: OutputDir, reporter: Reporter):
    """The actors' reader, checks and Scorer in this process, as `evaluate` scores a small input:
    one output file per input file, each written once its rows are scored (the unit of resume)."""
    tokenising = Tokenising.of(bundle, todo.columns, s.max_text_chars)
    threads = os.cpu_count() or 1
    scorer = Scorer(bundle, "cpu", batch_size=s.batch_size, tokenising=tokenising, reporter=reporter, threads=threads)
    columns = _read_columns(s, todo)
    resume_by = s.id_column if todo.done is not None and len(todo.done) else None  # the ids written before
    for i, path in enumerate(todo.files):
        parts = []
        for batch in _read_numbered(path, columns, todo.lineage):
            if resume_by:
                batch = _drop_done(batch, resume_by, todo.done)
            if batch.num_rows:
                parts.append(scorer(batch))
        if parts:
            pq.write_table(pa.concat_tables(parts), f"{out.path}/{out.file_prefix}_{i}.parquet", filesystem=out.fs)


def _read_columns(s: ScoreSettings, todo: FilesToScore) -> list[str]:
    return sorted((set(todo.columns.keep) - set(todo.lineage)) | {s.text_column})


def _write_scored(s: ScoreSettings, todo: FilesToScore, *, bundle: ModelBundle, out: OutputDir, reporter: Reporter):
    # Small blocks: every actor gets work, and output files (the unit of resume) are written as
    # the run goes, not all at its end. Ray packs small files into one read task otherwise.
    context = ray.data.DataContext.get_current()
    default_block_size, context.target_max_block_size = context.target_max_block_size, BLOCK_BYTES
    try:
        read = _read_columns(s, todo)
        cpus = task_cpus()
        ds = ray.data.read_datasource(NumberedParquet(todo.files, read, todo.lineage), num_cpus=cpus)
        if todo.done is not None and len(todo.done):
            ds = ds.map_batches(_drop_done, fn_args=(s.id_column, todo.done), batch_format="pyarrow", num_cpus=cpus)
        plan = ScoringPlan(
            bundle, todo.columns, s.batch_size, s.concurrency, s.use_gpu, s.max_text_chars, reporter=reporter
        )
        scored = score_dataset(ds, plan)
        names = FilenameProvider(out.file_prefix, "parquet")
        scored.write_parquet(out.target, filename_provider=names, ray_remote_args={"num_cpus": cpus})
    finally:
        context.target_max_block_size = default_block_size


class NumberedParquet(Datasource):
    """Parquet files read in order, one task per file, each row given its file and its row number
    in that file (from 0) under the two `lineage` names, if given: what lets a result be joined
    back to its input row."""

    def __init__(self, files: list[str], columns: list[str], lineage: tuple[str, ...]):
        self.files, self.columns, self.lineage = files, columns, lineage

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        return [
            ReadTask(
                functools.partial(_read_numbered, f, self.columns, self.lineage),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(f,)),
                per_task_row_limit=per_task_row_limit,
            )
            for f in self.files
        ]


def _read_numbered(path: str, columns: list[str], lineage: tuple[str, ...]):
    try:
        yield from _read_file(path, columns, lineage)
    except (OSError, pa.ArrowException) as exc:  # a file damaged past the footer that the checks read
        raise OSError(f"{path}: {exc}".splitlines()[0]) from None


def _read_file(path: str, columns: list[str], lineage: tuple[str, ...]):
    fs, inner = resolve_filesystem(path)
    start = 0
    with fs.open_input_file(inner) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=READ_ROWS, columns=columns):
            table = pa.Table.from_batches([batch])
            if lineage:
                rows = pa.array(np.arange(start, start + table.num_rows, dtype=np.int64))
                table = table.append_column(lineage[0], pa.array([path] * table.num_rows, pa.string()))
                table = table.append_column(lineage[1], rows)
            start += table.num_rows
            yield table


@dataclass(frozen=True)
class Columns:
    """Which input columns the output keeps, and their output names."""

    text: str
    keep: tuple[str, ...]
    renamed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoringPlan:
    """How a dataset is scored: the model, the columns, the batch and actor sizes, and whether CPU
    tasks of their own tokenise (`tokenise_in_tasks`; default: with use_gpu) or the actors do."""

    bundle: ModelBundle
    columns: Columns
    batch_size: int
    concurrency: Concurrency
    use_gpu: bool
    max_text_chars: int
    tokenise_in_tasks: bool | None = None
    reporter: Reporter | None = None

    @property
    def in_tasks(self) -> bool:
        return self.use_gpu if self.tokenise_in_tasks is None else self.tokenise_in_tasks


def score_dataset(ds: ray.data.Dataset, plan: ScoringPlan) -> ray.data.Dataset:
    """check and tokenise → score (actor pool): the kept columns (renamed) followed by label,
    confidence, p_<label>... and error. Shared by `score` and `evaluate`.

    The bundle travels to the actors through Ray's object store, so on a cluster no node needs
    the model directory on its own disk."""
    pool = _actor_pool(plan.concurrency)
    tokenising = Tokenising.of(plan.bundle, plan.columns, plan.max_text_chars)
    if plan.in_tasks:
        ds = ds.map_batches(tokenising, batch_format="pyarrow", batch_size=TOKENISE_ROWS, num_cpus=task_cpus())
    return ds.map_batches(
        Scorer,
        fn_constructor_args=(plan.bundle, "cuda" if plan.use_gpu else "cpu"),
        fn_constructor_kwargs={
            "batch_size": plan.batch_size,
            "tokenising": None if plan.in_tasks else tokenising,
            "reporter": plan.reporter,
            "threads": threads_per_actor(pool.max_size),
        },
        batch_format="pyarrow",
        batch_size=plan.batch_size if plan.in_tasks else max(plan.batch_size, TOKENISE_ROWS),
        compute=pool,
        num_gpus=1 if plan.use_gpu else 0,
        num_cpus=cpus_per_process(pool.max_size, plan.use_gpu),
        # Resilience rests on Ray Data's defaults for an actor pool, max_restarts=-1 and
        # max_task_retries=-1: an actor lost (with its node, say) is started again, on another
        # node if need be, and its batches retried there. Passing them here would only add Ray's
        # deprecation warning for extra remote arguments.
    )


def _actor_pool(concurrency: Concurrency) -> ray.data.ActorPoolStrategy:
    if isinstance(concurrency, int):
        return ray.data.ActorPoolStrategy(size=concurrency)
    return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])


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


@dataclass(frozen=True)
class Tokenising:
    """The CPU side: checks, token ids and, for a hybrid bundle, the linear model's probabilities."""

    columns: Columns
    encoder: Encoder
    linear: LinearModel | None
    max_text_chars: int

    @classmethod
    def of(cls, bundle: ModelBundle, columns: Columns, max_text_chars: int) -> Tokenising:
        """What a bundle's model reads: its vocabulary's ids, and its linear model's probabilities."""
        return cls(columns, Encoder(bundle.vocab, bundle.tokenizer.max_len), bundle.linear, max_text_chars)

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, problems = check_texts(_texts(batch[self.columns.text]), self.max_text_chars)
        ok = np.array([p is None for p in problems], dtype=bool)
        ids = np.zeros((len(problems), self.encoder.max_len), dtype=np.int32)
        lengths = np.zeros(len(problems), dtype=np.int32)
        tokens = tokenize(good)
        if good:
            ids[ok], lengths[ok] = self.encoder.encode_tokens(tokens)
        keep, renamed = list(self.columns.keep), self.columns.renamed
        out = batch.select(keep).rename_columns([renamed.get(c, c) for c in keep])
        out = out.append_column("_ids", pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), self.encoder.max_len))
        out = out.append_column("_length", pa.array(lengths))
        if self.linear is not None:
            proba = np.zeros((len(problems), self.linear.intercept.shape[0]), dtype=np.float32)
            if good:
                proba[ok] = self.linear.predict_proba(tokens)
            linear = pa.FixedSizeListArray.from_arrays(pa.array(proba.ravel()), proba.shape[1])
            out = out.append_column("_linear", linear)
        return out.append_column("error", pa.array(problems, pa.string()))


class Scorer:
    """One per actor (or one in `evaluate`'s own process): the model is loaded once and reused for
    every batch. Given `tokenising`, it tokenises its batches itself."""

    def __init__(
        self,
        bundle: ModelBundle,
        device: str,
        *,
        batch_size: int,
        tokenising: Tokenising | None,
        reporter: Reporter | None,
        threads: int = 1,
    ):
        if device == "cpu":  # Ray starts a 1-CPU actor with one torch thread; give it its share
            torch.set_num_threads(max(1, min(os.cpu_count() or 1, threads)))
        self.predictor = Predictor(bundle, device=device)
        self.batch_size, self.tokenising, self.reporter = batch_size, tokenising, reporter
        self.fields = result_fields(self.predictor.labels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.tokenising is not None:
            batch = self.tokenising(batch)
        n = batch.num_rows
        ok = pc.is_null(batch["error"]).to_numpy(zero_copy_only=False)
        ids, lengths = _matrix(batch["_ids"], n)[ok], batch["_length"].to_numpy()[ok]
        linear = _matrix(batch["_linear"], n)[ok] if "_linear" in batch.column_names else None
        proba = np.zeros((n, len(self.predictor.labels)), dtype=np.float32)
        scored = np.empty((len(ids), proba.shape[1]), dtype=np.float32)
        for start in range(0, len(ids), self.batch_size):
            part = slice(start, start + self.batch_size)
            scored[part] = self.predictor.predict_proba_encoded(
                ids[part], lengths[part], None if linear is None else linear[part]
            )
        proba[ok] = scored
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
