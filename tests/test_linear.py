"""The hybrid's linear model: hashed n-gram counts against a plain Python reference, fitting, and
its two ways to predict."""

import itertools

import numpy as np
import pandas as pd
import pytest

from ray_sentiment.model.linear import CHAR_BITS, GATHER_TEXTS, WORD_BITS, fit_linear, ngram_counts
from ray_sentiment.text.tokens import tokenize

from conftest import dataset

TEXTS = ["I love this 😍😍", "worst update ever :(", "", "the app is out @user http://x.co", "a", "é ü ß 中文"]
MASK = (1 << 64) - 1
MIX, STEP = 0x9E3779B97F4A7C15, 0x100000001B3


def _bucket(h: int, bits: int) -> int:
    h = ((h ^ (h >> 31)) * MIX) & MASK
    return h >> (64 - bits)


def _poly(points: list[int], start: int) -> int:
    h = start
    for p in points:
        h = (h * STEP + p) & MASK
    return h


def reference(tokens: list[str]) -> tuple[dict, dict]:
    """The same features, one n-gram at a time in Python integers: what the numpy code must equal."""
    words: dict[int, int] = {}
    hashes = [sum(ord(c) * STEP**j for j, c in enumerate(token)) & MASK for token in tokens]  # Σ c_j·STEP^j
    for h in hashes:
        words[_bucket(h, WORD_BITS)] = words.get(_bucket(h, WORD_BITS), 0) + 1
    for a, b in itertools.pairwise(hashes):
        pair = _bucket((((a * MIX) & MASK) + b + STEP) & MASK, WORD_BITS)
        words[pair] = words.get(pair, 0) + 1
    chars: dict[int, int] = {}
    points = [ord(c) for c in " " + " ".join(tokens) + " "]
    for size in (2, 3, 4, 5):
        for i in range(len(points) - size + 1):
            key = _bucket(_poly(points[i : i + size], size), CHAR_BITS)
            chars[key] = chars.get(key, 0) + 1
    return words, chars


def test_hashed_counts_equal_a_plain_python_reference():
    tokens = tokenize(TEXTS)
    words, chars = ngram_counts(tokens)
    assert words.shape == (len(TEXTS), 1 << WORD_BITS) and chars.shape == (len(TEXTS), 1 << CHAR_BITS)
    for row, toks in enumerate(tokens.to_pylist()):
        want_words, want_chars = reference(toks)
        got_words = dict(zip(words[row].indices.tolist(), words[row].data.tolist()))
        got_chars = dict(zip(chars[row].indices.tolist(), chars[row].data.tolist()))
        assert got_words == want_words, TEXTS[row]
        assert got_chars == want_chars, TEXTS[row]
    assert words[2].nnz == 0  # an empty text has no words, only the n-gram of its two padding spaces
    assert ngram_counts(tokenize([]))[0].shape == (0, 1 << WORD_BITS)


def test_counts_do_not_depend_on_the_batch():
    tokens = tokenize(TEXTS)
    together = ngram_counts(tokens)
    for row in range(len(TEXTS)):
        alone = ngram_counts(tokens[row : row + 1])
        for a, b in zip(together, alone):
            assert (a[row] != b[0]).nnz == 0


@pytest.mark.integration  # fits a model: seconds of CPU, the full suite's, not the unit tier's
@pytest.mark.parametrize("num_classes", [2, 3])
def test_fitted_model_learns_words_and_returns_probabilities_in_label_order(num_classes):
    words = ["awful", "meh", "great"][-num_classes:] if num_classes == 2 else ["awful", "meh", "great"]
    rng = np.random.default_rng(0)
    filler = ["the", "app", "update", "today", "is", "was"]
    texts, y = [], []
    for _ in range(300):
        label = int(rng.integers(num_classes))
        texts.append(" ".join([*rng.choice(filler, 3), words[label], *rng.choice(filler, 2)]))
        y.append(label)
    model = fit_linear(texts, np.array(y), num_classes=num_classes)
    assert model.coef.shape == (num_classes, (1 << WORD_BITS) + (1 << CHAR_BITS))
    proba = model.predict_proba(tokenize([f"the app was {w} today" for w in words]))
    assert proba.dtype == np.float32 and proba.shape == (num_classes, num_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert list(proba.argmax(axis=1)) == list(range(num_classes))


@pytest.mark.integration  # fits a model
def test_a_few_texts_summed_directly_give_the_sparse_products_probabilities():
    """Up to GATHER_TEXTS texts skip the sparse matrices; on tweets, with a fitted model, they get
    the probabilities the sparse product gives, to 1e-6, and the same labels."""
    tweets = pd.read_parquet(dataset("airline/tweets.parquet"), columns=["text", "label", "split"])
    train, test = tweets[tweets["split"] == "train"].head(3000), tweets[tweets["split"] == "test"]
    y = train["label"].map({"negative": 0, "neutral": 1, "positive": 2}).to_numpy()
    model = fit_linear(train["text"].tolist(), y, num_classes=3)
    texts = [*test["text"], "!!!", "a", "aa aa aa aa", "@user http://x.co"]
    assert len(texts) > GATHER_TEXTS
    sparse = model.predict_proba(tokenize(texts))
    one_by_one = np.concatenate([model.predict_proba(tokenize([t])) for t in texts])
    in_batches = np.concatenate(
        [model.predict_proba(tokenize(texts[i : i + GATHER_TEXTS])) for i in range(0, len(texts), GATHER_TEXTS)]
    )
    for gathered in (one_by_one, in_batches):
        assert gathered.dtype == np.float32
        np.testing.assert_allclose(gathered, sparse, atol=1e-6, rtol=0)
        assert (gathered.argmax(axis=1) == sparse.argmax(axis=1)).all()
