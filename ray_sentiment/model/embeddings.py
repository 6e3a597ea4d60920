"""Word vectors from co-occurrence statistics, to start the embedding from more than noise.

Positive pointwise mutual information over a symmetric window, reduced by truncated SVD (Levy &
Goldberg 2014 showed this matches word2vec on similarity tasks). It is cheap on CPUs and can use
unlabelled comments, which the LSTM alone cannot learn from.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

from ..text.tokens import PAD_ID, UNK_ID

RELATIVE_RANK_TOLERANCE = 1e-6  # float64 SVD noise is ~1e-15 of the largest singular value


def cooccurrence_counts(ids: np.ndarray, lengths: np.ndarray, *, vocab_size: int, window: int = 5) -> sp.csr_matrix:
    """Symmetric counts of token pairs at most `window` apart, weighted 1/distance."""
    rows, cols, weights = [], [], []
    positions = np.arange(ids.shape[1])
    for d in range(1, window + 1):
        left, right = ids[:, :-d], ids[:, d:]
        valid = positions[d:][None, :] < lengths[:, None]  # both tokens inside the text
        valid &= (left > UNK_ID) & (right > UNK_ID)  # padding and unknown words carry no meaning
        a, b = left[valid].astype(np.int64), right[valid].astype(np.int64)
        rows += [a, b]
        cols += [b, a]
        weights.append(np.full(2 * len(a), 1.0 / d, dtype=np.float32))
    if not rows:
        return sp.csr_matrix((vocab_size, vocab_size), dtype=np.float32)
    return sp.coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(vocab_size, vocab_size)
    ).tocsr()


def ppmi_vectors(counts: sp.csr_matrix, dim: int, *, seed: int = 0, alpha: float = 0.75) -> np.ndarray:
    """[vocab_size, dim] float32 vectors with unit variance overall; padding and unknown rows are 0.

    Context counts are smoothed with exponent `alpha`, which keeps rare contexts from dominating."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    total = counts.sum()
    vectors = np.zeros((counts.shape[0], dim), dtype=np.float32)
    components = min(dim, counts.shape[0] - 1)  # a tiny vocabulary fills only the first columns
    if total == 0 or components < 1:
        return vectors
    word = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel() ** alpha
    coo = counts.tocoo()
    pmi = np.log(coo.data * context.sum() / (word[coo.row] * context[coo.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)
    svd = TruncatedSVD(n_components=components, random_state=seed)
    reduced = svd.fit_transform(ppmi)  # U·S
    singular = svd.singular_values_
    # A rank-deficient matrix has components with no signal; whether their singular value comes out
    # exactly 0 or as rounding noise depends on the BLAS kernel. Leave them at zero on every one.
    real = singular > RELATIVE_RANK_TOLERANCE * singular.max(initial=0.0)
    reduced[:, real] /= np.sqrt(singular[real])  # U·√S: symmetric weighting
    reduced[:, ~real] = 0.0
    scale = reduced[word > 0].std() if (word > 0).any() else 0.0
    reduced /= scale if scale > 0 else 1.0
    vectors[:, :components] = reduced
    vectors[[PAD_ID, UNK_ID]] = 0.0
    return vectors
