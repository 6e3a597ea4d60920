"""Batch scoring with Ray Data: Parquet in, Parquet out, every input row in the output.

read_parquet → tokenise (CPU tasks) → score (actor pool, the model loaded once per actor, on GPU
with use_gpu) → write_parquet. Streaming execution keeps memory flat as the input grows. A row
whose text cannot be scored keeps its place, with a null sentiment and the reason in `error`.
With an id column, a rerun after a failure skips the ids already written (resume).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from .bundle import ModelBundle, load_bundle
from .data import check_columns, list_input_files, user_message
from .errors import ConfigError, DataError
from .predictor import Predictor, text_problem
from .runtime import cpus_per_process, ensure_ray
from .storage import resolve_filesystem
from .text import encode_batch, vocab_index

RESULT_COLUMNS = ("sentiment", "confidence", "error")
BLOCK_BYTES = 1 << 20


@dataclass
class ScoreSummary:
    rows_in: int
    rows_out: int
    rows_with_errors: int
    rows_skipped_as_done: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return (self.rows_in - self.rows_skipped_as_done) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"rows in {self.rows_in}, rows out {self.rows_out}, rows with errors {self.rows_with_errors}, "
                f"already done {self.rows_skipped_as_done}, {self.seconds:.1f} s, {self.rows_per_s:,.0f} rows/s")


def parse_concurrency(value: str | int | tuple, option: str = "--concurrency") -> int | tuple[int, int]:
    """'4' → 4 actors (or replicas); '1,4' → autoscaling between 1 and 4."""
    if isinstance(value, (int, tuple)):
        return value
    parts = [p.strip() for p in str(value).split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{option} takes N or MIN,MAX, not {value!r}") from None
    if len(numbers) not in (1, 2) or min(numbers) < 1 or (len(numbers) == 2 and numbers[0] > numbers[1]):
        raise ConfigError(f"{option} takes N or MIN,MAX with 1 <= MIN <= MAX, not {value!r}")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])


def score_parquet(
    model: str,
    input: str,
    output: str,
    text_column: str = "text",
    id_column: str | None = None,
    columns: list[str] | None = None,
    batch_size: int = 1024,
    concurrency: int | tuple[int, int] | str = 1,
    use_gpu: bool = False,
    overwrite: bool = False,
) -> ScoreSummary:
    started = time.perf_counter()
    bundle = load_bundle(model)  # a broken bundle fails here, before any Ray work
    concurrency = parse_concurrency(concurrency)
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    fmt, files = list_input_files(input)
    if fmt != "parquet":
        raise DataError(f"{input} holds {fmt} files; score reads Parquet")
    schema, rows_in = _check_input(files, input, text_column, id_column, columns)
    keep = [c for c in (columns or schema.names) if c not in RESULT_COLUMNS and not c.startswith("p_")]
    if id_column and id_column not in keep:
        keep.insert(0, id_column)
    fs, out_dir = resolve_filesystem(output)
    done = _prepare_output(fs, out_dir, output, overwrite, id_column)

    ensure_ray()
    # Small blocks: every actor gets work, and output files (the unit of resume) are written as
    # the run goes, not all at its end. Ray packs small files into one read task otherwise.
    context = ray.data.DataContext.get_current()
    default_block_size, context.target_max_block_size = context.target_max_block_size, BLOCK_BYTES
    try:
        pipeline = _pipeline(files, keep, text_column, id_column, done, bundle, batch_size,
                             _actor_pool(concurrency), use_gpu)
        pipeline.write_parquet(output)
    except Exception as exc:
        raise DataError(f"scoring {input} failed: {user_message(exc)}") from None
    finally:
        context.target_max_block_size = default_block_size
    rows_out, errors = _count_output(fs, out_dir)
    return ScoreSummary(rows_in, rows_out, errors, 0 if done is None else len(done), time.perf_counter() - started)


def _pipeline(files, keep, text_column, id_column, done, bundle, batch_size, pool, use_gpu) -> ray.data.Dataset:
    """read → drop ids already done → tokenise (tasks) → score (actor pool).

    The bundle travels to the actors through Ray's object store, so on a cluster no node needs
    the model directory on its own disk."""
    ds = ray.data.read_parquet(files, columns=sorted(set(keep) | {text_column}))
    if done is not None and len(done):
        ds = ds.map_batches(_drop_done, fn_args=(id_column, done), batch_format="pyarrow")
    tokenised = ds.map_batches(
        _tokenise, fn_args=(text_column, keep, vocab_index(bundle.vocab), bundle.tokenizer.max_len),
        batch_format="pyarrow", batch_size=batch_size,
    )
    return tokenised.map_batches(
        _Scorer, fn_constructor_args=(bundle, "cuda" if use_gpu else "cpu"), batch_format="pyarrow",
        batch_size=batch_size, compute=pool, num_gpus=1 if use_gpu else 0,
        num_cpus=cpus_per_process(pool.max_size, use_gpu),
    )


def _actor_pool(concurrency: int | tuple[int, int]) -> ray.data.ActorPoolStrategy:
    if isinstance(concurrency, int):
        return ray.data.ActorPoolStrategy(size=concurrency)
    return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])


def _check_input(files: list[str], path: str, text_column: str, id_column: str | None,
                 columns: list[str] | None) -> tuple[pa.Schema, int]:
    """Every file readable, every asked-for column present, checked before any work starts.
    Returns the schema and the number of rows (from the files' footers)."""
    schema, rows = None, 0
    for f in files:
        fs, inner = resolve_filesystem(f)
        try:
            metadata = pq.read_metadata(inner, filesystem=fs)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{f} is not a readable Parquet file: {exc}") from None
        schema = schema or metadata.schema.to_arrow_schema()
        rows += metadata.num_rows
    wanted = [text_column] + ([id_column] if id_column else []) + list(columns or [])
    check_columns(schema.names, wanted, path)
    return schema, rows


def _prepare_output(fs, out_dir: str, output: str, overwrite: bool, id_column: str | None) -> np.ndarray | None:
    """Refuse to mix two runs' outputs; with an id column, collect the ids a failed run already wrote."""
    info = fs.get_file_info(out_dir)
    if info.type == pafs.FileType.File:
        raise DataError(f"output {output} is a file; give a directory")
    if info.type == pafs.FileType.NotFound:
        return None
    existing = [f for f in fs.get_file_info(pafs.FileSelector(out_dir, recursive=True)) if f.type == pafs.FileType.File]
    if not existing:
        return None
    if overwrite:
        fs.delete_dir_contents(out_dir)
        return None
    if not id_column:
        raise DataError(f"output {output} already holds files; pass --overwrite to replace them, "
                        "or --id-column to resume a run that stopped halfway")
    done = []
    for f in existing:
        try:
            done.append(pq.read_table(f.path, columns=[id_column], filesystem=fs)[id_column])
        except (pa.ArrowException, OSError, KeyError):
            fs.delete_file(f.path)  # cut short by the failure: its rows are scored again
    return np.unique(pa.chunked_array([c for t in done for c in t.chunks]).to_numpy(zero_copy_only=False)) if done else None


def _drop_done(batch: pa.Table, id_column: str, done) -> pa.Table:
    ids = batch[id_column].to_numpy(zero_copy_only=False)
    return batch.filter(pa.array(~np.isin(ids, done)))


def _texts(column: pa.ChunkedArray) -> list:
    """Python values of the text column; bytes that are not UTF-8 stay bytes (and get an error)."""
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [_decode(v) for v in column.to_pylist()]
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        return [_decode(v) for v in column.cast(pa.binary()).to_pylist()]


def _decode(value: bytes | None):
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _tokenise(batch: pa.Table, text_column: str, keep: list[str], vocab: dict, max_len: int) -> pa.Table:
    texts = _texts(batch[text_column])
    problems = [text_problem(t) if not isinstance(t, bytes) else "text is not valid UTF-8" for t in texts]
    ok = np.array([p is None for p in problems], dtype=bool)
    ids = np.zeros((len(texts), max_len), dtype=np.int32)
    lengths = np.zeros(len(texts), dtype=np.int32)
    if ok.any():
        ids[ok], lengths[ok] = encode_batch([t for t, good in zip(texts, ok) if good], vocab, max_len)
    out = batch.select(keep)
    out = out.append_column("_ids", pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), max_len))
    out = out.append_column("_length", pa.array(lengths))
    return out.append_column("error", pa.array(problems, pa.string()))


