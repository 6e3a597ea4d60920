import dataclasses

import numpy as np
import pytest
import torch

from ray_sentiment.errors import ConfigError
from ray_sentiment.model.lstm import SentimentLSTM
from ray_sentiment.model.presets import PRESETS, ModelConfig, encoder_preset, get_preset, parameter_shapes


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_padding_does_not_change_the_output(preset):
    torch.manual_seed(0)
    model = SentimentLSTM(PRESETS[preset].model).eval()
    rng = np.random.default_rng(0)
    short = torch.from_numpy(rng.integers(2, 10_000, size=(1, 5)))
    with torch.no_grad():
        alone = model(short, torch.tensor([5]))
        # The same text right-padded to 100 columns, beside a longer text in one batch.
        padded = torch.zeros((2, 100), dtype=torch.int64)
        padded[0, :5] = short[0]
        padded[1, :40] = torch.from_numpy(rng.integers(2, 10_000, size=40))
        batched = model(padded, torch.tensor([5, 40]))
    torch.testing.assert_close(batched[0:1], alone, rtol=1e-5, atol=1e-6)


def test_seed_preset_is_the_reference_architecture():
    model = SentimentLSTM(get_preset("seed").model)
    assert model.embedding.num_embeddings == 10_000 and model.embedding.embedding_dim == 64
    assert model.lstm.hidden_size == 128 and not model.lstm.bidirectional and model.lstm.num_layers == 1
    dropouts = [m.p for m in model.head if isinstance(m, torch.nn.Dropout)]
    linears = [(m.in_features, m.out_features) for m in model.head if isinstance(m, torch.nn.Linear)]
    assert dropouts == [0.5, 0.5] and linears == [(128, 64), (64, 3)]
    preset = get_preset("seed")
    assert (preset.batch_size, preset.epochs, preset.patience, preset.max_len) == (32, 10, 3, 100)


def test_the_default_is_a_student_of_the_seed_shape_taught_by_a_hybrid():
    default, hybrid = get_preset("default"), get_preset("hybrid")
    assert default.model == get_preset("seed").model  # one LSTM(128): the reference's cost per text
    assert (default.teacher, default.linear, default.pretrain_epochs, default.patience) == ("hybrid", False, 0, 2)
    assert hybrid.class_weighted and not default.class_weighted  # the teacher's probabilities are weighted already
    distilled = get_preset("distilled")
    assert (
        dataclasses.replace(default, teacher="", patience=distilled.patience, description=distilled.description)
        == distilled
    )
    assert encoder_preset("default") == hybrid and encoder_preset("seed") == get_preset("seed")


def test_empty_text_is_one_padding_step_not_an_error():
    model = SentimentLSTM(ModelConfig(vocab_size=50, bidirectional=True, pooling="last+max")).eval()
    out = model(torch.zeros((2, 7), dtype=torch.int64), torch.tensor([0, 0]))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_unknown_preset_and_pooling_are_config_errors():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="pooling"):
        SentimentLSTM(ModelConfig(pooling="mean"))


@pytest.mark.parametrize(
    "config",
    [p.model for p in PRESETS.values()] + [ModelConfig(num_layers=3, bidirectional=True, num_classes=5)],
)
def test_parameter_shapes_are_the_models_own(config):
    """Bundles are checked against parameter_shapes without torch; it must describe the real model."""
    assert parameter_shapes(config) == {k: tuple(v.shape) for k, v in SentimentLSTM(config).state_dict().items()}
