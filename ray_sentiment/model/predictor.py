"""One class that turns texts into probabilities; every runtime predicts through it.

from ray_sentiment import Predictor
Predictor.load("runs/example").score(["love it", "fix the app"])
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence

import numpy as np
import pyarrow as pa
import torch

from ..errors import InvalidTextError
from ..results import MAX_TEXT_CHARS, check_texts, refused, result_records
from ..text.rules_arrow import CHUNK
from ..text.tokens import TOKENS, Encoder, tokenize
from .bundle import ModelBundle, load_bundle


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Scores texts with a trained bundle.

    `score` answers every text: a result, or the reason it was refused (null, not a string, not
    UTF-8, empty, longer than `max_text_chars`). `predict_proba` and `predict` (scikit-learn's
    shape) refuse the whole call with InvalidTextError naming the bad positions instead: a made-up
    probability would be silently wrong.

    A hybrid bundle's probabilities are a weighted average of the LSTM's and the linear model's;
    both read the same tokens, split once.
    """

    def __init__(
        self, bundle: ModelBundle, device: str | torch.device | None = "cpu", max_text_chars: int = MAX_TEXT_CHARS
    ):
        self.bundle = bundle
        self.labels: list[str] = list(bundle.labels)
        self.max_text_chars = max_text_chars
        self.device = resolve_device(device)
        self.encoder = Encoder(bundle.vocab, bundle.tokenizer.max_len)
        self._model = bundle.build_model().to(self.device)
        self.linear = bundle.linear

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = "cpu", **options) -> Predictor:
        return cls(load_bundle(str(path)), device=device, **options)

    def score(self, texts: Sequence[object], max_text_chars: int | None = None) -> list[dict]:
        """One record per text: label, confidence and p_<label>, with error None; or, for a text
        that cannot be scored, those fields None and error the reason. `max_text_chars` overrides
        the predictor's limit for this call."""
        good, problems = check_texts(self._sequence(texts), max_text_chars or self.max_text_chars)
        scored = iter(result_records(self._proba(good), self.labels))
        return [{**next(scored), "error": None} if why is None else refused(self.labels, why) for why in problems]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 2048) -> np.ndarray:
        """float32 array [len(texts), len(labels)], columns in `labels` order."""
        return self._proba(self._checked(texts), batch_size)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def predict_proba_encoded(
        self, ids: np.ndarray, lengths: np.ndarray, linear_proba: np.ndarray | None = None
    ) -> np.ndarray:
        """Probabilities for texts already encoded by `encoder` (tokenised elsewhere, e.g. CPU tasks).
        A hybrid bundle also needs `linear_proba`, the linear model's answer for the same texts."""
        if len(ids) == 0:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            logits = self._model(torch.as_tensor(ids).to(self.device), torch.as_tensor(lengths))
            proba = torch.softmax(logits.float(), dim=1).cpu().numpy()
        if self.linear is None:
            return proba
        if linear_proba is None:
            raise ValueError("a hybrid bundle needs the linear model's probabilities too")
        w = self.bundle.linear_weight
        return ((1 - w) * proba + w * linear_proba).astype(np.float32)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """What a model call needs, made on CPU: (ids, lengths, the linear model's probabilities or None)."""
        return self._encode_tokens(tokenize(texts))

    def _encode_tokens(self, tokens: pa.ListArray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        ids, lengths = self.encoder.encode_tokens(tokens)
        return ids, lengths, None if self.linear is None else self.linear.predict_proba(tokens)

    def explain(self, texts: Sequence[str], label: str | None = None, batch_size: int = 2048) -> list[dict]:
        """Why each text got its label, by leave-one-token-out occlusion: a token's contribution is
        the predicted label's probability (or `label`'s) with the text as it is, less that
        probability with the one token removed. Positive: the token pushed towards the label;
        negative: away from it.

        Only the tokens the model reads (the first `max_len`) are explained, so a text costs at most
        (tokens + 1) model rows, `batch_size` of them to a model call.
        Returns `score`'s record per text plus `tokens`: [{"token", "contribution"}] in text order.
        Texts that cannot be scored refuse the call, as in `predict_proba`."""
        steps = self.explain_steps(texts, label, batch_size)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def explain_steps(
        self, texts: Sequence[str], label: str | None = None, rows: int = 2048
    ) -> Generator[None, None, list[dict]]:
        """`explain`, one model call of at most `rows` rows per step: each `next()` makes one call,
        and the generator returns the records. A server runs the steps one at a time between its
        plain batches, so that an explanation never holds the model for long."""
        if label is not None and label not in self.labels:
            raise ValueError(f"unknown label {label!r}; the model's labels are: {', '.join(self.labels)}")
        target = None if label is None else self.labels.index(label)
        token_lists = tokenize(self._checked(texts)).to_pylist()
        variants: list[list[str]] = []
        for tokens in token_lists:  # the text, then the text without each token the model reads
            variants.append(tokens)
            variants += [tokens[:i] + tokens[i + 1 :] for i in range(min(len(tokens), self.encoder.max_len))]
        proba = np.empty((len(variants), len(self.labels)), dtype=np.float32)
        for start in range(0, len(variants), rows):
            part = variants[start : start + rows]
            proba[start : start + len(part)] = self.predict_proba_encoded(*self._encode_tokens(pa.array(part, TOKENS)))
            yield
        records, row = [], 0
        for tokens in token_lists:
            shown = min(len(tokens), self.encoder.max_len)
            full, without = proba[row], proba[row + 1 : row + 1 + shown]
            best = int(full.argmax()) if target is None else target
            record = result_records(full[None, :], self.labels)[0]
            contributions = (full[best] - without[:, best]).tolist()
            record["tokens"] = [{"token": t, "contribution": c} for t, c in zip(tokens, contributions)]
            records.append(record)
            row += shown + 1
        return records

    def _proba(self, texts: list[str], batch_size: int = 2048) -> np.ndarray:
        """Tokenised in large chunks (the compiled tokenizer's sweet spot), scored `batch_size` at a time."""
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for chunk in range(0, len(texts), CHUNK):
            ids, lengths, linear = self.encode(texts[chunk : chunk + CHUNK])
            for start in range(0, len(ids), batch_size):
                part = slice(start, start + batch_size)
                out[chunk + start : chunk + start + len(ids[part])] = self.predict_proba_encoded(
                    ids[part], lengths[part], None if linear is None else linear[part]
                )
        return out

    @staticmethod
    def _sequence(texts: Sequence[object]) -> list[object]:
        if isinstance(texts, (str, bytes)):
            raise InvalidTextError("expected a sequence of texts, got a single string")
        return list(texts)

    def _checked(self, texts: Sequence[str]) -> list[str]:
        good, problems = check_texts(self._sequence(texts), self.max_text_chars)
        bad = [(i, why) for i, why in enumerate(problems) if why]
        if bad:
            shown = "; ".join(f"#{i}: {why}" for i, why in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise InvalidTextError(f"{len(bad)} of {len(problems)} texts cannot be scored: {shown}{more}")
        return good
