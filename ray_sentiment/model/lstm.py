"""The LSTM text classifier (its shape and presets are in model/presets.py).

ids [batch, time] → Embedding → LSTM over packed sequences (padding costs nothing and cannot change
the result) → pooled features → Dropout → Dense(ReLU) → Dropout → Dense(classes) → logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import ConfigError
from ..text.tokens import PAD_ID
from .presets import ModelConfig


class SentimentLSTM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.pooling not in ("last", "last+max"):
            raise ConfigError(f"unknown pooling {config.pooling!r}; use 'last' or 'last+max'")
        self.config = config
        directions = 2 if config.bidirectional else 1
        features = config.hidden_dim * directions * (2 if config.pooling == "last+max" else 1)
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(
            config.embed_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(features, config.dense_dim),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.dense_dim, config.num_classes),
        )

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids: int [batch, time] right-padded; lengths: int [batch]. Returns logits [batch, classes]."""
        lengths = lengths.to("cpu", torch.int64).clamp(min=1)  # a token-less text is one pad step
        ids = ids[:, : int(lengths.max())]  # columns beyond the longest text are pure padding
        packed = pack_padded_sequence(self.embedding(ids.long()), lengths, batch_first=True, enforce_sorted=False)
        outputs, (hidden, _) = self.lstm(packed)
        directions = 2 if self.config.bidirectional else 1
        features = torch.cat(list(hidden[-directions:]), dim=1)  # last layer, every direction
        if self.config.pooling == "last+max":
            padded, _ = pad_packed_sequence(outputs, batch_first=True, padding_value=float("-inf"))
            features = torch.cat([features, padded.max(dim=1).values], dim=1)
        return self.head(features)


def nonfinite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity: such weights make every prediction NaN."""
    return [name for name, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()]
