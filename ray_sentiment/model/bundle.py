"""A model bundle: one directory holding everything needed to predict, nothing pickled.

    config.json        format version, labels in order, model and tokenizer settings, versions
    vocab.json         tokens in id order
    model.safetensors  weights
    linear.safetensors the `hybrid` preset's linear n-gram model (format version 2 only)
    metrics.json       final validation metrics, per-epoch history, row counts

A pretrained encoder (`ray-sentiment pretrain`) is a directory of the same shape without labels:
config.json (kind "encoder"), vocab.json, encoder.safetensors (embedding and LSTM), metrics.json.

A bundle path is a local directory or a URI (s3://bucket/models/v1): training writes there,
every runtime reads from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from ..errors import BundleError, ConfigError
from ..storage import download_dir, is_uri, upload_dir
from ..text.tokens import SPECIALS, TokenizerConfig
from .linear import CHAR_BITS, WORD_BITS, LinearModel
from .presets import ModelConfig, model_config_from_dict, model_config_to_dict, parameter_shapes

if TYPE_CHECKING:
    from .lstm import SentimentLSTM

FORMAT_VERSIONS = (1, 2)  # 2: a linear model beside the LSTM, which a reader of version 1 would ignore
Shown = Callable[[str], str]  # a part name → how messages name that file of the bundle
CONFIG, VOCAB, WEIGHTS, METRICS = "config.json", "vocab.json", "model.safetensors", "metrics.json"
LINEAR, ENCODER = "linear.safetensors", "encoder.safetensors"
ENCODER_PARTS = ("embedding.", "lstm.")  # the tensors pretraining learns; the classifier head is not among them
T = TypeVar("T")


def _tensor(value):
    """A weight as a tensor. A bundle that came through Ray's object store holds read-only arrays,
    which torch would warn about: those are copied."""
    import torch

    if isinstance(value, np.ndarray) and not value.flags.writeable:
        value = value.copy()
    return torch.as_tensor(value)


@dataclass
class ModelBundle:
    labels: list[str]
    vocab: list[str]
    model_config: ModelConfig
    tokenizer: TokenizerConfig
    state_dict: dict[str, Any]  # numpy arrays once loaded (no torch needed to check a bundle); tensors from training
    preset: str = "custom"
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    version: str = ""  # the first 12 hex digits of the weights file's SHA-256, once saved or loaded
    linear: LinearModel | None = None  # hybrid: probabilities are averaged with this model's
    linear_weight: float = 0.0  # the linear model's share of the average

    def build_model(self) -> SentimentLSTM:
        from .lstm import SentimentLSTM

        model = SentimentLSTM(self.model_config)
        try:
            model.load_state_dict({k: _tensor(v) for k, v in self.state_dict.items()}, strict=True)
        except RuntimeError as exc:  # missing/unexpected keys or wrong shapes
            first = str(exc).strip().splitlines()
            raise BundleError(f"weights do not fit the model in {CONFIG}: {' '.join(first[:3])}") from None
        return model.eval()


def _versions() -> dict:
    import ray

    return {"ray_sentiment": version("ray-sentiment"), "torch": version("torch"), "ray": ray.__version__}


def save_bundle(bundle: ModelBundle, path: str | os.PathLike) -> str:
    """Write the bundle to a local directory or a URI; returns where it went. The bundle itself
    is left as it was: its version is the one `load_bundle` reads back."""
    config = {
        "format_version": 2 if bundle.linear else 1,
        "labels": bundle.labels,
        "preset": bundle.preset,
        **_shape_config(bundle.model_config, bundle.tokenizer),
        "versions": bundle.versions or _versions(),
    }
    parts = {WEIGHTS: save_arrays(_arrays(bundle.state_dict))}
    if bundle.linear:
        config["linear"] = {"weight": bundle.linear_weight, "word_bits": WORD_BITS, "char_bits": CHAR_BITS}
        parts[LINEAR] = save_arrays(bundle.linear.tensors())
    return _save(path, config, vocab=bundle.vocab, metrics=bundle.metrics, parts=parts)


def _shape_config(model_config: ModelConfig, tokenizer: TokenizerConfig) -> dict:
    return {
        "model": model_config_to_dict(model_config),
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "max_len": tokenizer.max_len},
    }


def _save(path: str | os.PathLike, config: dict, *, vocab: list[str], metrics: dict, parts: dict[str, bytes]) -> str:
    """The one writer of bundles and encoders: JSON parts, then binary ones, to a directory or a URI."""

    def write(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in ((CONFIG, config), (VOCAB, vocab), (METRICS, metrics)):
            (directory / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for name, content in parts.items():
            (directory / name).write_bytes(content)

    if is_uri(path):
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            upload_dir(tmp, str(path))
        return str(path)
    write(Path(path))
    return str(path)


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Load and check every part; a problem is reported as a BundleError naming the part."""
    return _load(path, _read)


