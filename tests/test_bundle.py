import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch

from ray_sentiment import Predictor
from ray_sentiment.errors import BundleError, InvalidTextError
from ray_sentiment.model.bundle import load_bundle, save_bundle
from ray_sentiment.storage import download_dir

from conftest import SAMPLE_TEXTS, dataset, write_random_bundle

TEXTS = SAMPLE_TEXTS


@pytest.fixture()
def bundle_dir(tmp_path):
    return write_random_bundle(tmp_path / "bundle")


def test_round_trip_gives_identical_probabilities(bundle_dir):
    path, model = bundle_dir
    predictor = Predictor.load(path)
    proba = predictor.predict_proba(TEXTS)
    ids, lengths = predictor.encoder(TEXTS)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(ids), torch.from_numpy(lengths)), dim=1).numpy()
    np.testing.assert_array_equal(proba, expected)
    assert proba.shape == (5, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert predictor.labels == ["negative", "neutral", "positive"]
    assert predictor.predict(TEXTS) == [predictor.labels[i] for i in proba.argmax(axis=1)]
    # batching does not change a text's probabilities
    np.testing.assert_allclose(predictor.predict_proba(TEXTS, batch_size=2), proba, rtol=1e-5, atol=1e-7)
    assert load_bundle(path).metrics == {"note": "unit"}
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in path.iterdir())


@pytest.mark.parametrize(
    "texts, message",
    [
        (["fine", None], "#1: text is null"),
        (["fine", ""], "#1: text is empty"),
        (["   "], "#0: text is empty"),
        ([b"\xff bytes"], "#0: text is not valid UTF-8"),
        (["ok", "x" * 10_001], "#1: text is 10,001 characters, more than --max-text-chars 10,000"),
        ([3.5, "ok"], "#0: text is float, not a string"),
        ("a single string", "a single string"),
    ],
)
def test_predictor_refuses_texts_it_cannot_score(bundle_dir, texts, message):
    with pytest.raises(InvalidTextError, match=message):
        Predictor.load(bundle_dir[0]).predict_proba(texts)


def test_predictor_accepts_an_empty_list(bundle_dir):
    assert Predictor.load(bundle_dir[0]).predict_proba([]).shape == (0, 3)


