"""Social-media tokenizer and vocabulary: pure functions of their inputs, batch in, arrays out.

Tokens travel as an Arrow list array (one list of strings per text). The rules live in
rules_re.py; large batches run them compiled (rules_arrow.py), small ones through Python's
`re`, which starts faster. Both give the same tokens: tests check it on every shared dataset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import rules_arrow, rules_re

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPECIALS = (PAD, UNK)
COMPILED_FROM = 1024  # texts per call from which the compiled tokenizer is the faster one
TOKENISE_ROWS = 16_384  # rows per tokenising call in Ray Data: the compiled rules' setup is paid per call
TOKENS = pa.list_(pa.large_string())


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 10_000  # embedding rows, the two special tokens included
    max_len: int = 100


def tokenize(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """One list of normalised tokens per text. `texts` must hold strings only (no nulls)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if len(texts) >= COMPILED_FROM:
        array = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.large_string())
        return rules_arrow.split_array(array)
    values = texts.to_pylist() if isinstance(texts, pa.Array) else texts
    return pa.array(rules_re.split_texts(values), TOKENS)


def count_tokens(texts: Sequence[str] | pa.Array) -> Counter:
    counts = pc.value_counts(tokenize(texts).flatten())
    return Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


def build_vocab(counts: Counter, vocab_size: int) -> list[str]:
    """The `vocab_size - 2` most frequent tokens after the specials; ties broken alphabetically."""
    if vocab_size < 3:
        raise ValueError("vocab_size must leave room for at least one word beside <pad> and <unk>")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return list(SPECIALS) + [tok for tok, _ in ranked[: vocab_size - len(SPECIALS)]]


def encode_batch(texts: Sequence[str], vocab: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts → (int32 ids [n, max_len] right-padded with PAD_ID, int32 lengths [n]).

    A text with no tokens at all gets length 0; the model treats it as a single padding step.
    """
    return Encoder(vocab, max_len)(texts)


def vocab_index(tokens: Iterable[str]) -> dict[str, int]:
    return {tok: i for i, tok in enumerate(tokens)}


class Encoder:
    """A vocabulary and a length, ready to encode: built once per model, picklable to Ray tasks."""

    def __init__(self, vocab: Sequence[str], max_len: int):
        self.vocab, self.max_len = list(vocab), max_len
        self.index = vocab_index(self.vocab)
        self._values = pa.array(self.vocab, pa.large_string())

    def __call__(self, texts: Sequence[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_tokens(tokenize(texts))

    def encode_tokens(self, tokens: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
        """`__call__` for texts already split by `tokenize`."""
        n = len(tokens)
        counts = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = tokens.flatten()
        if n >= COMPILED_FROM:  # Arrow's hash lookup: about 0.5 ms to set up, then fast per token
            found = pc.index_in(flat, value_set=self._values)
            token_ids = pc.fill_null(found, UNK_ID).to_numpy().astype(np.int32)
        else:
            get = self.index.get
            token_ids = np.fromiter((get(t, UNK_ID) for t in flat.to_pylist()), np.int32, len(flat))
        position = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        kept = position < self.max_len
        ids = np.zeros((n, self.max_len), dtype=np.int32)
        ids[np.repeat(np.arange(n), counts)[kept], position[kept]] = token_ids[kept]
        return ids, np.minimum(counts, self.max_len).astype(np.int32)
