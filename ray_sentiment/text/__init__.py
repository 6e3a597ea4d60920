"""Tokens and ids for a batch of texts, and the tokenizer's rules."""

from ..moved import moved

__getattr__ = moved(__name__, {"tokenize": ".tokens"})
