"""The Ray Data pipeline of `score` and `evaluate`.

read (each row numbered within its file) → check and tokenise → score (actor pool, the model loaded
once per actor) → write_parquet. Streaming execution keeps memory flat as the input grows.

On CPU each actor tokenises its own batches and runs the model with the threads its share of the
node's CPUs allows: the tokenizer is a small part of the work, and shipping token ids between
processes would cost more than it saves. With use_gpu, CPU tasks tokenise and the GPU actors only
run the model, so every CPU of the node feeds them.
"""

from __future__ import annotations

import functools
import os

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
from ..runtime import cpus_per_process, ensure_ray
from ..settings import Concurrency, ScoreSettings
from ..storage import resolve_filesystem
from ..text.tokens import TOKENISE_ROWS, Encoder, tokenize

BLOCK_BYTES = 1 << 20
READ_ROWS = 8192  # rows per Parquet read, so a large file streams in small blocks


def score_files(
    s: ScoreSettings,
    files: list[str],
    keep: list[str],
    renamed: dict,
    lineage: tuple[str, ...],
    done,
    bundle: ModelBundle,
    out: OutputDir,
    rows: int,
) -> None:
    """Score `files` into `out` (score.score_parquet has checked everything). `lineage`: the
    names, if any, under which the reader gives each row its file and row number."""
    ensure_ray()
    with progress() as reporter:
        reporter.update("scoring", 0, rows)
        _write_scored(s, files, keep, renamed, lineage, done, bundle, out, reporter)


def _write_scored(s, files, keep, renamed, lineage, done, bundle, out, reporter: Reporter) -> None:
    # Small blocks: every actor gets work, and output files (the unit of resume) are written as
    # the run goes, not all at its end. Ray packs small files into one read task otherwise.
    context = ray.data.DataContext.get_current()
    default_block_size, context.target_max_block_size = context.target_max_block_size, BLOCK_BYTES
    try:
        columns = sorted(set(keep) | {s.text_column})
        ds = ray.data.read_datasource(NumberedParquet(files, columns, lineage))
        if done is not None and len(done):
            ds = ds.map_batches(_drop_done, fn_args=(s.id_column, done), batch_format="pyarrow")
        scored = score_dataset(
            ds,
            bundle,
            s.text_column,
            [*keep, *lineage],
            renamed,
            s.batch_size,
            s.concurrency,
            s.use_gpu,
            s.max_text_chars,
            reporter,
        )
        scored.write_parquet(out.target, filename_provider=FilenameProvider(out.file_prefix, "parquet"))
    except Exception as exc:
        cause = user_cause(exc)
        if cause is None:  # a bug: the CLI reports it as one
            raise
        resumable = bool(s.id_column) and not s.allow_duplicate_ids
        raise DataError(f"scoring {s.input} failed: {user_message(cause)}{out.left_by_failure(resumable)}") from None
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
    tokenise_in_tasks: bool | None = None,
) -> ray.data.Dataset:
    """check and tokenise → score (actor pool): the `keep` columns (renamed) followed by label,
    confidence, p_<label>... and error. Shared by `score` and `evaluate`. Tokenising runs in CPU
    tasks of its own when `tokenise_in_tasks` (default: with use_gpu), else in the actors.

    The bundle travels to the actors through Ray's object store, so on a cluster no node needs
    the model directory on its own disk."""
    pool = _actor_pool(concurrency)
    prepare = (
        text_column,
        keep,
        renamed,
        Encoder(bundle.vocab, bundle.tokenizer.max_len),
        bundle.linear,
        max_text_chars,
    )
    in_tasks = use_gpu if tokenise_in_tasks is None else tokenise_in_tasks
    if in_tasks:
        ds = ds.map_batches(_tokenise, fn_args=prepare, batch_format="pyarrow", batch_size=TOKENISE_ROWS)
    return ds.map_batches(
        _Scorer,
        fn_constructor_args=(
            bundle,
            "cuda" if use_gpu else "cpu",
            batch_size,
            None if in_tasks else prepare,
            reporter,
            _threads_per_actor(pool.max_size),
        ),
        batch_format="pyarrow",
        batch_size=batch_size if in_tasks else max(batch_size, TOKENISE_ROWS),
        compute=pool,
        num_gpus=1 if use_gpu else 0,
        num_cpus=cpus_per_process(pool.max_size, use_gpu),
    )


def _threads_per_actor(actors: int) -> int:
    """The CPUs of a node shared among the actors it will hold (actors spread over the nodes)."""
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    per_node = ray.cluster_resources().get("CPU", 1) / nodes
    return max(1, int(per_node // -(-actors // nodes)))


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
    tokens = tokenize(good)
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
    """One per actor: the model is loaded once and reused for every batch. Given `prepare` (the
    arguments of `_tokenise` after the batch), it tokenises its batches itself."""

    def __init__(
        self,
        bundle: ModelBundle,
        device: str,
        batch_size: int,
        prepare: tuple | None,
        reporter: Reporter | None,
        threads: int = 1,
    ):
        if device == "cpu":  # Ray starts a 1-CPU actor with one torch thread; give it its share
            torch.set_num_threads(max(1, min(os.cpu_count() or 1, threads)))
        self.predictor = Predictor(bundle, device=device)
        self.batch_size, self.prepare, self.reporter = batch_size, prepare, reporter
        self.fields = result_fields(self.predictor.labels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.prepare is not None:
            batch = _tokenise(batch, *self.prepare)
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
