import numpy as np
import scipy.sparse as sp

from ray_sentiment.model.embeddings import cooccurrence_counts, ppmi_vectors
from ray_sentiment.text.tokens import build_vocab, count_tokens, encode_batch, vocab_index


def test_cooccurrence_is_symmetric_weighted_and_ignores_padding_and_unknowns():
    ids = np.array([[2, 3, 4, 0, 0], [2, 1, 3, 0, 0]], dtype=np.int32)
    counts = cooccurrence_counts(ids, np.array([3, 3]), vocab_size=5, window=2).toarray()
    np.testing.assert_allclose(counts, counts.T)
    assert counts[2, 3] == 1.0 + 0.5  # adjacent in text 0, two apart in text 1
    assert counts[2, 4] == 0.5 and counts[3, 4] == 1.0
    assert counts[:2].sum() == 0 and counts[:, :2].sum() == 0  # <pad> and <unk> never counted


def test_words_used_alike_get_similar_vectors():
    texts = [
        "i love this phone",
        "i adore this phone",
        "i love this app",
        "i adore this app",
        "the battery died today",
        "the screen died today",
        "my battery broke again",
        "my screen broke again",
    ] * 20
    vocab = build_vocab(count_tokens(texts), 100)
    index = vocab_index(vocab)
    ids, lengths = encode_batch(texts, index, 10)
    vectors = ppmi_vectors(cooccurrence_counts(ids, lengths, vocab_size=len(vocab), window=2), dim=4)
    assert vectors.shape == (len(vocab), 4) and vectors.dtype == np.float32
    assert not vectors[:2].any()  # <pad> and <unk>
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)

    def similarity(a, b):
        return float(unit[index[a]] @ unit[index[b]])

    assert similarity("love", "adore") > similarity("love", "battery") + 0.3
    assert similarity("battery", "screen") > similarity("battery", "adore") + 0.3


def test_a_vocabulary_smaller_than_the_vectors_fills_the_first_columns():
    ids = np.array([[2, 3, 2, 3]], dtype=np.int32)
    vectors = ppmi_vectors(cooccurrence_counts(ids, np.array([4]), vocab_size=4), dim=16)
    assert vectors.shape == (4, 16) and np.isfinite(vectors).all() and not vectors[:, 3:].any()


def test_a_rank_deficient_matrix_gives_finite_vectors_with_the_empty_components_at_zero():
    # Four words whose co-occurrence rows come in identical pairs: rank 2, so of 5 components only
    # 2 carry signal. The others must be exactly 0, never NaN, whatever the BLAS computes.
    block = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 3, 3],
            [0, 0, 0, 0, 3, 3],
            [0, 0, 3, 3, 0, 0],
            [0, 0, 3, 3, 0, 0],
        ],
        dtype=np.float64,
    )
    vectors = ppmi_vectors(sp.csr_matrix(block), dim=5)
    assert np.isfinite(vectors).all()
    columns_used = np.flatnonzero(np.abs(vectors).sum(axis=0) > 0)
    assert len(columns_used) <= 2 and len(columns_used) >= 1
    assert not vectors[:2].any()
    np.testing.assert_allclose(vectors[2], vectors[3], atol=1e-6)  # identical rows, identical vectors
