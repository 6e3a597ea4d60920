"""The tokenizer's rules in Python's `re`: the readable specification, and the faster path for small
batches (rules_arrow.py compiles the same rules for large ones; tests hold the two equal).

Normalisation runs once over a whole batch joined into one string, so each regex pass is a single
C-level scan instead of one Python call per text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

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


def split_texts(texts: Sequence[str]) -> list[list[str]]:
    """Split each text into normalised tokens. `texts` must hold strings only."""
    if not len(texts):
        return []
    texts = [t.replace(_SEP, " ") for t in texts] if any(_SEP in t for t in texts) else texts
    pieces = _normalise(_SEP.join(texts)).split(_SEP)
    # html.unescape could in theory create a separator from "&#30;"; keep rows aligned regardless.
    if len(pieces) != len(texts):
        pieces = [_normalise(t).replace(_SEP, " ") for t in texts]
    return [_TOKEN.findall(p) for p in pieces]