def _corrupt(path, name, content: bytes):
    (path / name).write_bytes(content)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "model.safetensors").unlink(), "missing model.safetensors"),
        (lambda p: (p / "vocab.json").unlink(), "missing vocab.json"),
        (lambda p: _corrupt(p, "config.json", b"{not json"), "config.json is not valid JSON"),
        (lambda p: _corrupt(p, "vocab.json", b'{"a": 1}'), "vocab.json should hold a JSON array"),
        (lambda p: _corrupt(p, "vocab.json", b'["a", "b"]'), "must be a list of strings starting with"),
        (lambda p: _corrupt(p, "model.safetensors", b"\x00" * 40), "model.safetensors is corrupt"),
        (
            lambda p: _corrupt(p, "model.safetensors", (p / "model.safetensors").read_bytes()[:-100]),
            "model.safetensors is corrupt",
        ),
        (lambda p: _edit_config(p, format_version=99), "format version 99"),
        (lambda p: _edit_config(p, labels=["only"]), "at least two non-empty strings"),
        (lambda p: _edit_config(p, labels=["a", "", "c"]), "at least two non-empty strings"),
        (lambda p: _edit_config(p, format_version="1"), 'has format version "1", this ray-sentiment reads versions 1'),
        (lambda p: _edit_config(p, format_version=2), r"says format version 2, but .*linear.safetensors is missing"),
        (lambda p: _edit_config(p, preset=5), "'preset' must be a string"),
        (lambda p: _edit_vocab(p, lambda v: v[:5] + [v[4]] + v[6:]), "lists a token more than once"),
        (lambda p: _edit_section(p, "tokenizer", vocab_size=999), "'tokenizer.vocab_size' is 999 but vocab.json holds"),
        (lambda p: _edit_config(p, labels=["a", "b"]), "2 labels but the model has 3 outputs"),
        (lambda p: _edit_config(p, model={"hidden_dim": 32, "num_classes": 3, "vocab_size": 40}), "does not describe"),
        (lambda p: _edit_config(p, model={"colour": "blue"}), "unknown model settings: colour"),
        (lambda p: _edit_config(p, labels=["negative", "positive", "negative"]), "'labels' repeats a label"),
        (
            lambda p: _edit_section(p, "tokenizer", max_len=0),
            r"'tokenizer.max_len' is 0; it must be between 1 and 10,000",
        ),
        (lambda p: _edit_section(p, "tokenizer", max_len=-5), r"'tokenizer.max_len' is -5"),
        (
            lambda p: _edit_section(p, "tokenizer", max_len="100"),
            r"'tokenizer.max_len' must be an integer, not \"100\"",
        ),
        (lambda p: _edit_section(p, "tokenizer", max_len=1.5), r"'tokenizer.max_len' must be an integer, not 1.5"),
        (lambda p: _edit_section(p, "tokenizer", max_len=10**9), r"'tokenizer.max_len' is 1000000000"),
        (lambda p: _edit_section(p, "model", hidden_dim=10**7), r"'model.hidden_dim' is 10000000; it must be between"),
        (
            lambda p: _edit_section(p, "model", hidden_dim=64),
            r"lstm.weight_ih_l0 has shape \[64, 8\], the config implies \[256, 8\]",
        ),
        (lambda p: _edit_section(p, "model", num_classes="3"), r"'model.num_classes' must be an integer, not \"3\""),
        (lambda p: _edit_section(p, "model", bidirectional=1), r"'model.bidirectional' must be true or false"),
        (lambda p: _edit_section(p, "model", num_layers=2), "it has no tensor lstm.weight_ih_l1"),
        (lambda p: _edit_config(p, model=[1]), "'model' and 'tokenizer' must be JSON objects"),
        (lambda p: _corrupt(p, "config.json", b"[" * 100_000 + b"]" * 100_000), "config.json is nested too deeply"),
        (lambda p: _poison_weights(p, "lstm.bias_hh_l0", float("nan")), "NaN or infinite values in lstm.bias_hh_l0"),
        (lambda p: _poison_weights(p, "head.4.weight", float("inf")), "NaN or infinite values in head.4.weight"),
    ],
)
def test_corrupt_bundles_say_what_is_wrong(bundle_dir, damage, message):
    path = bundle_dir[0]
    damage(path)
    with pytest.raises(BundleError, match=message):
        Predictor.load(path)


@pytest.fixture()
def hybrid_dir(tmp_path):
    return write_random_bundle(tmp_path / "hybrid", seed=3, hybrid=True)[0]


def test_hybrid_round_trip_predicts_identically_and_pickles_nothing(hybrid_dir):
    from ray_sentiment.text.tokens import tokenize

    bundle = load_bundle(hybrid_dir)
    assert json.loads((hybrid_dir / "config.json").read_text())["format_version"] == 2
    predictor = Predictor(bundle)
    proba = predictor.predict_proba(TEXTS)
    alone = Predictor(bundle)
    alone.linear = None
    expected = 0.6 * alone.predict_proba(TEXTS) + 0.4 * bundle.linear.predict_proba(tokenize(TEXTS))
    np.testing.assert_allclose(proba, expected, rtol=1e-6, atol=1e-7)
    assert np.abs(proba - alone.predict_proba(TEXTS)).max() > 0.01  # the linear model counts
    copy = Path(save_bundle(bundle, hybrid_dir.parent / "copy"))
    np.testing.assert_array_equal(Predictor.load(copy).predict_proba(TEXTS), proba)
    assert load_bundle(copy).version == bundle.version
    assert {p.name for p in hybrid_dir.iterdir()} == {
        "config.json",
        "vocab.json",
        "model.safetensors",
        "linear.safetensors",
        "metrics.json",
    }


