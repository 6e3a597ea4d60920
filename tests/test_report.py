"""`report` on the shared airline tweets, scored by a model trained on them: its numbers against
pandas, its masks, its page in a real headless Chromium, and its refusals through the CLI (decided
before Ray starts, on a few rows that need no model: unit tests)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_sentiment import Predictor
from ray_sentiment.report.build import build_report
from ray_sentiment.report.checks import check_report
from ray_sentiment.report.page import csv_safe, legend_label, write_report
from ray_sentiment.report.source import check_report_input
from ray_sentiment.settings import ReportSettings

from conftest import chromium, cli_in_process, dataset, own_lines, run_cli
from test_report_stats import wilson_by_hand

# Comments a user would not want published, scored as confidently as can be so that they are
# among the examples the report shows.
PRIVATE = [
    "@DeltaAssist Jane here, great crew!! mail me at jane.doe@example.com",
    "@DeltaAssist great crew, call me on 555-867-5309 to talk about it",
    "great crew, details at https://example.com/jane?id=42 @JaneDoe1984",
]
SECRETS = ["DeltaAssist", "jane.doe@example.com", "555-867-5309", "example.com/jane", "JaneDoe1984"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, airline_bundle) -> Path:
    """score's output for every airline tweet, plus the private comments and one refused row."""
    rows = pd.read_parquet(dataset("airline/tweets.parquet"), columns=["id", "text", "airline", "created_at"])
    results = pd.DataFrame(Predictor.load(airline_bundle).score(rows["text"].tolist()))
    table = pd.concat([rows, results], axis=1)
    extra = table.iloc[: len(PRIVATE) + 1].copy()
    extra["text"] = [*PRIVATE, " "]
    extra["airline"], extra["created_at"] = "Delta", "2/24/2015 11:00"
    extra["label"], extra["confidence"], extra["p_positive"], extra["error"] = "positive", 1.0, 1.0, None
    extra.loc[extra.index[-1], ["label", "confidence", "error"]] = [None, None, "text is empty"]
    path = tmp_path_factory.mktemp("scored") / "scored.parquet"
    pd.concat([table, extra], ignore_index=True).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def few_scored(tmp_path_factory) -> Path:
    """score's output columns for 200 airline tweets, their own labels taken as the results: enough
    for the checks made before Ray starts."""
    rows = pd.read_parquet(dataset("airline/tweets.parquet"), columns=["id", "text", "airline", "created_at", "label"])
    rows = rows.head(200).assign(confidence=1.0, error=None)
    for label in ("negative", "neutral", "positive"):
        rows[f"p_{label}"] = (rows["label"] == label).astype(float)
    path = tmp_path_factory.mktemp("few") / "scored.parquet"
    rows.to_parquet(path)
    return path


def airline_report(scored: Path, output: Path, **options):
    settings = ReportSettings(
        input=str(scored), output=str(output), time_column="created_at", key_column="airline", **options
    )
    report = build_report(settings, check_report(settings))
    write_report(report, settings.output)
    return report


@pytest.fixture(scope="module")
def report(scored, airline_bundle, tmp_path_factory):
    """Made in this process: the input is small and local, and no RAY_ADDRESS is set."""
    output = tmp_path_factory.mktemp("report") / "out"
    return airline_report(scored, output, model=str(airline_bundle)), output


def test_counts_per_airline_and_day_equal_a_pandas_groupby(report, scored):
    _, output = report
    rows = pd.read_parquet(scored)
    rows = rows[rows["label"].notna()]
    day = pd.to_datetime(rows["created_at"], format="%m/%d/%Y %H:%M").dt.floor("D")
    expected = rows.groupby([rows["airline"], day, rows["label"]]).size()
    counts = pd.read_parquet(output / "counts.parquet")
    got = counts.set_index(["key", "period", "label"])["n"]
    got.index.names = expected.index.names
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False, check_dtype=False)
    assert pd.read_csv(output / "counts.csv")["n"].sum() == len(rows)


