"""Social-media tokenizer and vocabulary: pure functions of their inputs, batch in, arrays out.

Normalisation runs once over a whole batch joined into one string, so each regex pass is a single
C-level scan instead of one Python call per text. Only the final token → id lookup is per token.
"""

from __future__ import annotations

import html
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPECIALS = (PAD, UNK)

_SEP = "\x1e"  # ASCII record separator: joins the texts of a batch, never survives as a token
_URL = re.compile(r"(?:https?://|www\.)\S+")
_MENTION = re.compile(r"(?<!\w)@\w+")
_ELONGATED = re.compile(r"(.)\1{2,}")  # soooo → soo, !!!! → !!, 😂😂😂 → 😂😂
_NUMBER = re.compile(r"(?<![\w#])[+-]?\d+(?:[.,:]\d+)*(?!\w)")
_INVISIBLE = re.compile("[\ufe0f\u200d\U0001f3fb-\U0001f3ff]")  # variation selector, ZWJ, skin tones
_EMOJI = "[\U0001f000-\U0001faff\u2600-\u27bf\u2300-\u23ff\u2b00-\u2bff\u3030\u303d]"
_EMOTICON = r"(?<!\w)[:;=][\-o'^]?[)\](\[dp/\\|*@]"
_TOKEN = re.compile(rf"<(?:url|user|num)>|#\w+|{_EMOTICON}|\w+(?:'\w+)*|[!?]|{_EMOJI}|{_SEP}")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_HEARTS = re.compile(r"<(/?)3")  # before numbers are replaced, or "<3" would become "< <num>"


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 10_000  # embedding rows, the two special tokens included
    max_len: int = 100


def _normalise(blob: str) -> str:
    blob = blob.lower().translate(_APOSTROPHES)
    if "&" in blob:
        blob = html.unescape(blob)
    blob = _URL.sub(" <url> ", blob)
    blob = _MENTION.sub(" <user> ", blob)
    blob = _INVISIBLE.sub("", blob)
    blob = _HEARTS.sub(lambda m: " \U0001f494 " if m.group(1) else " \u2764 ", blob)
    blob = _ELONGATED.sub(r"\1\1", blob)
    return _NUMBER.sub(" <num> ", blob)


def tokenize_batch(texts: Sequence[str]) -> list[list[str]]:
    """Split each text into normalised tokens. `texts` must hold strings only."""
    if not len(texts):
        return []
    texts = [t.replace(_SEP, " ") for t in texts] if any(_SEP in t for t in texts) else texts
    pieces = _normalise(_SEP.join(texts)).split(_SEP)
    # html.unescape could in theory create a separator from "&#30;"; keep rows aligned regardless.
    if len(pieces) != len(texts):
        pieces = [_normalise(t).replace(_SEP, " ") for t in texts]
    return [_TOKEN.findall(p) for p in pieces]


def tokenize(text: str) -> list[str]:
    return tokenize_batch([text])[0]


def count_tokens(texts: Sequence[str]) -> Counter:
    return Counter(itertools.chain.from_iterable(tokenize_batch(texts)))


def build_vocab(counts: Counter, vocab_size: int) -> list[str]:
    """The `vocab_size - 2` most frequent tokens after the specials; ties broken alphabetically."""
    if vocab_size < 3:
        raise ValueError("vocab_size must leave room for at least one word beside <pad> and <unk>")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return list(SPECIALS) + [tok for tok, _ in ranked[: vocab_size - len(SPECIALS)]]


def encode_batch(texts: Sequence[str], vocab: dict[str, int], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts → (int32 ids [n, max_len] right-padded with PAD_ID, int32 lengths [n]).

    A text with no tokens at all gets length 0; the model treats it as a single padding step.
    """
    return encode_tokens(tokenize_batch(texts), vocab, max_len)


def encode_tokens(tokens: Sequence[list[str]], vocab: dict[str, int], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`encode_batch` for texts already split by `tokenize_batch`."""
    get = vocab.get
    rows = [[get(t, UNK_ID) for t in toks[:max_len]] for toks in tokens]
    n = len(rows)
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=n)
    ids = np.zeros((n, max_len), dtype=np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    ids[np.arange(max_len) < lengths[:, None]] = flat
    return ids, lengths


def vocab_index(tokens: Iterable[str]) -> dict[str, int]:
    return {tok: i for i, tok in enumerate(tokens)}


class Encoder:
    """A vocabulary and a length, ready to encode: built once per model, picklable to Ray tasks."""

    def __init__(self, vocab: Sequence[str], max_len: int):
        self.index, self.max_len = vocab_index(vocab), max_len

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return encode_batch(texts, self.index, self.max_len)

    def encode_tokens(self, tokens: Sequence[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        return encode_tokens(tokens, self.index, self.max_len)
