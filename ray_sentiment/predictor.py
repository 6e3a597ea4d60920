"""One class that turns texts into probabilities; batch, serve and stream all predict through it."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .bundle import ModelBundle, load_bundle
from .errors import InvalidTextError
from .text import encode_batch, vocab_index


def text_problem(text) -> str | None:
    """Why a value cannot be scored, or None when it can. Shared by every runtime's error records."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not a string"
    if not text.strip():
        return "text is empty"
    return None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Scores texts with a trained bundle.

    Null, non-string and empty (or whitespace-only) texts are refused with InvalidTextError naming
    their positions: they carry no evidence, and a made-up probability would be silently wrong.
    Batch, serve and stream check each text with `text_problem` first and report bad ones per row.
    """

    def __init__(self, bundle: ModelBundle, device: str | torch.device | None = "cpu"):
        self.bundle = bundle
        self.labels: list[str] = list(bundle.labels)
        self.max_len = bundle.tokenizer.max_len
        self.device = resolve_device(device)
        self._vocab = vocab_index(bundle.vocab)
        self._model = bundle.build_model().to(self.device)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = "cpu") -> "Predictor":
        return cls(load_bundle(path), device=device)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 2048) -> np.ndarray:
        """float32 array [len(texts), len(labels)], columns in `labels` order."""
        texts = self._checked(texts)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            ids, lengths = encode_batch(texts[start : start + batch_size], self._vocab, self.max_len)
            out[start : start + len(ids)] = self.predict_proba_encoded(ids, lengths)
        return out

    def predict_proba_encoded(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Probabilities for texts already encoded by `encode_batch` (tokenised elsewhere, e.g. CPU tasks)."""
        if len(ids) == 0:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            logits = self._model(torch.as_tensor(ids).to(self.device), torch.as_tensor(lengths))
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return encode_batch(self._checked(texts), self._vocab, self.max_len)

    @staticmethod
    def _checked(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise InvalidTextError("expected a sequence of texts, got a single string")
        texts = list(texts)
        bad = [(i, why) for i, t in enumerate(texts) if (why := text_problem(t))]
        if bad:
            shown = "; ".join(f"#{i}: {why}" for i, why in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise InvalidTextError(f"{len(bad)} of {len(texts)} texts cannot be scored: {shown}{more}")
        return texts