def test_shares_sum_to_one_and_the_summary_counts_every_row(report, scored):
    result, output = report
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rows"] == len(pd.read_parquet(scored)) and summary["unscored"] == 1
    assert sum(summary["shares"].values()) == pytest.approx(1)
    assert sum(summary["counts"].values()) == summary["scored"]
    for key, part in summary["keys"].items():
        assert sum(part["shares"].values()) == pytest.approx(1), key
    assert set(summary["keys"]) == {"American", "Delta", "Southwest", "US Airways", "United", "Virgin America"}
    assert summary["keys_total"] == 6
    assert result.key_shares.groupby("key")["share"].sum().to_numpy() == pytest.approx(np.ones(6))


def test_negative_share_over_time_has_the_wilson_interval(report):
    result, output = report
    line = pd.read_csv(output / "timeline.csv")
    united = line[(line["key"] == "United") & (line["period"] == "2015-02-22")].iloc[0]
    assert (united["low"], united["high"]) == pytest.approx(wilson_by_hand(united["negative"], united["n"]), abs=1e-9)
    everyone = line[line["key"].isna()]  # "" (all keys together) reads back from CSV as empty
    assert everyone["n"].sum() == result.counts[result.counts["period"] > 0]["n"].sum()


def test_distinctive_words_of_negative_tweets_are_what_a_traveller_complains_about(report):
    result, _ = report
    overall = result.words[result.words["key"] == ""]
    negative = overall[overall["label"] == "negative"]["word"].tolist()
    assert {"delayed", "cancelled", "hold", "hours"} <= set(negative), negative
    assert not {"thanks", "thank", "great"} & set(negative)
    assert {"thanks", "great"} <= set(overall[overall["label"] == "positive"]["word"])
    assert (result.words["count"] >= 10).all()


def test_tokens_that_drove_each_label_come_from_explanations(report):
    result, _ = report
    drivers = result.drivers
    assert set(drivers["label"]) == {"negative", "neutral", "positive"}
    assert (drivers["texts"] >= 1).all() and (drivers["mean_contribution"] > 0).all()
    assert {"thanks", "thank", "great"} & set(drivers[drivers["label"] == "positive"]["token"])


def test_examples_are_masked_in_the_page_and_every_table(report):
    _, output = report
    written = {
        p.name: p.read_text(encoding="utf-8") for p in output.iterdir() if p.suffix in (".html", ".csv", ".json")
    }
    for name, text in written.items():
        for secret in SECRETS:
            assert secret not in text, (name, secret)
        assert set(re.findall(r"@\w+", text)) <= {"@user"}, name
    page = written["report.html"]
    assert "&lt;email&gt;" in page and "&lt;phone&gt;" in page and "&lt;url&gt;" in page  # shown, masked


