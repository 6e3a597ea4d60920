"""Reading labelled data through Ray Data on the session's local Ray."""

import json
import os

import pandas as pd
import pytest

from ray_sentiment.data.read import read_labelled
from ray_sentiment.errors import DataError
from ray_sentiment.inputs import list_input_files
from ray_sentiment.settings import TrainSettings
from ray_sentiment.train.prepare import fit_vocab, load_labelled, stratified_split

ROWS = pd.DataFrame(
    {
        "body": ["Great app!", "  ", None, "hate it", "meh", "love it", "ok then", "bad bad", "", "fine"],
        "sentiment": [
            " Positive",
            "negative",
            "neutral",
            "NEGATIVE ",
            "neutral",
            "positive",
            None,
            "negative",
            "neutral",
            "  ",
        ],
    }
)


def _write(df, path):
    if path.suffix == ".parquet":
        df.to_parquet(path)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_labels_normalised_and_bad_rows_dropped_and_counted(ray_local, tmp_path, suffix):
    path = _write(ROWS, tmp_path / f"rows{suffix}")
    split = read_labelled(str(path), "body", label_column="sentiment")
    rows = split.dataset.to_pandas()
    assert split.rows_read == 10 and split.rows_dropped == 5 and split.rows == 5
    assert sorted(zip(rows["text"], rows["label"])) == [
        ("Great app!", "positive"),
        ("bad bad", "negative"),
        ("hate it", "negative"),
        ("love it", "positive"),
        ("meh", "neutral"),
    ]


def test_directory_and_glob_inputs(ray_local, tmp_path):
    for i in range(3):
        _write(ROWS.iloc[i * 3 : i * 3 + 3], tmp_path / f"part-{i}.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    fmt, files = list_input_files(str(tmp_path))
    assert fmt == "parquet" and len(files) == 3
    assert list_input_files(str(tmp_path / "part-[01].parquet"))[1] == files[:2]
    assert read_labelled(str(tmp_path / "*.parquet"), "body", label_column="sentiment").rows_read == 9


@pytest.mark.parametrize(
    "make, columns, message",
    [
        (lambda p: p / "missing.parquet", ("text", "label"), "no such file or directory"),
        (
            lambda p: _write(ROWS, p / "rows.parquet"),
            ("text", "label"),
            "has no column 'text', 'label'; columns are: body, sentiment",
        ),
        (lambda p: _write(ROWS, p / "rows.csv"), ("body", "stars"), "has no column 'stars'"),
        (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", ("text", "label"), "unknown file type"),
        (
            lambda p: (p / "bad.parquet").write_bytes(b"PAR1 not really") and p / "bad.parquet",
            ("text", "label"),
            "cannot read .*bad.parquet",
        ),
        (
            lambda p: _write(pd.DataFrame({"text": [1, 2], "label": ["a", "b"]}), p / "ints.parquet"),
            ("text", "label"),
            "holds int64, not text",
        ),
        (lambda p: p, ("text", "label"), "no data files found"),
    ],
)
def test_data_errors_are_specific(ray_local, tmp_path, make, columns, message):
    path = make(tmp_path)
    with pytest.raises(DataError, match=message):
        read_labelled(str(path), columns[0], label_column=columns[1])


def test_mixed_file_types_are_refused(tmp_path):
    _write(ROWS, tmp_path / "a.parquet")
    _write(ROWS, tmp_path / "b.csv")
    with pytest.raises(DataError, match="mixes file types"):
        list_input_files(str(tmp_path))


def test_one_class_only_is_refused(ray_local, tmp_path):
    path = _write(pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "Pos ", "POS"]}), tmp_path / "one.csv")
    with pytest.raises(DataError, match="only the label 'pos'; training needs at least two classes"):
        load_labelled(TrainSettings(str(path), "out"))


def test_validation_labels_must_be_known(ray_local, tmp_path):
    train = _write(pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}), tmp_path / "t.csv")
    val = _write(pd.DataFrame({"text": ["a", "b"], "label": ["x", "z"]}), tmp_path / "v.csv")
    with pytest.raises(DataError, match="labels not in the training data: z"):
        load_labelled(TrainSettings(str(train), "out", val_path=str(val)))


def test_held_out_split_is_seeded_stratified_and_disjoint(ray_local, tmp_path):
    labels = ["neg"] * 150 + ["neu"] * 450 + ["pos"] * 400
    df = pd.DataFrame({"text": [f"comment number {i}" for i in range(1000)], "label": labels})
    path = _write(df, tmp_path / "rows.parquet")
    data = load_labelled(TrainSettings(str(path), "out", seed=7))
    train, val = data.train.to_pandas(), data.val.to_pandas()
    assert val["label"].value_counts().to_dict() == {"neu": 45, "pos": 40, "neg": 15}
    assert len(train) == 900 and not set(train["text"]) & set(val["text"])
    assert data.labels == ["neg", "neu", "pos"]
    assert data.counts["class_counts"] == {"neg": 135, "neu": 405, "pos": 360}
    again = load_labelled(TrainSettings(str(path), "out", seed=7)).val.to_pandas()
    other = stratified_split(read_labelled(str(path)).dataset, 0.1, seed=8)[1].to_pandas()
    assert sorted(again["text"]) == sorted(val["text"])
    assert sorted(other["text"]) != sorted(val["text"])


def test_vocabulary_is_counted_over_the_dataset(ray_local, tmp_path):
    df = pd.DataFrame({"text": ["good good good", "bad bad", "ugly"] * 50, "label": ["a", "b", "c"] * 50})
    split = read_labelled(str(_write(df, tmp_path / "rows.parquet")))
    assert fit_vocab(split.dataset.repartition(4), 4) == ["<pad>", "<unk>", "good", "bad"]
    json.dumps(fit_vocab(split.dataset, 100))  # plain strings, ready for vocab.json


def test_a_parquet_read_starts_one_footer_reader_per_hundred_files_not_rays_32(ray_local, tmp_path):
    """Ray Data's default pool is 32 actor processes per read, whatever the number of files."""
    from ray.util.state import list_actors

    from ray_sentiment.data.read import FOOTER_ACTORS_ENV

    def footer_readers() -> set[str]:
        found = list_actors(
            address=ray_local.get_runtime_context().gcs_address,  # not another lane's Ray
            filters=[("class_name", "=", "FooterReader")],
            limit=10_000,
        )
        return {a.actor_id for a in found}

    before = footer_readers()
    for i in range(3):
        ROWS.iloc[i * 3 : i * 3 + 3].to_parquet(tmp_path / f"part-{i}.parquet")
    split = read_labelled(str(tmp_path), "body", label_column="sentiment")
    assert split.rows_read == 9
    assert len(footer_readers() - before) == 1
    assert FOOTER_ACTORS_ENV not in os.environ  # set for that read only