def _load(path: str | os.PathLike, read: Callable[[Path, str], T]) -> T:
    """The one place bundles and encoders are fetched: a URI is copied to a temporary directory."""
    if is_uri(path):
        with tempfile.TemporaryDirectory() as tmp:
            download_dir(str(path), tmp)
            return read(Path(tmp), str(path).rstrip("/"))
    return read(Path(path), str(path))


def _read(path: Path, name: str) -> ModelBundle:
    """`path` is where the files are; `name` is what messages call the bundle (its URI, say)."""
    if not path.is_dir():
        raise BundleError(f"model bundle {name} is not a directory")
    missing = [p for p in (CONFIG, VOCAB, WEIGHTS) if not (path / p).is_file()]
    if missing:
        raise BundleError(f"model bundle {name} is missing {', '.join(missing)}")
    shown = _shown(name)
    config = _read_json(path / CONFIG, dict, shown(CONFIG))
    labels, model_config, tokenizer = _check_config(config, shown(CONFIG))
    vocab, metrics = _read_vocab_and_metrics(path, tokenizer, model_config=model_config, shown=shown)
    weights = (path / WEIGHTS).read_bytes()
    parts, linear = [weights], None
    if config["format_version"] == 2:
        parts.append(_read_part(path, LINEAR, shown))
        linear = _check_linear(parts[-1], config.get("linear"), num_classes=len(labels), shown=shown)
    return ModelBundle(
        labels=labels,
        vocab=vocab,
        model_config=model_config,
        tokenizer=tokenizer,
        state_dict=_check_weights(weights, WEIGHTS, expected=parameter_shapes(model_config), shown=shown),
        preset=config.get("preset", "custom"),
        metrics=metrics,
        versions=config.get("versions", {}),
        version=_digest(*parts),
        linear=linear,
        linear_weight=config["linear"]["weight"] if linear else 0.0,
    )


def _shown(name: str) -> Shown:
    return lambda part: f"{name.rstrip('/')}/{part}"


def _read_vocab_and_metrics(
    path: Path, tokenizer: TokenizerConfig, *, model_config: ModelConfig, shown: Shown
) -> tuple[list[str], dict]:
    vocab = _read_json(path / VOCAB, list, shown(VOCAB))
    _check_vocab(vocab, tokenizer, model_config=model_config, shown=shown)
    metrics = _read_json(path / METRICS, dict, shown(METRICS)) if (path / METRICS).is_file() else {}
    return vocab, metrics


def _check_shape_config(config: dict, shown: str) -> tuple[ModelConfig, TokenizerConfig]:
    """config.json's model and tokenizer settings, each field's type and range checked."""
    try:
        if not isinstance(config.get("model"), dict) or not isinstance(config.get("tokenizer"), dict):
            raise ConfigError("'model' and 'tokenizer' must be JSON objects")
        _check_fields(config["model"], "model", MODEL_FIELDS)
        _check_fields(config["tokenizer"], "tokenizer", TOKENIZER_FIELDS)
        return model_config_from_dict(config["model"]), TokenizerConfig(**config["tokenizer"])
    except (TypeError, ConfigError) as exc:
        raise BundleError(f"{shown}: {exc}") from None


def _check_config(config: dict, shown: str) -> tuple[list[str], ModelConfig, TokenizerConfig]:
    """config.json's labels, model and tokenizer settings, each field's type and range checked."""
    for key in ("format_version", "labels", "model", "tokenizer"):
        if key not in config:
            raise BundleError(f"{shown} has no {key!r}")
    if config["format_version"] not in FORMAT_VERSIONS or isinstance(config["format_version"], bool):
        found = json.dumps(config["format_version"])[:40]
        raise BundleError(f"{shown} has format version {found}, this ray-sentiment reads versions 1 and 2")
    labels = config["labels"]
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x.strip() for x in labels)):
        raise BundleError(f"{shown}: 'labels' must be a list of at least two non-empty strings")
    if not isinstance(config.get("preset", ""), str):
        raise BundleError(f"{shown}: 'preset' must be a string")
    if len(set(labels)) != len(labels):
        raise BundleError(f"{shown}: 'labels' repeats a label: {labels}")
    model_config, tokenizer = _check_shape_config(config, shown)
    if model_config.num_classes != len(labels):
        raise BundleError(f"{shown}: {len(labels)} labels but the model has {model_config.num_classes} outputs")
    return labels, model_config, tokenizer


