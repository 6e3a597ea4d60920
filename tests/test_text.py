import numpy as np
import pytest

from ray_sentiment.text import (
    PAD_ID,
    UNK_ID,
    build_vocab,
    count_tokens,
    encode_batch,
    tokenize,
    tokenize_batch,
    vocab_index,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("I LOVE it", ["i", "love", "it"]),
        ("see https://t.co/abc and www.example.com/x", ["see", "<url>", "and", "<url>"]),
        ("@Microsoft fix it @user_2", ["<user>", "fix", "it", "<user>"]),
        ("ham &amp; eggs &lt;3 &quot;yes&quot;", ["ham", "eggs", "❤", "yes"]),
        ("#Blessed day #2016", ["#blessed", "day", "#2016"]),
        ("great 😂😂😂😂 👍🏽 ❤️", ["great", "😂", "😂", "👍", "❤"]),
        (
            "nice :) sad :-( lol :D meh :/ ;p <3 </3",
            ["nice", ":)", "sad", ":-(", "lol", ":d", "meh", ":/", ";p", "❤", "💔"],
        ),
        ("soooooo goooood!!!!", ["soo", "good", "!", "!"]),
        ("I don’t like it, isn't fun", ["i", "don't", "like", "it", "isn't", "fun"]),
        ("paid 1,000.50 for 3 tickets at 5pm", ["paid", "<num>", "for", "<num>", "tickets", "at", "5pm"]),
        ("", []),
        ("   \t ", []),
        ("naïve café", ["naïve", "café"]),
    ],
)
def test_tokenize(text, expected):
    assert tokenize(text) == expected


def test_batch_matches_single_texts_and_keeps_rows_aligned():
    texts = ["first one", "", "rec\x1eord separator inside", "&#30; entity that decodes to it", "last"]
    assert tokenize_batch(texts) == [tokenize(t) for t in texts]
    assert len(tokenize_batch(texts)) == len(texts)
    assert tokenize_batch([]) == []


def test_build_vocab_orders_by_frequency_then_alphabet():
    counts = count_tokens(["b a a", "c b a", "d"])
    assert build_vocab(counts, 10) == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert build_vocab(counts, 4) == ["<pad>", "<unk>", "a", "b"]
    with pytest.raises(ValueError):
        build_vocab(counts, 2)


def test_encode_batch_pads_truncates_and_marks_unknown_words():
    vocab = vocab_index(["<pad>", "<unk>", "good", "bad"])
    ids, lengths = encode_batch(["good good bad", "unknownword good", "", "good " * 10], vocab, max_len=4)
    assert ids.dtype == np.int32 and lengths.dtype == np.int32
    assert ids.shape == (4, 4)
    assert lengths.tolist() == [3, 2, 0, 4]
    assert ids[0].tolist() == [2, 2, 3, PAD_ID]
    assert ids[1].tolist() == [UNK_ID, 2, PAD_ID, PAD_ID]
    assert ids[2].tolist() == [PAD_ID] * 4
    assert ids[3].tolist() == [2, 2, 2, 2]
