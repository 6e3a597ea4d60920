"""`pretrain` on Ray Train: an encoder from unlabelled tweets, resumed after a worker dies, then
fine-tuned with `train --init-from`; encoders that do not fit are refused before Ray starts."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_sentiment import Predictor
from ray_sentiment.errors import BundleError, ConfigError
from ray_sentiment.model.bundle import load_encoder
from ray_sentiment.settings import PretrainSettings, TrainSettings
from ray_sentiment.train.checks import check_train
from ray_sentiment.train.driver import train
from ray_sentiment.train.pretrain import pretrain

from conftest import EXAMPLES, cli_in_process, dataset, worker_killed_after_first_checkpoint


@pytest.fixture(scope="module")
def encoder(ray_local, tmp_path_factory):
    """An encoder pretrained for three epochs on 3,000 unlabelled tweets, with a worker killed
    after the first epoch's checkpoint."""
    directory = tmp_path_factory.mktemp("pretrain")
    texts = directory / "unlabelled.parquet"
    pd.read_parquet(dataset("unlabeled/tweets.parquet")).head(3_000).to_parquet(texts)
    with worker_killed_after_first_checkpoint(directory / "ckpt"):
        path = pretrain(
            PretrainSettings(
                unlabelled_path=str(texts),
                output=str(directory / "encoder"),
                preset="pretrained",
                epochs=3,
                vocab_size=5000,
                num_workers=2,
                max_failures=1,
                storage_path=str(directory / "ckpt"),
            )
        )
    return Path(path)


def test_pretraining_resumes_after_a_worker_is_killed(encoder):
    metrics = json.loads((encoder / "metrics.json").read_text())
    epochs = [e["pretrain_epoch"] for e in metrics["pretraining"]]
    assert epochs == [1, 2, 3], epochs  # continued from the checkpoint: no epoch twice, none missing
    losses = [e["lm_loss"] for e in metrics["pretraining"]]
    assert losses[-1] < losses[0], losses
    loaded = load_encoder(str(encoder))
    assert len(loaded.vocab) == 5000 and loaded.state_dict["embedding.weight"].shape == (5000, 100)
    assert sorted({k.split(".")[0] for k in loaded.state_dict}) == ["embedding", "lstm"]
    assert {p.name for p in encoder.iterdir()} == {"config.json", "vocab.json", "encoder.safetensors", "metrics.json"}


def test_train_init_from_starts_from_the_encoder_and_keeps_its_vocabulary_and_learns_from_a_teacher(
    encoder, hybrid_bundle, tmp_path
):
    """Fine-tuning, distilled (`--teacher`, train/distil.py): one training run proves both."""
    labelled, unlabelled = tmp_path / "labelled.parquet", tmp_path / "unlabelled.parquet"
    pd.read_parquet(dataset("tweets/train.parquet")).sample(n=1500, random_state=0)[["text", "label"]].to_parquet(
        labelled
    )
    pd.read_parquet(dataset("unlabeled/tweets.parquet")).tail(500).to_parquet(unlabelled)
    bundle = train(
        TrainSettings(
            train_path=str(labelled),
            output=str(tmp_path / "bundle"),
            preset="pretrained",
            init_from=str(encoder),
            epochs=2,
            num_workers=2,
            storage_path=str(tmp_path / "ckpt"),
            keep_checkpoints=True,
            teacher=str(hybrid_bundle),
            unlabelled_path=str(unlabelled),
        )
    )
    predictor = Predictor.load(bundle)
    assert predictor.bundle.vocab == load_encoder(str(encoder)).vocab
    metrics = json.loads((Path(bundle) / "metrics.json").read_text())
    assert metrics["pretraining"] == [] and metrics["epochs_run"] == 2  # no second pretraining
    run = Path(metrics["checkpoint"]).parent  # keep_checkpoints: every epoch's stays, not the latest alone
    assert len([c for c in run.iterdir() if c.is_dir() and c.name.startswith("checkpoint_")]) == 2
    rows = metrics["rows"]
    assert rows["teacher"]["rows"] == rows["train"]["rows"] + 500  # every training and unlabelled text
    assert metrics["settings"]["teacher"] == str(hybrid_bundle)
    # Fine-tuning moved the encoder's weights, but started from them: two epochs keep them close.
    start = load_encoder(str(encoder)).state_dict["lstm.weight_hh_l0"]
    tuned = predictor.bundle.state_dict["lstm.weight_hh_l0"]
    assert not np.array_equal(start, tuned)
    assert np.linalg.norm(tuned - start) < 0.5 * np.linalg.norm(start)


def _edit_vocab(directory: Path, change) -> None:
    vocab = json.loads((directory / "vocab.json").read_text())
    (directory / "vocab.json").write_text(json.dumps(change(vocab)))
    config = json.loads((directory / "config.json").read_text())
    config["tokenizer"]["vocab_size"] = config["model"]["vocab_size"] = len(change(vocab))
    (directory / "config.json").write_text(json.dumps(config))


def _copy(encoder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "encoder"
    copy.mkdir()
    for f in encoder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


def test_an_encoder_whose_vocabulary_does_not_match_its_weights_is_refused(encoder, tmp_path):
    copy = _copy(encoder, tmp_path)
    _edit_vocab(copy, lambda vocab: vocab[:-10])
    with pytest.raises(
        BundleError, match=r"embedding.weight has shape \[5000, 100\], the config implies \[4990, 100\]"
    ):
        load_encoder(str(copy))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"vocab_size": 8000}, "--vocab-size 8000 does not match the 5000-token vocabulary"),
        ({"preset": "seed"}, "preset 'seed' needs"),
        ({"preset": "distilled"}, "preset 'distilled' needs"),
    ],
)
def test_train_refuses_an_encoder_that_does_not_fit(encoder, tmp_path, options, message):
    settings = TrainSettings(
        train_path="examples/train.csv", output=str(tmp_path / "b"), init_from=str(encoder), **options
    )
    with pytest.raises(ConfigError, match=message):
        train(settings)


def test_the_default_takes_an_encoder_of_its_teachers_shape(encoder, tmp_path):
    """The default's student has the reference's shape, but only its teacher, a hybrid, pretrains:
    --init-from is checked against the teacher (and `pretrain --preset default` makes that shape)."""
    settings = TrainSettings(train_path=str(EXAMPLES), output=str(tmp_path / "b"), init_from=str(encoder))
    recipe, loaded = check_train(settings)
    assert (recipe.teacher, recipe.model.bidirectional, loaded.model_config.bidirectional) == ("hybrid", False, True)


def test_cli_refuses_a_model_bundle_as_an_encoder_in_one_line(bundle, tmp_path, capsys):
    args = ("--train", str(EXAMPLES), "--output", str(tmp_path / "b"), "--init-from", str(bundle))
    result = cli_in_process(capsys, "train", *args)
    assert result.returncode == 2
    assert "is missing encoder.safetensors (a trained model bundle is not a pretrained encoder)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
