"""Each command's input checks, run before Ray starts and before torch is imported, so that a
user error is refused with one line in about a second.

    ray-sentiment train --train comments.csv ...   # "comments.csv has only the label 'pos'; ..."
"""

from __future__ import annotations

import dataclasses
import sys

from .bundle import EncoderBundle, ModelBundle, load_bundle, load_encoder
from .errors import ConfigError, DataError
from .inputs import check_labelled, require_classes, total
from .presets import Preset, get_preset
from .report_data import ReportInput
from .settings import PretrainSettings, ReportSettings, ServeSettings, StreamSettings, TrainSettings

RECIPE_FIELDS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "max_len",
    "class_weighted",
    "embedding_init",
    "pretrain_epochs",
)


def recipe(settings: TrainSettings) -> Preset:
    """The preset with every option the user gave laid over it."""
    preset = get_preset(settings.preset)
    chosen = {name: getattr(settings, name) for name in RECIPE_FIELDS if getattr(settings, name) is not None}
    model = dataclasses.replace(preset.model, vocab_size=settings.vocab_size or preset.model.vocab_size)
    resolved = dataclasses.replace(preset, model=model, **chosen)
    if resolved.batch_size < settings.num_workers:
        raise ConfigError(f"--batch-size {resolved.batch_size} is smaller than --num-workers {settings.num_workers}")
    return resolved


def check_train(s: TrainSettings) -> tuple[Preset, EncoderBundle | None]:
    """The recipe, the encoder (--init-from) and every input; returns the recipe and encoder."""
    r = recipe(s)
    encoder = load_encoder(s.init_from) if s.init_from else None
    if encoder is not None:
        check_encoder_fits(encoder, r, s)
    counts = check_labelled(s.train_path, s.text_column, s.label_column, s.split_column)
    val = check_labelled(s.val_path, s.text_column, s.label_column) if s.val_path else None
    if s.unlabelled_path:
        check_labelled(s.unlabelled_path, s.text_column)
    if counts is not None:
        check_labels(s, counts, val)
    return r, encoder


def check_labels(s: TrainSettings, counts: dict, val: dict | None) -> None:
    """Two classes to train on, and validation labels among them (data.load_labelled checks the
    same inside Ray, for inputs too large to count here)."""
    train = total(counts, s.train_split, exclude=s.val_split or ())
    if s.split_column and not train:
        raise DataError(f"{s.train_path}: no row has {s.split_column} in {', '.join(s.train_split or ())}")
    require_classes(train, s.train_path)
    if s.val_split:
        val_counts = total(counts, s.val_split)
        if not val_counts:
            where = f"no row has {s.split_column} in {', '.join(s.val_split)}"
            raise DataError(f"no validation rows: {where}; give --val, --val-split or more training rows")
        unknown = set(val_counts) - set(train)
        if unknown:
            raise DataError(
                f"the {s.split_column} {', '.join(s.val_split)} rows have labels not in training: "
                f"{', '.join(sorted(unknown))}"
            )
    elif val is not None:
        unknown = set(total(val)) - set(train)
        if unknown:
            raise DataError(f"{s.val_path} has labels not in the training data: {', '.join(sorted(unknown))}")


def check_pretrain(s: PretrainSettings) -> None:
    for path in filter(None, (s.unlabelled_path, s.train_path)):
        check_labelled(path, s.text_column)


def check_evaluate(
    model: str,
    data: str,
    text_column: str,
    label_column: str,
    split_column: str | None,
    split: tuple[str, ...],
    group_column: str | None = None,
) -> ModelBundle:
    """The bundle, then the data: its columns, and labels the model knows. Returns the bundle."""
    bundle = load_bundle(model)
    counts = check_labelled(data, text_column, label_column, split_column, group_column)
    if counts is None:
        return bundle
    found = total(counts, split or None)
    if split_column and not found:
        raise DataError(f"{data}: no row has {split_column} in {', '.join(split)}")
    unknown_labels(set(found), bundle.labels, data)
    return bundle


def check_serve(s: ServeSettings) -> ModelBundle:
    """The bundle, the API key (set but empty is refused) and the port (busy is refused); a
    warning when the host is open to other machines and no key is set. Returns the bundle."""
    from .http_api import API_KEY_ENV, api_key_digest, bind, is_loopback

    bundle = load_bundle(s.model)
    if api_key_digest() is None and not is_loopback(s.host):
        print(
            f"warning: serving on {s.host} without an API key: anyone who reaches this machine can use it; "
            f"set {API_KEY_ENV}",
            file=sys.stderr,
            flush=True,
        )
    bind(s.host, s.port).close()
    return bundle


def check_stream(model: str, s: StreamSettings) -> None:
    """The bundle, and Redis: reachable, and its consumer group there or created."""
    from .broker import open_broker

    load_bundle(model)
    broker = open_broker(s, "ray-sentiment-check")
    broker.ensure_group()
    broker.close()


def unknown_labels(found: set[str], labels: list[str], data: str) -> None:
    unknown = found - set(labels)
    if unknown:
        raise DataError(
            f"{data} has labels the model does not know: {', '.join(sorted(unknown))}; "
            f"the model's labels are: {', '.join(labels)}"
        )


def check_encoder_fits(encoder: EncoderBundle, r: Preset, settings: TrainSettings) -> None:
    """`--init-from`: the pretrained LSTM has the preset's shape and its vocabulary is the one used."""
    shape = ("embed_dim", "hidden_dim", "num_layers", "bidirectional")
    theirs = {k: getattr(encoder.model_config, k) for k in shape}
    ours = {k: getattr(r.model, k) for k in shape}
    if theirs != ours:
        raise ConfigError(
            f"the pretrained encoder {settings.init_from} is {theirs}, preset {settings.preset!r} needs {ours}; "
            f"pretrain with --preset {settings.preset}"
        )
    if settings.vocab_size is not None and settings.vocab_size != len(encoder.vocab):
        raise ConfigError(
            f"--vocab-size {settings.vocab_size} does not match the {len(encoder.vocab)}-token vocabulary of "
            f"the pretrained encoder {settings.init_from}; its vocabulary is used as it is, so leave --vocab-size out"
        )


def check_report(s: ReportSettings) -> ReportInput:
    """The input's columns and time format, the output directory, and the bundle if one is given."""
    from .outputs import check_apart
    from .report_data import check_report_input
    from .report_page import FILES, check_output

    source = check_report_input(s)
    check_apart(s.input, source.files, s.output, FILES)
    check_output(s.output, s.overwrite)
    if s.model:
        load_bundle(s.model)
    return source
