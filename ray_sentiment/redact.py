"""Masks what identifies a person in a comment shown in a report: URLs, e-mail addresses, @handles
and phone numbers. Order matters: a URL or e-mail address holds what looks like a handle."""

from __future__ import annotations

import re

_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_HANDLE = re.compile(r"(?<![\w@])@\w+")
# 7 or more digits, optionally grouped by spaces, dots, dashes or brackets, optionally after +.
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d(?:[\s.()-]{0,2}\d){6,14}\b")
MASKS = ((_URL, "<url>"), (_EMAIL, "<email>"), (_HANDLE, "@user"), (_PHONE, "<phone>"))


def redact(text: str) -> str:
    for pattern, mask in MASKS:
        text = pattern.sub(mask, text)
    return text


def dedupe_key(text: str) -> str:
    """Comments that differ only by who they mention, links, case, punctuation or spacing count as
    one (retweets and copy-pasted complaints)."""
    words = re.findall(r"\w+", _HANDLE.sub("", _URL.sub("", text)).lower())
    return " ".join(words[1:] if words[:1] == ["rt"] else words)
