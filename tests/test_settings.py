"""Typed settings, the one text check and result shape, and the package's import graph: no Ray."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ray_sentiment.cli import NOT_SETTINGS, build_parser
from ray_sentiment.errors import ConfigError
from ray_sentiment.results import MAX_TEXT_CHARS, check_texts, refused, result_records, text_problem
from ray_sentiment.settings import (
    PretrainSettings,
    ScoreSettings,
    ServeSettings,
    StreamSettings,
    TrainSettings,
    settings_from,
)

PACKAGE = Path(__file__).resolve().parent.parent / "ray_sentiment"


@pytest.mark.parametrize(
    "value, problem",
    [
        ("fine", None),
        (b"caf\xc3\xa9", None),
        (None, "text is null"),
        (3, "text is int, not a string"),
        (b"\xff", "text is not valid UTF-8"),
        ("lone \ud800 surrogate", "text is not valid UTF-8"),
        ("caf\u00e9 \U0001f60d", None),
        (" \n\t", "text is empty"),
        ("x" * (MAX_TEXT_CHARS + 1), f"text is {MAX_TEXT_CHARS + 1:,} characters, more than --max-text-chars 10,000"),
    ],
)
def test_one_check_gives_every_runtime_its_reason(value, problem):
    assert text_problem(value) == problem


def test_check_texts_decodes_bytes_and_keeps_order():
    good, problems = check_texts(["a", None, b"b", "x" * 11], max_chars=10)
    assert good == ["a", "b"]
    assert problems == [None, "text is null", None, "text is 11 characters, more than --max-text-chars 10"]


def test_result_records_carry_the_float32_values_exactly():
    proba = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    records = result_records(proba, ["negative", "neutral", "positive"])
    assert records[0] == {
        "label": "neutral",
        "confidence": float(np.float32(0.7)),
        "p_negative": float(np.float32(0.1)),
        "p_neutral": float(np.float32(0.7)),
        "p_positive": float(np.float32(0.2)),
    }
    assert records[1]["label"] == "negative"
    assert refused(["a", "b"], "text is empty") == {
        "label": None,
        "confidence": None,
        "p_a": None,
        "p_b": None,
        "error": "text is empty",
    }


@pytest.mark.parametrize(
    "command, cls, leave_out",
    [
        (["score", "--model", "m", "--input", "i", "--output", "o"], ScoreSettings, ()),
        (["stream", "--model", "m", "--input-stream", "a", "--output-stream", "b"], StreamSettings, ("model",)),
        (["serve", "--model", "m"], ServeSettings, ()),
        (["train", "--train", "t", "--output", "o"], TrainSettings, ()),
        (["pretrain", "--unlabelled", "u", "--output", "o"], PretrainSettings, ()),
    ],
)
def test_every_flag_maps_onto_a_setting_with_the_settings_default(command, cls, leave_out):
    args = vars(build_parser().parse_args(command))
    options = {k: v for k, v in args.items() if k not in (*NOT_SETTINGS, *leave_out)}
    built = settings_from(cls, options)  # an unmapped flag would raise here
    for field in dataclasses.fields(cls):
        given = "--" + field.name.replace("_", "-") in command
        if field.default is not dataclasses.MISSING and not given and field.name != "dead_letter_stream":
            assert getattr(built, field.name) == field.default, field.name


def test_an_unknown_or_missing_setting_is_one_clear_error():
    with pytest.raises(
        ConfigError, match=r"app_builder args: unknown settings replica; known: model, host, port, replicas"
    ):
        settings_from(ServeSettings, {"model": "m", "replica": 2}, "app_builder args")
    with pytest.raises(ConfigError, match="missing 1 required positional argument: 'model'"):
        settings_from(ServeSettings, {})
    with pytest.raises(ConfigError, match="--replicas takes N or MIN,MAX"):
        ServeSettings(model="m", replicas="two")
    assert ServeSettings(model="m", replicas=[1, 3]).replicas == (1, 3)
    assert ScoreSettings("m", "i", "o", columns="a, b").columns == ("a", "b")
    with pytest.raises(ConfigError, match="--max-text-chars must be at least 1"):
        ScoreSettings("m", "i", "o", max_text_chars=0)
    with pytest.raises(ConfigError, match="--learning-rate must be a positive number"):
        TrainSettings("t", "o", learning_rate=float("nan"))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"val_split": "2016"}, "--val-split needs --split-column"),
        ({"split_column": "source"}, "--split-column needs --train-split, --val-split or both"),
        ({"split_column": "s", "train_split": "a,b", "val_split": "b"}, "name the same value"),
        ({"split_column": "s", "val_split": "b", "val_path": "v.csv"}, "give --val or --val-split, not both"),
        ({"pretrain_epochs": -1}, "--pretrain-epochs must be at least 0"),
    ],
)
def test_split_and_pretraining_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainSettings("t", "o", **options)


def test_split_values_are_comma_separated():
    built = TrainSettings("t", "o", split_column="source", val_split="twitter-2016dev, twitter-2016devtest")
    assert built.val_split == ("twitter-2016dev", "twitter-2016devtest") and built.train_split is None


def test_flags_reach_the_settings_typed():
    args = vars(
        build_parser().parse_args(
            [
                "score",
                "--model",
                "m",
                "--input",
                "i",
                "--output",
                "o",
                "--concurrency",
                "1,4",
                "--columns",
                "id,brand",
                "--batch-size",
                "64",
            ]
        )
    )
    built = settings_from(ScoreSettings, {k: v for k, v in args.items() if k not in NOT_SETTINGS})
    assert (built.concurrency, built.columns, built.batch_size) == ((1, 4), ("id", "brand"), 64)
    args = vars(build_parser().parse_args(["serve", "--model", "m", "--replicas", "2", "--max-text-chars", "500"]))
    built = settings_from(ServeSettings, {k: v for k, v in args.items() if k not in NOT_SETTINGS})
    assert (built.replicas, built.max_text_chars, built.port) == (2, 500, 8000)