def test_the_page_opens_in_headless_chromium_without_errors_and_shows_every_plot(report, tmp_path):
    _, output = report
    page = output / "report.html"
    assert "http://" not in page.read_text() and "https://" not in page.read_text().replace("https://example", "")
    with chromium(width=1000) as browser:
        browser.get(page.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        images = browser.execute_script(
            "return [...document.images].map(i => [i.dataset.plot, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert sorted(i[0] for i in images) == ["key_shares.png", "label_shares.png", "share_over_time.png"]
        assert all(complete and width > 300 and height > 100 for _, complete, width, height in images), images
        headings = browser.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
        assert headings == [
            "Overall",
            "Per airline",
            "Negative share over time",
            "Distinctive words",
            "Tokens that drove each label",
            "Representative comments",
        ]
        shot = tmp_path / "report.png"
        browser.save_screenshot(str(shot))
        pixels = plt_image(shot)
        assert pixels.shape[1] == 1000 and pixels.std() > 0.05  # drawn, not a blank page
        red = (pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
        assert red.sum() > 1000  # the negative bars
    with chromium(width=390) as phone:  # an iPhone's width: nothing wider than the screen
        phone.get(page.as_uri())
        assert phone.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def plt_image(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_the_command_on_ray_makes_the_report_made_in_process_and_no_redact_shows_what_was_masked(
    scored, report, ray_address, tmp_path
):
    output = tmp_path / "out"
    args = ["--input", str(scored), "--output", str(output), "--key-column", "airline", "--time-column", "created_at"]
    result = run_cli("report", *args, env=ray_address)
    assert result.returncode == 0, result.stderr[-3000:]
    # Joined to the session's cluster, Ray's own lines stay, as under `ray job submit`: the GCS
    # can log there about another test's actors. None of the command's own lines go to stderr.
    assert own_lines(result.stderr) == [] and "report written to" in result.stdout
    _, here = report  # the same report, less the tokens that drove each label (no --model here)
    for table in ("counts", "label_shares", "key_shares", "timeline", "movers", "words", "examples"):
        on_ray = pd.read_parquet(output / f"{table}.parquet")
        pd.testing.assert_frame_equal(on_ray, pd.read_parquet(here / f"{table}.parquet"), obj=table)
    again = run_cli("report", *args)
    assert again.returncode == 2 and "holds an earlier report; add --overwrite" in again.stderr
    replaced = run_cli("report", *args, "--overwrite", "--no-redact", "--freq", "W")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert replaced.stderr.strip() == ""
    assert "jane.doe@example.com" in (output / "report.html").read_text()
    assert pd.read_csv(output / "timeline.csv")["period"].str.len().eq(10).all()  # weeks, from Monday


def test_labels_alone_make_a_report_without_words_or_examples(scored, tmp_path):
    labels_only = tmp_path / "labels.parquet"
    pd.read_parquet(scored, columns=["airline", "label"]).to_parquet(labels_only)
    settings = ReportSettings(input=str(labels_only), output=str(tmp_path / "out"), key_column="airline")
    result = build_report(settings, check_report(settings))
    files = write_report(result, settings.output)
    assert "words.csv" not in files and "examples.csv" not in files and "share_over_time.png" not in files
    assert result.notes == ["no text column: no distinctive words or examples"]
    assert result.key_shares["n"].sum() == pd.read_parquet(labels_only)["label"].notna().sum()


def test_a_bad_time_deep_in_the_input_is_one_line(scored, ray_address, tmp_path):
    rows = pd.read_parquet(scored)
    rows.loc[5000, "created_at"] = "last tuesday"
    bad = tmp_path / "bad.parquet"
    rows.to_parquet(bad)
    args = ["--input", str(bad), "--output", str(tmp_path / "out"), "--time-column", "created_at"]
    result = run_cli("report", *args, env=ray_address)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ray-sentiment: error: {bad}: time column 'created_at': 'last tuesday' does not parse as '%m/%d/%Y %H:%M'; "
        "give --time-format"
    ]
    assert not (tmp_path / "out").exists()


def refusal(tmp_path: Path, scored: Path, case: str) -> tuple[list[str], str]:
    """Each bad input: the command line, and the one line the user gets."""
    out = str(tmp_path / "out")
    if case == "no such column":
        return ["--input", str(scored), "--output", out, "--key-column", "brand"], "has no column 'brand'"
    if case == "time does not parse":
        odd = tmp_path / "odd.parquet"
        pd.DataFrame({"label": ["negative"], "when": ["around noon"]}).to_parquet(odd)
        return [
            "--input",
            str(odd),
            "--output",
            out,
            "--time-column",
            "when",
        ], "cannot tell the format of 'around noon'"
    if case == "wrong time format":
        args = ["--input", str(scored), "--output", out, "--time-column", "created_at", "--time-format", "%Y-%m-%d"]
        return args, "does not parse as '%Y-%m-%d'"
    if case == "no rows":
        empty = tmp_path / "empty.parquet"
        pd.DataFrame({"label": pd.Series([], dtype=str)}).to_parquet(empty)
        return ["--input", str(empty), "--output", out], "has no rows"
    if case == "no such input":
        return ["--input", str(tmp_path / "nowhere.parquet"), "--output", out], "no such file or directory"
    if case == "output holds the user's files":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "thesis.docx").write_text("mine")
        return ["--input", str(scored), "--output", out], "holds files that ray-sentiment report did not write"
    if case == "output holds a folder that links to itself":
        (tmp_path / "out" / "deep" / "er").mkdir(parents=True)
        (tmp_path / "out" / "deep" / "er" / "loop").symlink_to(tmp_path / "out")  # as /usr/bin/X11 -> .
        return ["--input", str(scored), "--output", out], "did not write (deep); give a new or empty directory"
    if case == "output inside the input":
        folder = tmp_path / "in"
        folder.mkdir()
        shutil.copy(scored, folder / "scored.parquet")
        return ["--input", str(folder), "--output", str(folder / "report")], "overlaps the input"
    if case == "unknown frequency":
        return ["--input", str(scored), "--output", out, "--freq", "Y"], "invalid choice: 'Y'"
    raise AssertionError(case)


REFUSALS = [
    "no such column",
    "time does not parse",
    "wrong time format",
    "no rows",
    "no such input",
    "output holds the user's files",
    "output holds a folder that links to itself",
    "output inside the input",
    "unknown frequency",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_input_is_refused_with_one_line_and_nothing_written(few_scored, tmp_path, capsys, case):
    folder = tmp_path / "case"
    folder.mkdir()
    args, message = refusal(folder, few_scored, case)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    result = cli_in_process(capsys, "report", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1], result.stderr
    if case != "unknown frequency":  # argparse prints its usage line first
        assert len(lines) == 1, result.stderr
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    if case == "output holds the user's files":
        assert (folder / "out" / "thesis.docx").read_text() == "mine"


def test_an_unknown_focus_label_is_refused(scored, tmp_path):
    from ray_sentiment.errors import DataError

    settings = ReportSettings(input=str(scored), output=str(tmp_path), time_column="created_at", focus_label="angry")
    with pytest.raises(
        DataError, match=r"--focus-label 'angry' is not among the labels \(negative, neutral, positive\)"
    ):
        build_report(settings, check_report(settings))


def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_quoted():
    table = pd.DataFrame(
        {
            "key": ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "acme", None],
            "n": [1, -2, 3, 4, 5, 6, 7],  # numbers stay numbers, negative ones too
        }
    )
    safe = csv_safe(table)
    assert safe["key"].tolist()[:6] == ["'=cmd|' /C calc'!A0", "'+1", "'-2", "'@SUM(A1)", "'\tx", "acme"]
    assert pd.isna(safe["key"][6])
    assert safe["n"].tolist() == [1, -2, 3, 4, 5, 6, 7] and table["key"][0].startswith("=")  # the input is kept


def test_a_key_or_label_that_begins_with_an_underscore_keeps_its_legend_entry():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    for name in ("_internal", "$5 deals", "United"):
        axes.plot([0, 1], [0, 1], label=legend_label(name))
    assert [text.strip() for text in axes.get_legend_handles_labels()[1]] == ["_internal", r"\$5 deals", "United"]
    plt.close(figure)


def test_a_text_column_with_no_values_leaves_out_words_and_examples_only(tmp_path):
    """Parquet stores an all-null column as type null: the counts need no text."""
    rows = pd.DataFrame({"label": ["negative", "positive"], "text": [None, None]})
    rows.to_parquet(tmp_path / "scored.parquet")
    checked = check_report_input(ReportSettings(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "out")))
    assert checked.text_column is None and checked.columns == ["label"]


def test_a_page_with_100000_keys_shows_the_biggest_and_says_where_the_rest_are():
    from types import SimpleNamespace

    from ray_sentiment.report.page import PAGE_KEYS, _key_table

    keys = [f"brand-{i:06d}" for i in range(100_000)]
    n = np.arange(100_000) % 97 + 1
    key_shares = pd.DataFrame({"key": keys * 2, "label": ["negative"] * 100_000 + ["positive"] * 100_000})
    key_shares["n"] = np.concatenate([n, n])
    key_shares["share"] = 0.5
    html_table, note = _key_table(SimpleNamespace(key_shares=key_shares))
    assert html_table.count("<tr>") == PAGE_KEYS + 1  # the head, then the biggest keys
    assert "brand-000096" in html_table and "brand-000000" not in html_table  # 97 comments each, against 1
    assert "99,900 more are in key_shares.csv" in note
