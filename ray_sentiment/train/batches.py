"""Each epoch's row order, cut into batches of texts of similar length.

An LSTM over packed sequences runs one step per position of a batch's longest text, and a step
for the few texts still running costs nearly what one for the whole batch does. In random batches
of 32 tweets the longest has 29 tokens on average, the mean text 20; batches of similar lengths
cost about their mean (`benchmarks/train_throughput.py` times both).
"""

from __future__ import annotations

import numpy as np

# Batches sorted together: enough rows that lengths group tightly, few enough that a batch's
# neighbours, and so its texts, still change from epoch to epoch.
POOL_BATCHES = 50


def bucketed_order(rng: np.random.Generator, lengths: np.ndarray, batch: int) -> np.ndarray:
    """A permutation of the rows whose consecutive `batch` rows have similar `lengths`.

    The rows are shuffled; the remainder that makes no whole batch goes last, drawn at random (an
    epoch of `len // batch` steps leaves it out). The rest is cut into pools of POOL_BATCHES
    batches, each pool sorted by length (stable, so equal lengths keep the shuffle's order) and cut
    into batches, and the batches are shuffled whole: short and long batches alternate at random."""
    order = rng.permutation(len(lengths))
    whole = len(order) // batch * batch
    kept, rest = order[:whole], order[whole:]
    pool = batch * POOL_BATCHES
    for start in range(0, whole, pool):
        part = kept[start : start + pool]
        kept[start : start + pool] = part[np.argsort(lengths[part], kind="stable")]
    batches = kept.reshape(-1, batch)[rng.permutation(whole // batch)]
    return np.concatenate([batches.ravel(), rest])