def _check_vocab(vocab: list, tokenizer: TokenizerConfig, *, model_config: ModelConfig, shown: Shown) -> None:
    if not all(isinstance(t, str) for t in vocab) or tuple(vocab[: len(SPECIALS)]) != SPECIALS:
        raise BundleError(f"{shown(VOCAB)} must be a list of strings starting with {list(SPECIALS)}")
    if len(set(vocab)) != len(vocab):
        raise BundleError(f"{shown(VOCAB)} lists a token more than once, so its ids are ambiguous")
    if tokenizer.vocab_size != len(vocab):
        raise BundleError(
            f"{shown(CONFIG)}: 'tokenizer.vocab_size' is {tokenizer.vocab_size} but {VOCAB} "
            f"holds {len(vocab)} tokens"
        )
    if len(vocab) > model_config.vocab_size:
        raise BundleError(
            f"{shown(VOCAB)} has {len(vocab)} tokens, more than the model's {model_config.vocab_size} embeddings"
        )


def _check_weights(
    data: bytes, part: str, *, expected: dict[str, tuple[int, ...]], shown: Shown
) -> dict[str, np.ndarray]:
    """The arrays of a weights file, once their names and shapes are the `expected` ones (checked
    before the model is built: a wrong size could ask for petabytes) and every value is finite."""
    try:
        state_dict = load_arrays(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{shown(part)} is corrupt: {exc}") from None
    mismatch = _shape_mismatch(expected, state_dict)
    if mismatch:
        raise BundleError(f"{shown(CONFIG)} does not describe {shown(part)}: {mismatch}")
    bad = _nonfinite(state_dict)
    if bad:
        raise BundleError(f"{shown(part)} holds NaN or infinite values in {', '.join(bad)}")
    return state_dict


def _nonfinite(arrays: dict[str, np.ndarray]) -> list[str]:
    return [name for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]


def _arrays(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
    """Tensors (from training) or arrays, as contiguous CPU arrays for safetensors."""
    return {
        k: np.ascontiguousarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()
    }


# Field → (type, smallest, largest). Types are exact: 3.0 or "3" is not a count.
MODEL_FIELDS = {
    "num_classes": (int, 2, 10_000),
    "vocab_size": (int, 3, 10_000_000),
    "embed_dim": (int, 1, 65_536),
    "hidden_dim": (int, 1, 65_536),
    "num_layers": (int, 1, 64),
    "dense_dim": (int, 1, 65_536),
    "bidirectional": (bool, None, None),
    "dropout": ((int, float), 0, 1),
    "pooling": (str, None, None),
}
MAX_LEN_LIMIT = 10_000  # tokens per text; a larger value makes every batch a huge allocation
TOKENIZER_FIELDS = {"vocab_size": (int, 3, 10_000_000), "max_len": (int, 1, MAX_LEN_LIMIT)}


def _check_fields(values: dict, section: str, spec: dict) -> None:
    for name, value in values.items():
        if name not in spec:
            continue  # unknown names are reported by the dataclass
        kind, low, high = spec[name]
        is_bool = isinstance(value, bool)
        if not isinstance(value, kind) or (is_bool and kind is not bool):
            raise ConfigError(f"'{section}.{name}' must be {_kind_name(kind)}, not {json.dumps(value)[:40]}")
        if low is not None and not (low <= value <= high):
            raise ConfigError(f"'{section}.{name}' is {value}; it must be between {low:,} and {high:,}")


def _kind_name(kind) -> str:
    return {int: "an integer", bool: "true or false", str: "a string"}.get(kind, "a number")


def _shape_mismatch(expected: dict[str, tuple[int, ...]], state: dict[str, np.ndarray]) -> str | None:
    """What the weights' names and shapes say that the config contradicts, or None."""
    for name, shape in expected.items():
        if name not in state:
            return f"it has no tensor {name}"
        if tuple(state[name].shape) != shape:
            return f"{name} has shape {list(state[name].shape)}, the config implies {list(shape)}"
    extra = sorted(set(state) - set(expected))
    return f"it has tensors the model does not: {', '.join(extra[:3])}" if extra else None


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256(parts[0])
    for part in parts[1:]:  # a plain bundle's version is the SHA-256 of its weights file, as before
        digest.update(part)
    return digest.hexdigest()[:12]


def _read_part(path: Path, part: str, shown: Shown) -> bytes:
    if not (path / part).is_file():
        raise BundleError(f"{shown(CONFIG)} says format version 2, but {shown(part)} is missing")
    return (path / part).read_bytes()


def _check_linear(data: bytes, config: object, *, num_classes: int, shown: Shown) -> LinearModel:
    """The linear model's arrays, once their shapes fit the hash sizes and the labels."""
    if not (isinstance(config, dict) and isinstance(config.get("weight"), (int, float)) and 0 <= config["weight"] <= 1):
        raise BundleError(f"{shown(CONFIG)}: 'linear.weight' must be a number between 0 and 1")
    if (config.get("word_bits"), config.get("char_bits")) != (WORD_BITS, CHAR_BITS):
        raise BundleError(
            f"{shown(CONFIG)}: the linear model hashes into 2^{config.get('word_bits')} + 2^{config.get('char_bits')} "
            f"buckets; this ray-sentiment uses 2^{WORD_BITS} + 2^{CHAR_BITS}"
        )
    try:
        arrays = load_arrays(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{shown(LINEAR)} is corrupt: {exc}") from None
    expected = {
        "word_idf": (1 << WORD_BITS,),
        "char_idf": (1 << CHAR_BITS,),
        "coef": (num_classes, (1 << WORD_BITS) + (1 << CHAR_BITS)),
        "intercept": (num_classes,),
    }
    for name, shape in expected.items():
        array = arrays.get(name)
        if array is None or array.shape != shape or array.dtype != np.float32:
            found = "missing" if array is None else f"{array.dtype} {list(array.shape)}"
            raise BundleError(f"{shown(LINEAR)}: {name} should be float32 {list(shape)}, it is {found}")
        if not np.isfinite(array).all():
            raise BundleError(f"{shown(LINEAR)} holds NaN or infinite values in {name}")
    return LinearModel(**{name: arrays[name] for name in expected})


def _read_json(path: Path, kind: type, shown: str):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{shown} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"{shown} is nested too deeply to be a bundle file") from None
    if not isinstance(data, kind):
        raise BundleError(f"{shown} should hold a JSON {'object' if kind is dict else 'array'}")
    return data


@dataclass
class EncoderBundle:
    """A pretrained embedding and LSTM with their vocabulary: where `train --init-from` starts."""

    vocab: list[str]
    model_config: ModelConfig  # num_classes means nothing here
    tokenizer: TokenizerConfig
    state_dict: dict[str, Any]  # embedding.* and lstm.* only: numpy arrays once loaded
    metrics: dict = field(default_factory=dict)


def save_encoder(encoder: EncoderBundle, path: str) -> str:
    config = {
        "kind": "encoder",
        "format_version": 1,
        **_shape_config(encoder.model_config, encoder.tokenizer),
        "versions": _versions(),
    }
    return _save(
        path,
        config,
        vocab=encoder.vocab,
        metrics=encoder.metrics,
        parts={ENCODER: save_arrays(_arrays(encoder.state_dict))},
    )


def load_encoder(path: str) -> EncoderBundle:
    return _load(path, _read_encoder)


def _read_encoder(path: Path, name: str) -> EncoderBundle:
    missing = [p for p in (CONFIG, VOCAB, ENCODER) if not (path / p).is_file()]
    if missing:
        hint = " (a trained model bundle is not a pretrained encoder)" if (path / WEIGHTS).is_file() else ""
        raise BundleError(f"pretrained encoder {name} is missing {', '.join(missing)}{hint}")
    shown = _shown(name)
    config = _read_json(path / CONFIG, dict, shown(CONFIG))
    if config.get("kind") != "encoder" or config.get("format_version") != 1:
        raise BundleError(f"{shown(CONFIG)} does not describe a pretrained encoder of format version 1")
    model_config, tokenizer = _check_shape_config(config, shown(CONFIG))
    vocab, metrics = _read_vocab_and_metrics(path, tokenizer, model_config=model_config, shown=shown)
    # The embedding has a row per token of this vocabulary, which may be fewer than the config's.
    expected = {k: v for k, v in parameter_shapes(model_config).items() if k.startswith(ENCODER_PARTS)}
    expected["embedding.weight"] = (len(vocab), model_config.embed_dim)
    state_dict = _check_weights((path / ENCODER).read_bytes(), ENCODER, expected=expected, shown=shown)
    return EncoderBundle(vocab, model_config, tokenizer, state_dict, metrics)
