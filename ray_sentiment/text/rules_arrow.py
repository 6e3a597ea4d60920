"""The tokenizer's rules (rules_re.py) compiled: RE2 through pyarrow.compute, on whole Arrow arrays.

Each rule is one pass of C++ over the batch. RE2 has no look-around and no backreferences, so
three rules are rewritten for it, each exactly:
- "not after a word character" (mentions, numbers, emoticons) consumes the character before, or a
  marker put there by an earlier pass, instead of looking behind;
- elongations (three or more of one character) are cut with numpy on the UTF-8 bytes;
- `findall` becomes: mark every token, split on whitespace, keep the marked pieces.
HTML entities are decoded with Python's `html.unescape`, only in the rows that hold an "&".
Rows holding a marker character go to the reference tokenizer, so no input can fool the markers.

Arrow compiles every pattern again on each call, a fixed cost that pays from about a thousand
texts a call; tokens.py sends smaller batches to the reference tokenizer.
"""

from __future__ import annotations

import html

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import rules_re

CHUNK = 65_536  # texts per pass: amortises the patterns' compilation, bounds memory

W = r"[\p{L}\p{N}_]"  # Python's \w for str patterns: letters, numbers, underscore
NOT_W = r"[^\p{L}\p{N}_]"
DIGIT = r"\p{Nd}"
_SPACES = (0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B))
SPACE = "".join(f"\\x{{{c:x}}}" for c in (*_SPACES, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000))  # str.isspace()
EMOJI = r"[\x{1f000}-\x{1faff}\x{2600}-\x{27bf}\x{2300}-\x{23ff}\x{2b00}-\x{2bff}\x{3030}\x{303d}]"
EMOTICON = r"[:;=][\-o'^]?[)\](\[dp/\\|*@]"
TOKEN = rf"<(?:url|user|num)>|#{W}+|{EMOTICON}|{W}+(?:'{W}+)*|[!?]|{EMOJI}"

NUMBER_MARK, TOKEN_MARK = "\ue000", "\ue001"  # private-use characters; rows holding them take the slow path
_MARKS = f"[{NUMBER_MARK}{TOKEN_MARK}]"

FINAL_SIGMA = (r"(\pL)\x{3a3}($|[^\pL])", "\\1\u03c2\\2")  # Python's lower() writes a word-final Σ as ς
APOSTROPHES = (r"[\x{2019}\x{2018}`]", "'")
URL = (rf"(?:https?://|www\.)[^{SPACE}]+", " <url> ")
MENTION = (rf"(^|{NOT_W})@{W}+", r"\1 <user> ")
INVISIBLE = (r"[\x{fe0f}\x{200d}\x{1f3fb}-\x{1f3ff}]", "")
# Numbers: first mark each place a number may start (not after a word character or #), then
# replace marked numbers that end before a non-word character. Marks inside a number (after its
# separators) are allowed, and the leftovers removed.
NUMBER_START = (rf"(^|[^\p{{L}}\p{{N}}_#])([+-]?{DIGIT})", f"\\1{NUMBER_MARK}\\2")
NUMBER = (rf"{NUMBER_MARK}[+-]?{DIGIT}+(?:[.,:]{NUMBER_MARK}?{DIGIT}+)*($|{NOT_W})", r" <num> \1")
# A colon after a word character can start no emoticon, and alone it is no token: drop it.
NO_EMOTICON = (rf"({W})[:;=]", r"\1 ")


def split_array(texts: pa.Array) -> pa.ListArray:
    """One list of tokens per text, as rules_re.split_texts gives. `texts` holds no nulls."""
    texts = texts.cast(pa.large_string())
    if len(texts) > CHUNK:
        parts = [split_array(texts.slice(i, CHUNK)) for i in range(0, len(texts), CHUNK)]
        return pa.concat_arrays(parts)
    marked = pc.match_substring_regex(texts, _MARKS)
    if not pc.any(marked).as_py():
        return _split(texts)
    is_marked = marked.to_numpy(zero_copy_only=False)
    slow, fast = np.flatnonzero(is_marked), np.flatnonzero(~is_marked)
    exact = pa.array(rules_re.split_texts(texts.take(slow).to_pylist()), pa.list_(pa.large_string()))
    merged = pa.concat_arrays([_split(texts.take(fast)), exact])
    return merged.take(np.argsort(np.concatenate([fast, slow]), kind="stable"))


