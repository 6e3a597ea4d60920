"""`train` and `pretrain`'s checks, run before Ray starts and before torch is imported, so that a
user error is refused with one line in about a second.

    ray-sentiment train --train comments.csv ...   # "comments.csv has only the label 'pos'; ..."
"""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..inputs import (
    check_known_labels,
    check_labelled,
    check_split_has_rows,
    check_validation_rows,
    require_classes,
    total,
)
from ..model.bundle import EncoderBundle, ModelBundle, load_bundle, load_encoder
from ..model.presets import Preset, get_preset
from ..settings import PretrainSettings, TrainSettings

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
        check_encoder_fits(encoder, teacher_recipe(s, r) or r, s)
    teacher = load_bundle(s.teacher) if s.teacher else None
    counts = check_labelled(s.train_path, s.text_column, label_column=s.label_column, split_column=s.split_column)
    val = check_labelled(s.val_path, s.text_column, label_column=s.label_column) if s.val_path else None
    if s.unlabelled_path:
        check_labelled(s.unlabelled_path, s.text_column)
    if counts is not None:
        check_labels(s, counts, val)
        if teacher is not None:
            labels = sorted(total(counts, s.train_split, exclude=s.val_split or ()))
            check_teacher_labels(teacher, labels, str(s.teacher))
    return r, encoder


def teacher_recipe(s: TrainSettings, r: Preset) -> Preset | None:
    """The recipe of the teacher this job trains first (the preset names one and no --teacher was
    given), with the user's options laid over it as over the model's; else None."""
    if not r.teacher or s.teacher:
        return None
    return recipe(dataclasses.replace(s, preset=r.teacher))


def check_teacher_labels(teacher: ModelBundle, labels: list[str], path: str) -> None:
    """--teacher: its probabilities must be over the very labels the model learns (again inside
    Ray, for inputs too large to count here)."""
    if list(teacher.labels) != list(labels):
        raise ConfigError(
            f"the teacher {path} predicts the labels {', '.join(teacher.labels)}, the training data has "
            f"{', '.join(labels)}; a teacher must know the same labels"
        )


def check_labels(s: TrainSettings, counts: dict, val: dict | None) -> None:
    """Two classes to train on, and validation labels among them (prepare.load_labelled checks the
    same inside Ray, for inputs too large to count here)."""
    train = total(counts, s.train_split, exclude=s.val_split or ())
    check_split_has_rows(train, s.train_path, split_column=s.split_column, values=s.train_split)
    require_classes(train, s.train_path)
    if s.val_split:
        val_counts = total(counts, s.val_split)
        check_validation_rows(sum(val_counts.values()), s.split_column, s.val_split)
        check_known_labels(set(val_counts), set(train), rows=split_rows_named(s))
    elif val is not None:
        check_known_labels(set(total(val)), set(train), rows=f"{s.val_path} has")


def split_rows_named(s: TrainSettings) -> str:
    """How messages name the --val-split rows."""
    return f"the {s.split_column} {', '.join(s.val_split or ())} rows have"


def check_pretrain(s: PretrainSettings) -> None:
    for path in filter(None, (s.unlabelled_path, s.train_path)):
        check_labelled(path, s.text_column)


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
