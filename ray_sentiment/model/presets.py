"""The model's shape (ModelConfig) and the named presets: architecture plus training recipe.

Pure Python, so the command line can list and check presets without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

from ..errors import ConfigError


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
    # Distillation in one job: this preset is trained first, into the bundle's teacher/ directory, and
    # the model then learns from its probabilities (train --teacher); "": none.
    teacher: str = ""
    description: str = ""


BILSTM = ModelConfig(embed_dim=100, hidden_dim=64, bidirectional=True, pooling="last+max")
PRESETS: dict[str, Preset] = {
    "seed": Preset(
        ModelConfig(),
        description="reference: Embedding(10k,64) → LSTM(128) → Dropout → Dense(64) → Dropout → Dense",
    ),
    # Measured against each other by benchmarks/train_accuracy.py; benchmarks/README.md quotes the figures.
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
    # Its loss is not class-weighted: a teacher's probabilities are already (every preset but seed
    # weighs its classes), and weighing them again made the student call many more comments negative.
    "distilled": Preset(
        ModelConfig(),
        embedding_init="ppmi",
        description="the reference's shape, embedding started from PPMI-SVD word vectors: "
        "a fast student for train --teacher",
    ),
}
# The hybrid's macro recall at one LSTM's speed (benchmarks/README.md). The student's best epoch by
# validation loss was its first or second, so it waits 2 epochs for a better one, not 3.
PRESETS["default"] = dataclasses.replace(
    PRESETS["distilled"],
    teacher="hybrid",
    patience=2,
    description="distilled, taught by a hybrid trained first in the same job (chosen by measurement)",
)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def encoder_preset(name: str) -> Preset:
    """The preset an encoder is for (`pretrain --preset`, `train --init-from`): with a teacher
    trained first, the teacher's, as only the teacher pretrains."""
    preset = get_preset(name)
    return get_preset(preset.teacher) if preset.teacher else preset


def model_config_from_dict(data: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown model settings: {', '.join(sorted(unknown))}")
    return ModelConfig(**data)


def model_config_to_dict(config: ModelConfig) -> dict:
    return asdict(config)


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of SentimentLSTM(config) and its shape, without building it (a test checks
    that both agree): a bundle's weights are checked against this before torch is loaded."""
    directions = 2 if config.bidirectional else 1
    hidden, gates = config.hidden_dim, 4 * config.hidden_dim
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (config.vocab_size, config.embed_dim)}
    for layer in range(config.num_layers):
        inputs = config.embed_dim if layer == 0 else hidden * directions
        for suffix in ("", "_reverse")[:directions]:
            shapes[f"lstm.weight_ih_l{layer}{suffix}"] = (gates, inputs)
            shapes[f"lstm.weight_hh_l{layer}{suffix}"] = (gates, hidden)
            shapes[f"lstm.bias_ih_l{layer}{suffix}"] = (gates,)
            shapes[f"lstm.bias_hh_l{layer}{suffix}"] = (gates,)
    features = hidden * directions * (2 if config.pooling == "last+max" else 1)
    shapes["head.1.weight"], shapes["head.1.bias"] = (config.dense_dim, features), (config.dense_dim,)
    shapes["head.4.weight"], shapes["head.4.bias"] = (config.num_classes, config.dense_dim), (config.num_classes,)
    return shapes
