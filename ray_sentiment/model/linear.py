"""A linear n-gram model: hashed TF-IDF word 1-2 grams and character 2-5 grams, logistic regression.

It makes different mistakes from the LSTM, so the `hybrid` preset averages the two. Everything it
needs to predict is four arrays (idf weights per block, coefficients, intercepts): no vocabulary, no
pickle. N-grams are hashed with numpy over a whole batch at once, because scikit-learn's character
analyzer runs a Python loop per text and would be slower than the LSTM itself.

Prediction multiplies by the coefficients transposed ([buckets, classes], contiguous, made once):
handed the [classes, buckets] layout, scipy copied all 786k rows on every call. A few texts skip
the sparse matrices too: each text's distinct n-grams are weighed and their coefficient rows summed
directly, so one text costs what its own n-grams cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from ..text.tokens import tokenize

WORD_BITS, CHAR_BITS = 18, 19  # hash buckets: 2^18 word n-grams, 2^19 character n-grams
CHAR_SIZES = (2, 3, 4, 5)
_SEP = 0  # code point between texts; tokens never contain it
_SPACE = 32
_MIX = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit constant (the golden ratio), to spread hashes
_STEP = np.uint64(0x100000001B3)  # the FNV prime, as the polynomial hash's base
# Up to this many texts, summing coefficient rows beats scipy's sparse product, whose conversions
# cost more than a few texts' n-grams (benchmarks/latency.py times the default both ways).
GATHER_TEXTS = 64


@dataclass
class LinearModel:
    """idf: one float32 weight per bucket of each block; coef [classes, buckets]; intercept [classes]."""

    word_idf: np.ndarray
    char_idf: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    @cached_property
    def by_bucket(self) -> np.ndarray:
        """coef.T, contiguous: each bucket's coefficient per class in one row."""
        return np.ascontiguousarray(self.coef.T)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"word_idf": self.word_idf, "char_idf": self.char_idf, "coef": self.coef, "intercept": self.intercept}

    def predict_proba(self, tokens: pa.ListArray) -> np.ndarray:
        """float32 [texts, classes] for texts split by `text.tokenize`."""
        n = len(tokens)
        words, chars = ngram_entries(tokens)
        if n <= GATHER_TEXTS:
            logits = self._gathered(words, n=n, bits=WORD_BITS, idf_weights=self.word_idf, first=0)
            logits += self._gathered(chars, n=n, bits=CHAR_BITS, idf_weights=self.char_idf, first=len(self.word_idf))
        else:
            word_features = tfidf(_counts(*words, n=n, bits=WORD_BITS), self.word_idf)
            char_features = tfidf(_counts(*chars, n=n, bits=CHAR_BITS), self.char_idf)
            logits = sp.hstack([word_features, char_features], format="csr") @ self.by_bucket
        logits = logits + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        return (proba / proba.sum(axis=1, keepdims=True)).astype(np.float32)

    def _gathered(self, entries: Entries, *, n: int, bits: int, idf_weights: np.ndarray, first: int) -> np.ndarray:
        """One block's logits [n, classes], without its feature matrix: each text's distinct buckets
        weighed as `tfidf` weighs them, (1 + log count) times idf scaled to unit length per text,
        times those buckets' coefficient rows (the block's start at row `first`)."""
        rows, buckets = entries
        found, count = np.unique(rows << bits | buckets, return_counts=True)
        row, bucket = found >> bits, found & ((1 << bits) - 1)
        value = (1 + np.log(count, dtype=np.float32)) * idf_weights[bucket]
        norm = np.sqrt(np.bincount(row, value * value, minlength=n)).astype(np.float32)
        value /= np.where(norm > 0, norm, 1)[row]
        contributions = value[:, None] * self.by_bucket[first + bucket]
        return np.stack([np.bincount(row, c, minlength=n) for c in contributions.T], axis=1).astype(np.float32)


def fit_linear(texts: Sequence[str], y: np.ndarray, *, num_classes: int, class_weighted: bool = True) -> LinearModel:
    """Fit on training texts and label ids (0..num_classes-1). Buckets seen in fewer than two texts
    get idf 0, as min_df=2 would drop them."""
    words, chars = ngram_counts(tokenize(texts))
    word_idf, char_idf = idf(words), idf(chars)
    features = sp.hstack([tfidf(words, word_idf), tfidf(chars, char_idf)], format="csr")
    from sklearn.linear_model import LogisticRegression  # only training needs scikit-learn (slow to import)

    lr = LogisticRegression(C=2.0, max_iter=1000, class_weight="balanced" if class_weighted else None)
    lr.fit(features, y)
    coef = np.zeros((num_classes, features.shape[1]), np.float32)
    intercept = np.zeros(num_classes, np.float32)
    if num_classes == 2:  # scikit-learn keeps one row for two classes: the second class's logit
        coef[1], intercept[1] = lr.coef_[0], lr.intercept_[0]
    else:
        coef[lr.classes_], intercept[lr.classes_] = lr.coef_, lr.intercept_
    return LinearModel(word_idf, char_idf, coef, intercept)


WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


def best_weight(lstm: np.ndarray, linear: np.ndarray, y: np.ndarray) -> tuple[float, dict[float, float]]:
    """The share w of `linear` in (1 - w)·lstm + w·linear with the lowest log loss on labels `y`
    (ties: the one nearest 0.5), and every candidate's loss. One number fitted on validation rows."""
    losses = {}
    for w in WEIGHTS:
        p = (1 - w) * lstm[np.arange(len(y)), y] + w * linear[np.arange(len(y)), y]
        losses[w] = float(-np.log(np.clip(p, 1e-12, None)).mean()) if len(y) else 0.0
    return min(WEIGHTS, key=lambda w: (losses[w], abs(w - 0.5))), losses


def idf(counts: sp.csr_matrix) -> np.ndarray:
    """Smoothed inverse document frequency per bucket (scikit-learn's formula); 0 where df < 2."""
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    weights = np.log((1 + counts.shape[0]) / (1 + df)) + 1
    weights[df < 2] = 0
    return weights.astype(np.float32)


def tfidf(counts: sp.csr_matrix, weights: np.ndarray) -> sp.csr_matrix:
    """Sublinear term frequency (1 + log count) times idf, each row scaled to unit length."""
    scaled = counts.astype(np.float32)
    scaled.data = 1 + np.log(scaled.data)
    weighted = scaled.multiply(weights).tocsr()
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    return sp.diags(1 / np.where(norms > 0, norms, 1)).astype(np.float32) @ weighted


Entries = tuple[np.ndarray, np.ndarray]  # (text row, bucket) of each n-gram found, int64 each


def ngram_counts(tokens: pa.ListArray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(word 1-2 gram counts [n, 2^WORD_BITS], character 2-5 gram counts [n, 2^CHAR_BITS])."""
    words, chars = ngram_entries(tokens)
    return _counts(*words, n=len(tokens), bits=WORD_BITS), _counts(*chars, n=len(tokens), bits=CHAR_BITS)


def ngram_entries(tokens: pa.ListArray) -> tuple[Entries, Entries]:
    """The word 1-2 grams and character 2-5 grams of tokenised texts, so a mention, URL or number
    counts as one placeholder each."""
    joined = [f" {t} " for t in pc.binary_join(tokens, pa.scalar(" ", tokens.type.value_type)).to_pylist()]
    points = np.frombuffer("\x00".join(joined).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    row = np.cumsum(points == _SEP)  # which text each code point belongs to
    return _word_entries(points, row), _char_entries(points, row)


def _char_entries(points: np.ndarray, row: np.ndarray) -> Entries:
    rows, buckets = [], []
    for size in CHAR_SIZES:
        last = len(points) - size + 1
        if last <= 0:
            continue
        starts = np.flatnonzero((points[:last] != _SEP) & (row[:last] == row[size - 1 :]))  # inside one text
        h = np.full(len(starts), size, np.uint64)
        for k in range(size):
            h = h * _STEP + points[starts + k]
        rows.append(row[starts])
        buckets.append(_bucket(h, CHAR_BITS))
    return _joined(rows, buckets)


def _word_entries(points: np.ndarray, row: np.ndarray) -> Entries:
    """Each token's polynomial hash, summed over its code points with numpy (wrapping mod 2^64)."""
    boundary = (points == _SPACE) | (points == _SEP)
    inside = np.flatnonzero(~boundary)
    if not len(inside):
        return _joined([], [])
    first = np.diff(inside, prepend=-2) > 1  # the first code point of each token
    starts, token_of = inside[first], np.cumsum(first) - 1
    offset = inside - starts[token_of]
    powers = np.cumprod(np.concatenate(([np.uint64(1)], np.full(int(offset.max()), _STEP, np.uint64))))
    token_hash = np.add.reduceat(points[inside] * powers[offset], np.flatnonzero(first))
    token_row = row[starts]
    same_text = token_row[:-1] == token_row[1:]
    pairs = token_hash[:-1][same_text] * _MIX + token_hash[1:][same_text]
    rows = [token_row, token_row[:-1][same_text]]
    buckets = [_bucket(token_hash, WORD_BITS), _bucket(pairs + _STEP, WORD_BITS)]
    return _joined(rows, buckets)


def _bucket(h: np.ndarray, bits: int) -> np.ndarray:
    h = (h ^ (h >> np.uint64(31))) * _MIX  # the high bits depend on every input bit
    return (h >> np.uint64(64 - bits)).astype(np.int64)


def _joined(rows: list[np.ndarray], buckets: list[np.ndarray]) -> Entries:
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(buckets)


def _counts(rows: np.ndarray, buckets: np.ndarray, *, n: int, bits: int) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, buckets)), shape=(n, 1 << bits))
    matrix.sum_duplicates()
    return matrix