class _Scorer:
    """One per actor: the model is loaded once and reused for every batch."""

    def __init__(self, bundle: ModelBundle, device: str):
        self.predictor = Predictor(bundle, device=device)
        self.labels = np.array(self.predictor.labels, dtype=object)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n, k = batch.num_rows, len(self.labels)
        ok = pc.is_null(batch["error"]).to_numpy(zero_copy_only=False)
        ids = batch["_ids"].combine_chunks().flatten().to_numpy().reshape(n, -1)
        proba = np.zeros((n, k), dtype=np.float32)
        proba[ok] = self.predictor.predict_proba_encoded(ids[ok], batch["_length"].to_numpy()[ok])
        best = proba.argmax(axis=1)
        mask = ~ok
        out = batch.drop_columns(["_ids", "_length", "error"])
        out = out.append_column("sentiment", pa.array(self.labels[best], pa.string(), mask=mask))
        out = out.append_column("confidence", pa.array(proba[np.arange(n), best], pa.float32(), mask=mask))
        for i, label in enumerate(self.labels):
            out = out.append_column(f"p_{label}", pa.array(proba[:, i], pa.float32(), mask=mask))
        return out.append_column("error", batch["error"])


def _count_output(fs, out_dir: str) -> tuple[int, int]:
    rows = errors = 0
    for f in fs.get_file_info(pafs.FileSelector(out_dir, recursive=True, allow_not_found=True)):
        if f.type == pafs.FileType.File and f.path.endswith(".parquet"):
            error = pq.read_table(f.path, columns=["error"], filesystem=fs)["error"]
            rows += len(error)
            errors += len(error) - error.null_count
    return rows, errors
