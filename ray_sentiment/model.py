"""The LSTM text classifier and its named presets.

ids [batch, time] → Embedding → LSTM over packed sequences (padding costs nothing and cannot change
the result) → pooled features → Dropout → Dense(ReLU) → Dropout → Dense(classes) → logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .errors import ConfigError
from .text import PAD_ID


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 3
    vocab_size: int = 10_000
    embed_dim: int = 64
    hidden_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.5
    dense_dim: int = 64
    pooling: str = "last"  # "last": final hidden state; "last+max": also max over time


@dataclass(frozen=True)
class Preset:
    """An architecture plus the training recipe it was measured with."""

    model: ModelConfig
    max_len: int = 100
    batch_size: int = 32
    epochs: int = 10
    patience: int = 3
    learning_rate: float = 1e-3
    class_weighted: bool = False
    embedding_init: str = "random"  # or "ppmi": word vectors from co-occurrence counts (embeddings.py)
    # Language-model epochs over the training and --unlabelled texts before the classifier learns
    # (language_model.py); 0: none.
    pretrain_epochs: int = 0
    pretrain_batch_size: int = 128
    pretrain_learning_rate: float = 2e-3
    # A hybrid: the LSTM averaged with a linear n-gram model (linear.py), weighed on validation rows.
    linear: bool = False
    description: str = ""


BILSTM = ModelConfig(embed_dim=100, hidden_dim=64, bidirectional=True, pooling="last+max")
PRESETS: dict[str, Preset] = {
    "seed": Preset(
        ModelConfig(),
        description="reference: Embedding(10k,64) → LSTM(128) → Dropout → Dense(64) → Dropout → Dense",
    ),
    # Measured against each other by benchmarks/train_accuracy.py; the README quotes the figures.
    "bilstm": Preset(
        BILSTM,
        class_weighted=True,
        embedding_init="ppmi",
        description="bidirectional LSTM(64 per direction), last states + max-pooled outputs, "
        "class-weighted loss, embedding started from PPMI-SVD word vectors",
    ),
    "pretrained": Preset(
        BILSTM,
        class_weighted=True,
        embedding_init="ppmi",
        pretrain_epochs=2,
        description="bilstm, whose embedding and LSTM first learn as forward and backward language models",
    ),
    "hybrid": Preset(
        BILSTM,
        class_weighted=True,
        embedding_init="ppmi",
        pretrain_epochs=2,
        linear=True,
        description="pretrained, averaged with a linear model of TF-IDF word 1-2 and character 2-5 grams",
    ),
}
PRESETS["default"] = dataclasses.replace(PRESETS["hybrid"], description="hybrid (chosen by measurement)")


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


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


def model_config_from_dict(data: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown model settings: {', '.join(sorted(unknown))}")
    return ModelConfig(**data)


def model_config_to_dict(config: ModelConfig) -> dict:
    return asdict(config)
