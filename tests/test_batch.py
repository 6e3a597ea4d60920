"""Batch scoring on real Parquet files: the Ray Data pipeline on the session's local Ray, and a small
local input scored in this process (the same reader, checks and Scorer, no Ray), which the tests of
what the output holds use; refusals before Ray starts are unit tests."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from ray_sentiment import Predictor
from ray_sentiment.errors import ConfigError, DataError
from ray_sentiment.model.bundle import load_bundle
from ray_sentiment.outputs import WRITES, check_apart
from ray_sentiment.runtime import IN_PROCESS_ENV
from ray_sentiment.scoring.pipeline import Columns, ScoringPlan, score_dataset
from ray_sentiment.scoring.score import score_parquet
from ray_sentiment.settings import ScoreSettings

from conftest import ROOT, actor_pids, random_texts, run_cli, scoring_on_ray

# The input's columns, then the results' (results.py), in this order.
RESULTS = ["label", "confidence", "p_negative", "p_neutral", "p_positive", "error"]
OUTPUT_COLUMNS = ["id", "text", "brand", "source_file", "source_row", *RESULTS]  # without --id-column


def score(bundle, input, output, on_ray: bool = False, **options):
    """score_parquet: a small local input in this process, unless `on_ray` (the session's Ray)."""
    with scoring_on_ray() if on_ray else contextlib.nullcontext():
        return score_parquet(ScoreSettings(str(bundle), str(input), str(output), **options))


def comments(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    texts = random_texts(n, seed)
    return pd.DataFrame({"id": np.arange(n), "text": texts, "brand": rng.choice(["a", "b"], size=n)})


def write_parts(df: pd.DataFrame, directory, parts: int):
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(df), parts + 1).astype(int)
    for i in range(parts):
        df.iloc[bounds[i] : bounds[i + 1]].to_parquet(directory / f"part-{i:03d}.parquet", index=False)
    return directory


def read_output(directory) -> pd.DataFrame:
    return pq.read_table(directory).to_pandas().sort_values("id").reset_index(drop=True)


def errors(rows: pd.DataFrame) -> list:
    return [e if isinstance(e, str) else None for e in rows["error"]]


def test_output_has_every_row_and_the_predictor_probabilities_on_ray_as_in_process(ray_local, bundle, tmp_path):
    df = comments(3000)
    df.loc[[5, 6, 7], "text"] = [None, "", "   "]
    write_parts(df, tmp_path / "in", 3)
    summary = score(bundle, tmp_path / "in", str(tmp_path / "out"), on_ray=True, batch_size=256)
    out = read_output(tmp_path / "out")
    assert summary.rows_in == summary.rows_out == len(out) == 3000 and summary.rows_with_errors == 3
    assert list(out.columns) == OUTPUT_COLUMNS
    assert out["id"].tolist() == list(range(3000))
    # Each output row names its input file and its row there: joined back, the texts are the input's.
    for path, rows in out.groupby("source_file"):
        source = pd.read_parquet(path)
        assert sorted(rows["source_row"]) == list(range(len(source)))
        assert source.loc[rows["source_row"], "id"].tolist() == rows["id"].tolist()
    assert errors(out.loc[[5, 6, 7]]) == ["text is null", "text is empty", "text is empty"]
    assert out.loc[[5, 6, 7], "label"].isna().all() and out.loc[[5, 6, 7], "p_positive"].isna().all()
    good = out[[e is None for e in errors(out)]]
    predictor = Predictor.load(bundle)
    expected = predictor.predict_proba(good["text"].tolist())
    got = good[["p_negative", "p_neutral", "p_positive"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert good["label"].tolist() == [predictor.labels[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(good["confidence"], expected.max(axis=1), rtol=1e-6)

    # The same input scored in this process (a small local input): the same rows and columns, one
    # output file per input file.
    here = score(bundle, tmp_path / "in", str(tmp_path / "here"), batch_size=256)
    assert (here.rows_in, here.rows_out, here.rows_with_errors) == (3000, 3000, 3)
    assert len(list((tmp_path / "here").glob("scored-*.parquet"))) == 3
    pd.testing.assert_frame_equal(read_output(tmp_path / "here"), out, check_exact=False, rtol=1e-6)


def test_tokenising_in_tasks_as_for_gpu_actors_gives_the_same_rows(ray_local, bundle, tmp_path):
    """The layout --use-gpu takes (CPU tasks tokenise, the actors only run the model), run on CPU."""
    df = comments(2500, seed=3)
    df.loc[[1, 2], "text"] = [None, ""]
    write_parts(df, tmp_path / "in", 2)
    loaded = load_bundle(str(bundle))
    results = {}
    for in_tasks in (True, False):
        ds = ray.data.read_parquet(str(tmp_path / "in"))
        plan = ScoringPlan(loaded, Columns("text", ("id",)), 256, 1, False, 10_000, tokenise_in_tasks=in_tasks)
        scored = score_dataset(ds, plan)
        results[in_tasks] = scored.to_pandas().sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(results[True], results[False])
    assert len(results[True]) == 2500 and errors(results[True])[1:3] == ["text is null", "text is empty"]
    good = results[True].dropna(subset=["label"])
    expected = Predictor.load(bundle).predict_proba(df.loc[good["id"], "text"].tolist())
    np.testing.assert_allclose(good[["p_negative", "p_neutral", "p_positive"]].to_numpy(float), expected, atol=1e-6)


def test_non_string_and_invalid_utf8_texts_are_kept_with_an_error(bundle, tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table({"id": [0, 1, 2], "text": pa.array([b"fine \xf0\x9f\x98\x8d", b"\xff\xfe bad", None], pa.binary())}),
        tmp_path / "in" / "binary.parquet",
    )
    score(bundle, tmp_path / "in", str(tmp_path / "out"))
    out = read_output(tmp_path / "out")
    assert errors(out) == [None, "text is not valid UTF-8", "text is null"]
    assert out["label"].notna().tolist() == [True, False, False]

    pd.DataFrame({"id": [0, 1], "text": [17, 42]}).to_parquet(tmp_path / "ints.parquet")
    score(bundle, tmp_path / "ints.parquet", str(tmp_path / "out2"))
    assert errors(read_output(tmp_path / "out2")) == ["text is int, not a string"] * 2


def test_columns_subset_keeps_the_id_and_two_actors_share_two_cpus(ray_local, bundle, tmp_path):
    comments(2000).to_parquet(tmp_path / "in.parquet")
    # Two actors on this 2-CPU cluster: each must leave room for the read and tokenise tasks.
    summary = score(
        bundle,
        tmp_path / "in.parquet",
        str(tmp_path / "out"),
        on_ray=True,
        columns=["brand"],
        id_column="id",
        concurrency=2,
        batch_size=100,
    )
    assert summary.rows_out == 2000
    assert list(read_output(tmp_path / "out").columns) == ["id", "brand", *RESULTS]  # the id joins: no source columns


def test_an_actor_killed_mid_run_still_gives_every_row_once(ray_local, bundle, tmp_path):
    write_parts(comments(60_000), tmp_path / "in", 30)
    killed = {}
    earlier = set(actor_pids("MapWorker"))  # an earlier test's actors, which may still be ending

    def kill_the_scorer():
        deadline = time.time() + 120
        while time.time() < deadline:
            scorers = actor_pids("MapWorker", besides=earlier)  # the actor holding a Scorer
            if scorers:
                time.sleep(1.0)  # let it score a few batches first
                with contextlib.suppress(ProcessLookupError):  # gone meanwhile: look again
                    os.kill(scorers[0], signal.SIGKILL)
                    killed["pid"] = scorers[0]
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_scorer, daemon=True)
    killer.start()
    summary = score(bundle, tmp_path / "in", str(tmp_path / "out"), on_ray=True, batch_size=512)
    killer.join(timeout=5)
    assert "pid" in killed, "no scoring actor was found to kill"
    out = read_output(tmp_path / "out")
    assert summary.rows_out == len(out) == 60_000
    assert out["id"].is_unique and out["id"].tolist() == list(range(60_000))


def test_a_run_killed_halfway_resumes_with_the_id_column(ray_address, bundle, tmp_path):
    write_parts(comments(20_000), tmp_path / "in", 20)
    args = [
        "score",
        "--model",
        str(bundle),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--id-column",
        "id",
        "--batch-size",
        "512",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "ray_sentiment.cli", *args],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ray_address},
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(list((tmp_path / "out").glob("*.parquet"))) < 3:
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    written = len(list((tmp_path / "out").glob("*.parquet")))
    assert written >= 3, "the first run wrote nothing before the deadline"

    refused = run_cli(*[a for a in args if a not in ("--id-column", "id")], env=ray_address)
    assert refused.returncode == 2 and "already holds a previous run's output" in refused.stderr

    second = run_cli(*args, env=ray_address)
    assert second.returncode == 0, second.stderr[-2000:]
    out = read_output(tmp_path / "out")
    assert out["id"].is_unique and out["id"].tolist() == list(range(20_000))
    assert "already done" in second.stdout and "already done 0" not in second.stdout


def damage_text_pages(path) -> bytes:
    """Overwrites the text column's pages, leaving the footer whole: the file passes every check
    made before Ray (schema, row counts, ids) and fails only when its texts are read."""
    original = path.read_bytes()
    meta = pq.ParquetFile(path).metadata.row_group(0)
    [chunk] = [meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "text"]
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    damaged = bytearray(original)
    damaged[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(damaged))
    return original


def test_a_run_that_fails_midway_says_what_it_left_and_the_same_command_finishes_it(bundle, tmp_path):
    """In this process (a small input): the Ray pipeline's own failure is the next test's."""
    parts = write_parts(comments(3_000), tmp_path / "in", 3)
    original = damage_text_pages(parts / "part-002.parquet")
    with pytest.raises(DataError) as failed:
        score(bundle, parts, tmp_path / "out", id_column="id")
    message = str(failed.value)
    assert message.startswith(f"scoring {parts} failed: ") and "\n" not in message, message
    assert "part-002.parquet" in message, message
    assert "2 output files hold the rows scored so far, and the same command scores the rest" in message, message
    (parts / "part-002.parquet").write_bytes(original)
    summary = score(bundle, parts, tmp_path / "out", id_column="id")
    assert summary.rows_out == 3_000 and read_output(tmp_path / "out")["id"].tolist() == list(range(3_000))


@pytest.mark.e2e
def test_a_failed_run_on_its_own_ray_prints_one_line_and_none_of_rays(bundle, tmp_path):
    """On the local Ray the command starts, Ray Data logs a failed task's traceback twice at ERROR;
    the user gets the one line above instead (-v shows Ray's). The input is small: Ray is asked for."""
    parts = write_parts(comments(300), tmp_path / "in", 3)
    damage_text_pages(parts / "part-002.parquet")
    args = ("score", "--model", str(bundle), "--input", str(parts), "--output", str(tmp_path / "out"))
    result = run_cli(*args, env={IN_PROCESS_ENV: "0"})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"ray-sentiment: error: scoring {parts} failed: ") and "part-002.parquet" in line, line


def test_bad_input_is_reported_before_any_work(bundle, tmp_path):
    comments(10).to_parquet(tmp_path / "in.parquet")
    with pytest.raises(DataError, match="has no column 'body'; columns are: id, text, brand"):
        score(bundle, tmp_path / "in.parquet", str(tmp_path / "o1"), text_column="body")
    (tmp_path / "broken").mkdir()
    comments(10).to_parquet(tmp_path / "broken" / "good.parquet")
    (tmp_path / "broken" / "torn.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(DataError, match="torn.parquet is not a readable Parquet file"):
        score(bundle, tmp_path / "broken", str(tmp_path / "o2"))
    comments(10).to_csv(tmp_path / "in.csv")
    with pytest.raises(DataError, match="score reads Parquet"):
        score(bundle, tmp_path / "in.csv", str(tmp_path / "o3"))
    with pytest.raises(ConfigError, match="MIN,MAX"):
        score(bundle, tmp_path / "in.parquet", str(tmp_path / "o4"), concurrency="4,1")


def test_a_previous_output_is_refused_unless_overwrite_which_removes_only_its_files(bundle, tmp_path):
    comments(100).to_parquet(tmp_path / "in.parquet")
    first = score(bundle, tmp_path / "in.parquet", str(tmp_path / "out"))
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert first.rows_out == 100 and "_ray_sentiment_score.json" in before
    with pytest.raises(DataError, match="already holds a previous run's output; pass --overwrite"):
        score(bundle, tmp_path / "in.parquet", str(tmp_path / "out"))
    second = score(bundle, tmp_path / "in.parquet", str(tmp_path / "out"), overwrite=True)
    after = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert second.rows_out == 100 and len(read_output(tmp_path / "out")) == 100
    assert not set(before) & set(after) - {"_ray_sentiment_score.json"}  # the first run's files are gone


def test_files_the_tool_did_not_write_are_never_deleted(bundle, tmp_path):
    comments(100).to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "NOTES.md").write_text("mine")
    comments(5).to_parquet(out / "sub" / "important.parquet")
    for options in ({"id_column": "id"}, {"overwrite": True}, {}):
        with pytest.raises(
            DataError, match=r"holds files that ray-sentiment score did not write \(NOTES.md, sub/important.parquet\)"
        ):
            score(bundle, tmp_path / "in.parquet", str(out), **options)
    # A real run's output with a user's file added later: still refused, and nothing deleted.
    score(bundle, tmp_path / "in.parquet", str(tmp_path / "out2"))
    (tmp_path / "out2" / "analysis.parquet").write_bytes(b"the user's")
    ours = sorted((tmp_path / "out2").iterdir())
    for options in ({"id_column": "id"}, {"overwrite": True}):
        with pytest.raises(DataError, match=r"did not write \(analysis.parquet\)"):
            score(bundle, tmp_path / "in.parquet", str(tmp_path / "out2"), **options)
    assert sorted((tmp_path / "out2").iterdir()) == ours
    assert (out / "NOTES.md").read_text() == "mine" and len(pd.read_parquet(out / "sub" / "important.parquet")) == 5


def test_an_output_overlapping_the_input_is_refused_before_anything_is_touched(bundle, tmp_path):
    data = tmp_path / "d"
    write_parts(comments(50), data, 2)
    (tmp_path / "link").symlink_to(data)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    cases = [
        (data, data),
        (data, data / "scored"),
        (data / "part-000.parquet", data),
        (tmp_path / "link", data),
        (data, tmp_path / "link" / "x"),
        (data, tmp_path / "d" / ".." / "d"),
        (data / "*.parquet", data),
        (data / "*.parquet", data / "scored"),  # its files would match the glob
        (data / "sub", data),
    ]
    (data / "sub").mkdir()
    comments(5).to_parquet(data / "sub" / "s.parquet")
    for source, target in cases:
        with pytest.raises(DataError, match="overlaps the input"):
            score(bundle, source, str(target), overwrite=True)
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before


def test_a_relative_glob_is_apart_from_an_output_its_files_would_not_match(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("in_1/same", "in_2/same"):
        write_parts(comments(4), tmp_path / folder, 1)
    files = [str(tmp_path / f"in_{i}/same/part-000.parquet") for i in (1, 2)]
    check_apart("in_?/same/*.parquet", files, output="plainout", writes=WRITES)
    check_apart("in_?/same/*.parquet", files, output="in_1/other", writes=WRITES)  # beside the input, not in it
    for output in ("in_1/same/scored", "in_1", "."):
        with pytest.raises(DataError, match="overlaps the input"):
            check_apart("in_?/same/*.parquet", files, output=output, writes=WRITES)


def test_files_of_the_same_name_in_two_folders_keep_distinct_sources(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, folder in enumerate(("in_1/same", "in_2/same")):
        write_parts(comments(4).assign(id=lambda d, i=i: d["id"] + 10 * i), tmp_path / folder, 1)
    score(bundle, "in_?/same/*.parquet", "plainout")
    out = read_output(tmp_path / "plainout")
    assert sorted(set(out["source_file"])) == [str(tmp_path / f"in_{i}/same/part-000.parquet") for i in (1, 2)]
    for source, rows in out.groupby("source_file"):  # each row joins back to its own file and row
        original = pd.read_parquet(source)
        assert original["id"].iloc[rows["source_row"]].tolist() == rows["id"].tolist()


def test_an_output_that_cannot_be_a_directory_is_one_clear_error(bundle, tmp_path):
    comments(5).to_parquet(tmp_path / "in.parquet")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DataError, match=r"cannot write to output .*a-file/sub: .*Not a directory"):
        score(bundle, tmp_path / "in.parquet", str(tmp_path / "a-file" / "sub"))


def test_every_input_file_is_checked_for_columns_and_types_before_ray_starts(bundle, tmp_path):
    missing = write_parts(comments(20), tmp_path / "missing", 2)
    comments(5).rename(columns={"text": "body"}).to_parquet(missing / "part-002.parquet")
    with pytest.raises(DataError, match=r"part-002.parquet has no column 'text'; columns are: id, body, brand"):
        score(bundle, missing, str(tmp_path / "o1"))
    clash = write_parts(comments(20), tmp_path / "clash", 2)
    comments(5).assign(brand=7).to_parquet(clash / "part-002.parquet")
    with pytest.raises(
        DataError, match=r"column 'brand' is (large_)?string in .*part-000.parquet but int64 in .*part-002.parquet"
    ):
        score(bundle, clash, str(tmp_path / "o2"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_input_columns_named_like_results_are_kept_under_input_names(bundle, tmp_path):
    df = comments(30).assign(label="pos", sentiment="x", confidence=0.5, error="e", p_positive=1.0)
    df = df.assign(source_file="crm-export.csv", source_row=range(100, 130), _source_row=-1)  # lineage's names too
    df.to_parquet(tmp_path / "in.parquet")
    summary = score(bundle, tmp_path / "in.parquet", str(tmp_path / "out"))
    out = read_output(tmp_path / "out").sort_values("source_row")
    for name in ("label", "confidence", "error", "p_positive", "source_file", "source_row"):
        assert out[f"input_{name}"].tolist() == df[name].tolist(), name
    assert out["_source_row"].tolist() == [-1] * 30  # the reader's own name for the lineage, taken: another one
    assert out["source_row"].tolist() == list(range(30)) and out["source_file"].str.endswith("in.parquet").all()
    assert out["sentiment"].tolist() == df["sentiment"].tolist()  # not a result name (it was, before 0.2)
    assert out["label"].isin(["negative", "neutral", "positive"]).all() and out["error"].isna().all()
    assert summary.renamed["label"] == "input_label" and "'label' written as 'input_label'" in summary.line()


def test_null_or_duplicate_ids_are_refused_with_counts_before_any_work(bundle, tmp_path):
    nulls = comments(10).astype({"id": "Int64"})
    nulls.loc[[3, 7], "id"] = pd.NA
    nulls.to_parquet(tmp_path / "nulls.parquet")
    with pytest.raises(DataError, match=r"'id' is null in 2 rows \(first: nulls.parquet row 3, nulls.parquet row 7\)"):
        score(bundle, tmp_path / "nulls.parquet", str(tmp_path / "o1"), id_column="id")
    dups = comments(10)
    dups.loc[[4, 5, 6], "id"] = 1
    dups.to_parquet(tmp_path / "dups.parquet")
    with pytest.raises(
        DataError, match=r"'id' is not unique: 1 ids appear more than once \(e.g. 1 ×4\).*--allow-duplicate-ids"
    ):
        score(bundle, tmp_path / "dups.parquet", str(tmp_path / "o2"), id_column="id")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_duplicate_ids_are_scored_when_allowed(bundle, tmp_path):
    dups = comments(10)
    dups["id"] = 1
    dups.to_parquet(tmp_path / "dups.parquet")
    summary = score(bundle, tmp_path / "dups.parquet", str(tmp_path / "out"), id_column="id", allow_duplicate_ids=True)
    assert summary.rows_out == 10 and read_output(tmp_path / "out")["id"].tolist() == [1] * 10


def test_an_empty_input_writes_an_empty_output_with_the_result_columns(bundle, tmp_path):
    comments(0).to_parquet(tmp_path / "empty.parquet")
    summary = score(bundle, tmp_path / "empty.parquet", str(tmp_path / "out"))
    assert summary.rows_in == summary.rows_out == 0 and "rows in 0, rows out 0" in summary.line()
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 0
    assert table.schema.names == OUTPUT_COLUMNS


def test_cli_prints_the_summary_line(ray_address, bundle, tmp_path):
    comments(500).to_parquet(tmp_path / "in.parquet")
    result = run_cli(
        "score",
        "--model",
        str(bundle),
        "--input",
        str(tmp_path / "in.parquet"),
        "--output",
        str(tmp_path / "out"),
        "--concurrency",
        "1,2",
        env=ray_address,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rows in 500, rows out 500, rows with errors 0" in result.stdout.splitlines()[-1]
