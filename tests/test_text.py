import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ray_sentiment.text.rules_arrow import split_array
from ray_sentiment.text.rules_re import split_texts
from ray_sentiment.text.tokens import (
    COMPILED_FROM,
    PAD_ID,
    UNK_ID,
    Encoder,
    build_vocab,
    count_tokens,
    encode_batch,
    tokenize,
    vocab_index,
)

from conftest import dataset


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
    assert tokenize([text]).to_pylist() == [expected]
    assert split_array(pa.array([text])).to_pylist() == [expected]  # the compiled rules too


def test_batch_matches_single_texts_and_keeps_rows_aligned():
    texts = ["first one", "", "rec\x1eord separator inside", "&#30; entity that decodes to it", "last"]
    alone = [tokenize([t]).to_pylist()[0] for t in texts]
    assert tokenize(texts).to_pylist() == alone
    assert split_array(pa.array(texts)).to_pylist() == alone
    assert tokenize([]).to_pylist() == []


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


# Each rule of the tokenizer, and what trips regex engines: every text here must split the same
# way through Python's re (the specification) and the compiled RE2 rules.
TRICKY = [
    "@user @User_2 a@b.com mail@ @ alone @@x x@y",
    "http://t.co/x https://a.b/c?d=1&e=2 www.x.org/path\u00a0next www.",
    "&amp; &lt;3 &lt;/3 &gt; &quot;q&quot; &#39;s &#8217; &#x1F602; &eacute; &AMP; &#65; &notanentity; &amp",
    "#tag #2016 #ünïcode a#b ##x #_ #",
    "😂😂😂😂 👍🏽 ❤️ 👨‍👩‍👧 🏳️‍🌈 ✌🏿 ☺ ⌚ ⬆ 〰 〽 🀄",
    ":) :-( :D ;p =] :/ :\\ :| :* :@ :o) x:) 1:) (: :): :):) =p",
    "<3 </3 <<3 <33 3<3 <3<3 < 3",
    "soooo gooood!!!! ??? ... ---- \n\n\n\n lolll aaa\taaa éééé 😂😂😂",
    "1 22 3.5 -4 +5 1,000.50 12:30 9:15-10:30 6:30-8:30 +0000 2015 1.5a a1 1a #1 x-1 3rd 10.10–10.15.17",
    "1 2 3 4 5 1.2.3 1..2 1,,2 ١٢٣ ٣٫٥ 𝟙𝟚",
    "don’t isn't ‘quoted’ `tick` rock'n'roll ''' '",
    "ΣΑΣ fΣll thΣ ΣΣΣ #ΣΣ İstanbul İ ß ǅ ﬁ",
    "مرحبا بالعالم 123 שלום עולם! עברית",
    "zero\u200bwidth\u200cjoin\u200d\ufeffbom \u00ad soft",
    "tab\there\x1c\x1d\x1e\x1f\x85 line\u2028para\u2029 nbsp\u00a0x \u3000ideo",
    "private \ue000 use \ue001 marks 1\ue0002",
    "control \x00 \x01 \x7f chars",
    "UPPER lower MiXeD ÀÉÎ",
    "",
    "   ",
    "word " * 300 + "end",
    "lo" + "o" * 5000 + "ng " + "😂" * 1000,
]


@pytest.mark.parametrize("text", TRICKY)
def test_compiled_rules_split_each_tricky_text_as_the_specification(text):
    assert split_array(pa.array([text])).to_pylist() == split_texts([text])


def test_compiled_rules_keep_rows_apart():
    """Runs and numbers never join across neighbouring texts; rows with marker characters mix in."""
    texts = ["aa", "a", "😂", "😂😂", "12", ":)", "\ue000x", "@a", "b"] * 3
    assert split_array(pa.array(texts)).to_pylist() == split_texts(texts)
    assert split_array(pa.array(texts).slice(3, 10)).to_pylist() == split_texts(texts[3:13])


SHARED_TWEETS = ["tweets/train.parquet", "tweets/val.parquet", "airline/tweets.parquet", "unlabeled/tweets.parquet"]


def shared_tweets() -> list[str]:
    return [
        t
        for name in SHARED_TWEETS
        for t in pd.read_parquet(dataset(name), columns=["text"])["text"]
        if isinstance(t, str)
    ]


def assert_tokenizers_agree(texts: list[str]) -> None:
    compiled, spec = split_array(pa.array(texts)).to_pylist(), split_texts(texts)
    differ = [t for t, a, b in zip(texts, compiled, spec) if a != b]
    assert not differ, f"{len(differ)} of {len(texts)} differ, e.g. {differ[:3]}"


def test_both_tokenizers_agree_on_a_fixed_sample_of_the_shared_tweets():
    texts = shared_tweets()
    assert len(texts) > 200_000
    assert_tokenizers_agree([texts[i] for i in np.random.default_rng(0).choice(len(texts), 20_000, replace=False)])


@pytest.mark.integration  # no service, but a minute of CPU: the full suite's, not the unit tier's
def test_both_tokenizers_agree_on_every_shared_tweet():
    assert_tokenizers_agree(shared_tweets())


def test_encoder_gives_the_same_ids_through_either_path():
    texts = [TRICKY[i % len(TRICKY)] + f" extra{i % 7}" for i in range(COMPILED_FROM + 5)]
    encoder = Encoder(build_vocab(count_tokens(texts), 50), max_len=30)
    large = encoder(texts)  # compiled rules, Arrow's lookup
    small = [encoder(texts[i : i + 100]) for i in range(0, len(texts), 100)]  # Python's re, a dict
    assert np.array_equal(large[0], np.concatenate([ids for ids, _ in small]))
    assert np.array_equal(large[1], np.concatenate([lengths for _, lengths in small]))
    assert (large[1] == 30).any() and (large[0] == UNK_ID).any()
