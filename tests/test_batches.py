"""The training loops' row order: batches of similar lengths, every row once, still shuffled."""

import numpy as np
import pandas as pd

from ray_sentiment.text.tokens import tokenize
from ray_sentiment.train.batches import POOL_BATCHES, bucketed_order

from conftest import DATASETS


def tweet_lengths(n: int = 6_000) -> np.ndarray:
    texts = pd.read_parquet(DATASETS / "tweets/train.parquet")["text"].head(n).tolist()
    return np.array([len(tokens) for tokens in tokenize(texts).to_pylist()])


def longest_per_batch(order: np.ndarray, lengths: np.ndarray, batch: int) -> np.ndarray:
    whole = len(order) // batch * batch
    return lengths[order[:whole]].reshape(-1, batch).max(axis=1)


def test_every_row_comes_once_and_batches_hold_texts_of_similar_length():
    lengths, batch = tweet_lengths(), 32
    order = bucketed_order(np.random.default_rng(0), lengths, batch)
    assert sorted(order) == list(range(len(lengths)))
    random = np.random.default_rng(0).permutation(len(lengths))
    # the LSTM runs as many steps as a batch's longest text: what the order saves
    bucketed_steps = longest_per_batch(order, lengths, batch).sum()
    random_steps = longest_per_batch(random, lengths, batch).sum()
    assert bucketed_steps < 0.75 * random_steps, (bucketed_steps, random_steps)
    assert bucketed_steps >= lengths[order[: len(order) // batch * batch]].reshape(-1, batch).mean(axis=1).sum()


def test_batches_come_in_random_length_order_and_change_with_the_epoch():
    lengths, batch = tweet_lengths(), 32
    first = bucketed_order(np.random.default_rng([0, 1]), lengths, batch)
    longest = longest_per_batch(first, lengths, batch)
    # not sorted overall: short and long batches alternate, so no epoch ends on the long texts
    assert np.corrcoef(np.arange(len(longest)), longest)[0, 1] < 0.3
    assert (np.diff(longest) < 0).sum() > len(longest) // 4
    second = bucketed_order(np.random.default_rng([0, 2]), lengths, batch)
    assert not np.array_equal(first, second)
    again = bucketed_order(np.random.default_rng([0, 1]), lengths, batch)
    assert np.array_equal(first, again), "the same seed, epoch and rank give the same order (a restart repeats it)"


def test_the_rows_left_out_of_whole_batches_are_drawn_at_random_not_the_longest():
    batch = 10
    lengths = np.arange(batch * POOL_BATCHES + 7)  # 7 rows make no whole batch
    left_out = [set(bucketed_order(np.random.default_rng(seed), lengths, batch)[-7:]) for seed in range(20)]
    assert len(set().union(*left_out)) > 7 * 5
    assert np.mean([np.mean(list(rows)) for rows in left_out]) < 0.8 * lengths.max()


def test_fewer_rows_than_a_batch_and_no_rows():
    assert sorted(bucketed_order(np.random.default_rng(0), np.array([3, 1, 2]), 32)) == [0, 1, 2]
    assert len(bucketed_order(np.random.default_rng(0), np.zeros(0, np.int32), 32)) == 0