def _edit_linear(path, name, change):
    from safetensors.numpy import load_file, save_file

    arrays = load_file(path / "linear.safetensors")
    arrays[name] = change(arrays[name])
    save_file(arrays, path / "linear.safetensors")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "linear.safetensors").unlink(), "linear.safetensors is missing"),
        (lambda p: _corrupt(p, "linear.safetensors", b"\x00" * 40), "linear.safetensors is corrupt"),
        (lambda p: _edit_linear(p, "coef", lambda a: a[:2]), r"coef should be float32 \[3, 786432\], it is float32"),
        (lambda p: _edit_linear(p, "intercept", lambda a: a.astype("float64")), "intercept should be float32"),
        (lambda p: _edit_linear(p, "word_idf", lambda a: a * np.nan), "NaN or infinite values in word_idf"),
        (lambda p: _edit_section(p, "linear", weight=2), "'linear.weight' must be a number between 0 and 1"),
        (lambda p: _edit_section(p, "linear", char_bits=20), "buckets; this ray-sentiment uses"),
        (lambda p: _edit_config(p, linear=None), "'linear.weight' must be a number"),
    ],
)
def test_corrupt_hybrid_bundles_say_what_is_wrong(hybrid_dir, damage, message):
    damage(hybrid_dir)
    with pytest.raises(BundleError, match=message):
        Predictor.load(hybrid_dir)


def test_missing_bundle_directory(tmp_path):
    with pytest.raises(BundleError, match="is not a directory"):
        Predictor.load(tmp_path / "nope")


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _edit_section(path, section, **changes):
    config = json.loads((path / "config.json").read_text())
    config[section].update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _edit_vocab(path, change):
    vocab = json.loads((path / "vocab.json").read_text())
    (path / "vocab.json").write_text(json.dumps(change(vocab)))


def _poison_weights(path, name, value):
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    weights[name].view(-1)[0] = value
    save_file(weights, path / "model.safetensors")


def test_bundle_written_to_and_read_from_s3(bundle_dir, s3_server, tmp_path):
    local = load_bundle(bundle_dir[0])
    uri = s3_server.uri("models/v1")
    assert save_bundle(local, uri) == uri
    listing = s3_server.filesystem().get_file_info(pafs.FileSelector(f"{s3_server.BUCKET}/models/v1"))
    stored = {f.base_name for f in listing}
    assert stored == {"config.json", "vocab.json", "model.safetensors", "metrics.json"}
    save_bundle(local, f"{uri}/teacher")  # as a default bundle keeps its teacher: loading fetches not it
    download_dir(uri, str(tmp_path / "fetched"))
    assert {p.name for p in (tmp_path / "fetched").iterdir()} == stored
    remote = load_bundle(uri)
    assert remote.version == local.version and len(local.version) == 12
    np.testing.assert_array_equal(
        Predictor.load(uri).predict_proba(TEXTS), Predictor.load(bundle_dir[0]).predict_proba(TEXTS)
    )


def test_bundle_uri_errors_name_the_uri(bundle_dir, s3_server):
    with pytest.raises(BundleError, match=r"model bundle s3://ray-sentiment-test/nope is not a directory"):
        load_bundle(s3_server.uri("nope"))
    s3_server.filesystem().open_output_stream(f"{s3_server.BUCKET}/broken/config.json").close()
    with pytest.raises(BundleError, match=r"s3://ray-sentiment-test/broken is missing vocab.json, model.safetensors"):
        load_bundle(s3_server.uri("broken"))
    with pytest.raises(BundleError, match=r"cannot write the model bundle to s3://no-such-bucket/m"):
        save_bundle(load_bundle(bundle_dir[0]), "s3://no-such-bucket/m")


def test_bundle_file_uri_round_trip(bundle_dir, tmp_path):
    uri = f"file://{tmp_path}/copy"
    save_bundle(load_bundle(bundle_dir[0]), uri)
    assert (tmp_path / "copy" / "model.safetensors").is_file()
    assert load_bundle(uri).version == load_bundle(bundle_dir[0]).version


def test_a_hybrid_bundle_scores_the_same_through_either_tokenizer(hybrid_dir):
    """Large calls take the compiled tokenizer, small ones Python's re: same probabilities."""
    texts = pd.read_parquet(dataset("tweets/val.parquet"))["text"].tolist()[:1500]
    predictor = Predictor.load(hybrid_dir)
    compiled = predictor.predict_proba(texts)
    spec = np.concatenate([predictor.predict_proba(texts[i : i + 100]) for i in range(0, len(texts), 100)])
    np.testing.assert_allclose(compiled, spec, rtol=1e-5, atol=1e-6)
    assert predictor.predict(texts) == [predictor.labels[i] for i in spec.argmax(axis=1)]
