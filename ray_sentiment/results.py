"""One check for texts and one shape for results, shared by every runtime (predict, score, serve,
stream), so that the same text gets the same answer, or the same refusal, everywhere.

A scored text becomes `label`, `confidence` and one `p_<label>` per class (float32 probabilities);
a refused one gets `error`, a reason in words, and nulls for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

# The longest comment the big platforms accept (Reddit: 10,000 characters). The model reads only the
# first `max_len` tokens, so longer texts cost tokenising time and add nothing.
MAX_TEXT_CHARS = 10_000


def text_problem(value: object, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Why a value cannot be scored, or None when it can. Bytes are taken as UTF-8."""
    if value is None:
        return "text is null"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return "text is not valid UTF-8"
    if not isinstance(value, str):
        return f"text is {type(value).__name__}, not a string"
    if not value.isascii():
        try:  # a lone surrogate ("\ud800" in JSON, or undecodable bytes in a command's arguments)
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text is not valid UTF-8"
    if len(value) > max_chars:
        return f"text is {len(value):,} characters, more than --max-text-chars {max_chars:,}"
    if not value.strip():
        return "text is empty"
    return None


def check_texts(values: Sequence[object], max_chars: int = MAX_TEXT_CHARS) -> tuple[list[str], list[str | None]]:
    """(the texts that can be scored, in order, as str; each value's problem or None)."""
    problems = [text_problem(v, max_chars) for v in values]
    good = [v.decode("utf-8") if isinstance(v, bytes) else v for v, p in zip(values, problems) if p is None]
    return good, problems  # type: ignore[return-value]  # text_problem passed only str and UTF-8 bytes


def result_names(labels: Sequence[str]) -> list[str]:
    return ["label", "confidence", *(f"p_{label}" for label in labels)]


def result_columns(proba: np.ndarray, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Probabilities [n, classes] → one array per result field (label as object array of str)."""
    best = proba.argmax(axis=1)
    columns = {
        "label": np.asarray(labels, dtype=object)[best],
        "confidence": proba[np.arange(len(proba)), best].astype(np.float32),
    }
    for i, label in enumerate(labels):
        columns[f"p_{label}"] = proba[:, i].astype(np.float32)
    return columns


def result_records(proba: np.ndarray, labels: Sequence[str]) -> list[dict]:
    """One dict per row: label (str), confidence and p_<label> (float, the float32 value exactly)."""
    columns = result_columns(proba, labels)
    names = list(columns)
    values = [columns[n].tolist() for n in names]
    return [dict(zip(names, row)) for row in zip(*values)]


def refused(labels: Sequence[str], reason: str) -> dict:
    """The record of a text that was not scored: every result field null, and why."""
    return {**dict.fromkeys(result_names(labels)), "error": reason}


SOURCE_COLUMNS = ("source_file", "source_row")  # `score` without --id-column: where each row came from


def result_fields(labels: list[str]) -> list[pa.Field]:
    """The columns `score` adds after the input's, with their Parquet types."""
    kinds = {"label": pa.string(), "error": pa.string()}
    return [pa.field(name, kinds.get(name, pa.float32())) for name in [*result_names(labels), "error"]]
