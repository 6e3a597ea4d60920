"""Masks what identifies a person in a comment shown in a report: URLs (with or without a scheme,
shorteners, other schemes), e-mail addresses (fullwidth, obfuscated, at hosts without a dot),
@handles, card numbers and phone numbers. Order matters: a URL or an address holds what looks like
a handle, and a card number what looks like a phone number.

It is pattern matching, not understanding: names, street addresses, numbers written as words and
forms not listed here pass through. docs/cli.md (report) says so."""

from __future__ import annotations

import re

_AT = "[@＠﹫]"  # the fullwidth and small commercial at sign read as @
_DOT = r"[.．。]"
# Top-level domains a bare domain (no scheme, no path) is recognised by; with a path, any will do.
_TLDS = (
    "com|net|org|edu|gov|io|co|ly|to|me|gl|gg|app|dev|info|biz|us|uk|de|fr|ca|au|in|ai|tv|fm|be|it|nl|es|ru|jp|"
    "cn|br|mx|ch|se|no|pl|ie|nz|link|site|online|shop|xyz"
)
_URL = re.compile(
    r"\b[a-z][a-z0-9+.-]{1,15}://\S+"  # any scheme: https, ftp, file, intent ...
    r"|\b(?:mailto|tel|sms|skype|whatsapp|callto):\S+"
    r"|\bwww\.\S+",
    re.IGNORECASE,
)
_DOMAIN = re.compile(  # after e-mail addresses, which end in one
    rf"\b(?:[a-z0-9-]+{_DOT})+[a-z]{{2,}}/\S*"  # a domain with a path: bit.ly/3xYz, example.org/a
    rf"|\b(?:[a-z0-9-]+{_DOT})+(?:{_TLDS})\b",  # a bare domain: example.com
    re.IGNORECASE,
)
_EMAIL = re.compile(rf"[\w.+-]+{_AT}[\w-]+(?:{_DOT}[\w-]+)*")
_OBFUSCATED_EMAIL = re.compile(
    r"[\w.+-]+\s*[\[({<]\s*at\s*[\])}>]\s*[\w-]+(?:\s*[\[({<]\s*(?:dot|\.)\s*[\])}>]\s*[\w-]+)+", re.IGNORECASE
)
_HANDLE = re.compile(rf"(?<![\w@＠﹫]){_AT}\w+")
# 13 to 19 digits in groups of 4 or so: a payment card (before phones, which would take part of it).
_CARD = re.compile(r"(?<![\w+])\d{4}(?:[ -]?\d{3,4}){2}[ -]?\d{1,7}\b")
# 7 or more digits, optionally grouped by spaces, dots, dashes or brackets, optionally after +.
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d(?:[\s.()-]{0,3}\d){6,14}\b")
MASKS = (
    (_OBFUSCATED_EMAIL, "<email>"),
    (_URL, "<url>"),
    (_EMAIL, "<email>"),
    (_DOMAIN, "<url>"),
    (_HANDLE, "@user"),
    (_CARD, "<card>"),
    (_PHONE, "<phone>"),
)


def redact(text: str) -> str:
    for pattern, mask in MASKS:
        text = pattern.sub(mask, text)
    return text


def dedupe_key(text: str) -> str:
    """Comments that differ only by who they mention, links, case, punctuation or spacing count as
    one (retweets and copy-pasted complaints)."""
    words = re.findall(r"\w+", _HANDLE.sub("", _URL.sub("", text)).lower())
    return " ".join(words[1:] if words[:1] == ["rt"] else words)
