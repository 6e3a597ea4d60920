"""The report's statistics and masks as plain functions: no Ray, small hand-made tables."""

import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ray_sentiment.errors import DataError
from ray_sentiment.report.source import NO_TIME, periods
from ray_sentiment.report.stats import distinctive_words, log_odds, movers, timeline, wilson
from ray_sentiment.text.redact import dedupe_key, redact


def wilson_by_hand(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The interval's ends are the p where (k/n - p)^2 = z^2 p (1 - p) / n: a quadratic in p."""
    p_hat = k / n
    a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
    low, high = sorted(np.roots([a, b, c]).real)
    return low, high


@pytest.mark.parametrize(("k", "n"), [(12, 40), (1, 3), (95, 100), (3079 * 3 // 4, 3079)])
def test_wilson_matches_the_quadratic_solved_by_hand(k, n):
    low, high = wilson(np.array([k]), np.array([n]))
    assert (low[0], high[0]) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)


def test_wilson_edges_stay_inside_0_1_and_no_comments_know_nothing():
    low, high = wilson(np.array([0, 5, 0]), np.array([5, 5, 0]))
    assert low[0] == pytest.approx(0, abs=1e-12) and 0 < high[0] < 1
    assert 0 < low[1] < 1 and high[1] == pytest.approx(1)
    assert (low[2], high[2]) == (0, 1)


def test_timeline_counts_the_focus_label_per_key_and_period():
    counts = pd.DataFrame(
        {
            "key": ["a", "a", "a", "b"],
            "period": pd.to_datetime(["2015-02-17", "2015-02-17", "2015-02-18", "2015-02-17"]),
            "label": ["negative", "positive", "negative", "positive"],
            "n": [3, 1, 2, 4],
        }
    )
    line = timeline(counts, "negative").set_index(["key", "period"])
    assert line.loc[("a", pd.Timestamp("2015-02-17")), ["n", "negative", "share"]].tolist() == [4, 3, 0.75]
    assert line.loc[("b", pd.Timestamp("2015-02-17")), "share"] == 0


def test_movers_rank_a_jump_against_the_trailing_week_first():
    days = pd.date_range("2015-02-01", periods=10, freq="D")
    negative = [30, 31, 29, 30, 30, 31, 30, 29, 80, 30]  # of 100 a day: day 9 jumps
    line = pd.DataFrame({"key": "a", "period": days, "n": 100, "negative": negative})
    line["share"] = line["negative"] / line["n"]
    top = movers(line, "negative", freq="D", min_count=20).iloc[0]
    assert top["period"] == days[8] and top["change"] == pytest.approx(0.8 - 0.3, abs=0.01) and top["z"] > 5


def test_movers_leave_out_periods_with_too_few_comments():
    days = pd.date_range("2015-02-01", periods=4, freq="D")
    line = pd.DataFrame({"key": "a", "period": days, "n": [100, 100, 100, 5], "negative": [30, 30, 30, 5]})
    line["share"] = line["negative"] / line["n"]
    assert days[3] not in set(movers(line, "negative", freq="D", min_count=20)["period"])


def test_log_odds_favours_words_of_the_group_and_discounts_rare_ones():
    group = pd.Series({"delayed": 90, "the": 500, "rare": 2, "other": 408})  # 1,000 each: "the" is as
    rest = pd.Series({"delayed": 10, "the": 500, "thanks": 200, "other": 290})  # common on both sides
    table = log_odds(group, rest).set_index("word")
    assert table.loc["delayed", "z"] > 3
    assert abs(table.loc["the", "z"]) < 0.5
    assert table.loc["rare", "z"] < table.loc["delayed", "z"] / 3  # 2 of 2 in the group, but only 2
    assert table.loc["thanks", "z"] < 0 and table.loc["thanks", "count"] == 0


def test_distinctive_words_need_min_count_comments_and_compare_keys_within_a_label():
    words = pd.DataFrame(
        {
            "key": ["x", "x", "y", "y", "x", "y"],
            "label": ["negative", "negative", "negative", "negative", "positive", "positive"],
            "word": ["bags", "rare", "seats", "bags", "thanks", "thanks"],
            "n": [50, 3, 60, 5, 80, 70],
        }
    )
    table = distinctive_words(words, min_count=10)
    overall = table[table["key"] == ""]
    assert "thanks" in overall[overall["label"] == "positive"]["word"].tolist()
    assert "rare" not in table["word"].tolist()
    x_negative = table[(table["key"] == "x") & (table["label"] == "negative")]["word"].tolist()
    assert x_negative == ["bags"]  # x's complaints against y's complaints


REDACTIONS = {
    "@united where is my bag": "@user where is my bag",
    "mail jane.doe+x@example.co.uk now": "mail <email> now",
    "call me at 555-123-4567 or (555) 123 4567": "call me at <phone> or <phone>",
    "my number is +1 415 555 0100.": "my number is <phone>.",
    "see https://t.co/xyz and www.example.com/a?b=1": "see <url> and <url>",
    "flight 1234 at 6:30, 2 hours late": "flight 1234 at 6:30, 2 hours late",
    # Forms a first version missed (the second hostile trial):
    "check bit.ly/3xYzAb or t.co/abc now": "check <url> or <url> now",  # shorteners, no scheme
    "go to example.com today": "go to <url> today",  # a bare domain
    "ftp://files.example.org/x or mailto:bob@x.org or tel:+14155550100": "<url> or <url> or <url>",  # schemes
    "write root@localhost": "write <email>",  # a host without a dot
    "ping ＠united or jane＠example．com": "ping @user or <email>",  # fullwidth
    "jane [at] example [dot] com or jo (AT) mail (DOT) co (dot) uk": "<email> or <email>",  # obfuscated
    "call 555 - 123 - 4567": "call <phone>",  # spaced separators
    "card 4111 1111 1111 1111 or 4111-1111-1111-1111 or 3782 822463 10005": "card <card> or <card> or <card>",
    # ... and what must stay
    "e.g. the U.S. version 2.0, flight UA1234 on 2/24 at 6.30 pm, gate 12 row 34": (
        "e.g. the U.S. version 2.0, flight UA1234 on 2/24 at 6.30 pm, gate 12 row 34"
    ),
}


@pytest.mark.parametrize("text", list(REDACTIONS))
def test_redact_masks_handles_emails_phones_cards_and_urls_and_keeps_the_rest(text):
    assert redact(text) == REDACTIONS[text]


def test_dedupe_key_joins_retweets_and_mentions_of_the_same_complaint():
    assert dedupe_key("RT @a: Lost my BAG  again http://t.co/1") == dedupe_key("@b lost my bag again")


def test_periods_parse_text_times_floor_them_and_keep_null_times_apart():
    times = pa.array(["2/24/2015 11:35", "2/23/2015 0:05", None, " "])
    days = periods(times, "%m/%d/%Y %H:%M", freq="D", name="created_at").to_pylist()
    assert days[:2] == [1424736000, 1424649600] and days[2:] == [NO_TIME, NO_TIME]
    week = periods(times, "%m/%d/%Y %H:%M", freq="W", name="created_at").to_pylist()
    assert week[0] == week[1] == 1424649600  # Monday 2015-02-23


def test_periods_count_zoned_times_in_utc():
    instant = pa.array(
        [pd.Timestamp("2015-02-24 23:30", tz="America/Los_Angeles")], pa.timestamp("s", "America/Los_Angeles")
    )
    assert periods(instant, None, freq="D", name="t").to_pylist() == [
        int(pd.Timestamp("2015-02-25", tz="UTC").timestamp())
    ]


def test_a_time_that_does_not_parse_is_named():
    with pytest.raises(DataError, match=r"time column 'created_at': 'yesterday' does not parse as '%m/%d/%Y %H:%M'"):
        periods(pa.array(["2/24/2015 11:35", "yesterday"]), "%m/%d/%Y %H:%M", freq="D", name="created_at")


@pytest.mark.parametrize(
    "times, fmt, shown",
    [
        (["2/24/2015 11:35", "12/31/9999 00:00"], "%m/%d/%Y %H:%M", "9999-12-31 00:00:00"),
        ([datetime.datetime(2015, 2, 24), datetime.datetime(1899, 12, 31)], None, "1899-12-31 00:00:00"),
    ],
)
def test_a_time_the_page_cannot_draw_is_named(times, fmt, shown):
    """A placeholder year would stretch the time axis past what matplotlib draws."""
    with pytest.raises(DataError, match=rf"time column 't': {shown} is outside the years 1900-2199 the report draws"):
        periods(pa.array(times, None if fmt else pa.timestamp("us")), fmt, freq="D", name="t")


def test_movers_count_missing_periods_as_empty():
    days = pd.to_datetime(["2015-02-01", "2015-02-02", "2015-02-20", "2015-02-21"])  # 17 days without comments
    line = pd.DataFrame({"key": "a", "period": days, "n": 100, "negative": [30, 30, 30, 80]})
    line["share"] = line["negative"] / line["n"]
    table = movers(line, "negative", freq="D", min_count=20)
    assert days[2] not in set(table["period"])  # its trailing week held no comments: no baseline
    assert table.iloc[0]["period"] == days[3] and table.iloc[0]["baseline"] == pytest.approx(0.3)