def _split(texts: pa.Array) -> pa.ListArray:
    marked = _replace(_normalise(texts), TOKEN, f" {TOKEN_MARK}\\0 ")
    pieces = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(marked))
    flat = pc.list_flatten(pieces)
    keep = pc.starts_with(flat, TOKEN_MARK)
    tokens = pc.utf8_slice_codeunits(flat.filter(keep), 1)
    rows = pc.list_parent_indices(pieces).filter(keep).to_numpy()
    offsets = np.zeros(len(texts) + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=len(texts)), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), tokens)


def _normalise(a: pa.Array) -> pa.Array:
    if _contains(a, "\u03a3"):
        a = _replace(a, *FINAL_SIGMA)
    a = pc.utf8_lower(pc.replace_substring(a, "\u0130", "i\u0307"))  # İ: as Python lowers it
    a = _replace(a, *APOSTROPHES)
    has_entity = pc.match_substring(a, "&")
    if pc.any(has_entity).as_py():
        decoded = [html.unescape(t) for t in a.filter(has_entity).to_pylist()]
        a = pc.replace_with_mask(a, has_entity, pa.array(decoded, a.type))
    for pattern, replacement in (URL, MENTION, INVISIBLE):
        a = _replace(a, pattern, replacement)
    a = pc.replace_substring(a, "</3", " \U0001f494 ")
    a = pc.replace_substring(a, "<3", " \u2764 ")
    a = cut_elongations(a)
    a = _replace(_replace(a, *NUMBER_START), *NUMBER)
    a = pc.replace_substring(a, NUMBER_MARK, "")
    return _replace(a, *NO_EMOTICON)


def _replace(a: pa.Array, pattern: str, replacement: str) -> pa.Array:
    return pc.replace_substring_regex(a, pattern, replacement)


def _contains(a: pa.Array, literal: str) -> bool:
    return bool(pc.any(pc.match_substring(a, literal)).as_py())


def cut_elongations(a: pa.Array) -> pa.Array:
    """Runs of three or more of one character (newlines aside) cut to two, as `(.)\\1{2,}` → `\\1\\1`.

    On the array's UTF-8 bytes: a character of k bytes repeated is a period-k run of bytes."""
    a = a.cast(pa.large_string())
    offsets = np.frombuffer(a.buffers()[1], np.int64)[a.offset : a.offset + len(a) + 1]
    data = np.frombuffer(a.buffers()[2], np.uint8)[offsets[0] : offsets[-1]] if offsets[-1] else np.empty(0, np.uint8)
    offsets = offsets - offsets[0]
    drop = [np.empty(0, np.int64)]
    for k, (low, high) in enumerate(((0, 0x80), (0xC0, 0xE0), (0xE0, 0xF0), (0xF0, 0xF8)), start=1):
        span = len(data) - 3 * k + 1  # positions where three k-byte characters fit
        if span <= 0:
            break
        starts = np.flatnonzero(data[:span] == data[k : k + span])  # one full pass; the rest on candidates
        lead = data[starts]
        starts = starts[(lead >= low) & (lead < high) & (lead != 0x0A)]
        for j in range(1, 2 * k):  # the three characters' bytes equal, byte by byte
            starts = starts[data[starts + j] == data[starts + j + k]]
        row = np.searchsorted(offsets, starts, side="right")  # a run must not cross into the next text
        starts = starts[offsets[row] >= starts + 3 * k]
        drop += [starts + 2 * k + j for j in range(k)]
    cut = np.unique(np.concatenate(drop))  # runs of four or more overlap
    if not len(cut):
        return a
    removed = np.bincount(np.searchsorted(offsets, cut, side="right") - 1, minlength=len(a))
    new_offsets = offsets - np.concatenate([[0], np.cumsum(removed)])
    buffers = [None, pa.py_buffer(new_offsets), pa.py_buffer(np.delete(data, cut).tobytes())]
    return pa.Array.from_buffers(pa.large_string(), len(a), buffers)
