"""A model bundle: one directory holding everything needed to predict, nothing pickled.

    config.json        format version, labels in order, model and tokenizer settings, versions
    vocab.json         tokens in id order
    model.safetensors  weights
    metrics.json       final validation metrics, per-epoch history, row counts
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import BundleError, ConfigError
from .model import ModelConfig, SentimentLSTM, model_config_from_dict, model_config_to_dict
from .text import SPECIALS, TokenizerConfig

FORMAT_VERSION = 1
CONFIG, VOCAB, WEIGHTS, METRICS = "config.json", "vocab.json", "model.safetensors", "metrics.json"


@dataclass
class ModelBundle:
    labels: list[str]
    vocab: list[str]
    model_config: ModelConfig
    tokenizer: TokenizerConfig
    state_dict: dict[str, torch.Tensor]
    preset: str = "custom"
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    def build_model(self) -> SentimentLSTM:
        model = SentimentLSTM(self.model_config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:  # missing/unexpected keys or wrong shapes
            first = str(exc).strip().splitlines()
            raise BundleError(f"weights do not fit the model in {CONFIG}: {' '.join(first[:3])}") from None
        return model.eval()


def _versions() -> dict:
    import ray

    from . import __version__

    return {"ray_sentiment": __version__, "torch": torch.__version__, "ray": ray.__version__}


def save_bundle(bundle: ModelBundle, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "labels": bundle.labels,
        "preset": bundle.preset,
        "model": model_config_to_dict(bundle.model_config),
        "tokenizer": {"vocab_size": bundle.tokenizer.vocab_size, "max_len": bundle.tokenizer.max_len},
        "versions": bundle.versions or _versions(),
    }
    _write_json(path / CONFIG, config)
    _write_json(path / VOCAB, bundle.vocab)
    _write_json(path / METRICS, bundle.metrics)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in bundle.state_dict.items()}
    save_file(tensors, str(path / WEIGHTS))
    return path


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Load and check every part; a problem is reported as a BundleError naming the part."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle {path} is not a directory")
    missing = [p for p in (CONFIG, VOCAB, WEIGHTS) if not (path / p).is_file()]
    if missing:
        raise BundleError(f"model bundle {path} is missing {', '.join(missing)}")
    config = _read_json(path / CONFIG, dict)
    vocab = _read_json(path / VOCAB, list)
    metrics = _read_json(path / METRICS, dict) if (path / METRICS).is_file() else {}

    for key in ("format_version", "labels", "model", "tokenizer"):
        if key not in config:
            raise BundleError(f"{path / CONFIG} has no {key!r}")
    if config["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{path / CONFIG} has format version {config['format_version']}, this ray-sentiment "
            f"reads version {FORMAT_VERSION}"
        )
    labels = config["labels"]
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels)):
        raise BundleError(f"{path / CONFIG}: 'labels' must be a list of at least two strings")
    try:
        model_config = model_config_from_dict(config["model"])
        tokenizer = TokenizerConfig(**config["tokenizer"])
    except (TypeError, ConfigError) as exc:
        raise BundleError(f"{path / CONFIG}: {exc}") from None
    if model_config.num_classes != len(labels):
        raise BundleError(f"{path / CONFIG}: {len(labels)} labels but the model has {model_config.num_classes} outputs")
    if not all(isinstance(t, str) for t in vocab) or tuple(vocab[: len(SPECIALS)]) != SPECIALS:
        raise BundleError(f"{path / VOCAB} must be a list of strings starting with {list(SPECIALS)}")
    if len(vocab) > model_config.vocab_size:
        raise BundleError(f"{path / VOCAB} has {len(vocab)} tokens, more than the model's {model_config.vocab_size} embeddings")
    try:
        state_dict = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path / WEIGHTS} is corrupt: {exc}") from None

    bundle = ModelBundle(
        labels=labels, vocab=vocab, model_config=model_config, tokenizer=tokenizer,
        state_dict=state_dict, preset=config.get("preset", "custom"), metrics=metrics,
        versions=config.get("versions", {}),
    )
    bundle.build_model()  # fail now, with the bundle named, if the weights do not fit
    return bundle


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path, kind: type):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, kind):
        raise BundleError(f"{path} should hold a JSON {'object' if kind is dict else 'array'}")
    return data
