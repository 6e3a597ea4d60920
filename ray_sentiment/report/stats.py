"""The report's statistics, as plain functions of small tables (counts already aggregated by Ray):
shares with Wilson intervals, movers against a trailing baseline, and distinctive words by
weighted log-odds. Nothing here reads data or starts Ray.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .source import OTHER_KEY

Z95 = 1.959964  # two-sided 95% normal quantile
TRAILING = {"H": 24, "D": 7, "W": 4, "M": 3}  # periods in a mover's baseline, per --freq


def wilson(successes: np.ndarray, trials: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion: unlike p ± z·se it stays inside [0, 1] and
    is honest for small counts and for shares near 0 or 1. Trials of 0 give (0, 1)."""
    k, n = np.asarray(successes, float), np.asarray(trials, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = np.where(n > 0, centre - half, 0.0), np.where(n > 0, centre + half, 1.0)
    return np.clip(low, 0, 1), np.clip(high, 0, 1)


def shares(counts: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows of `by` + label + n → one row per `by` group and label with its share of the group."""
    table = counts.groupby([*by, "label"], as_index=False)["n"].sum()
    totals = table.groupby(by)["n"].transform("sum") if by else table["n"].sum()
    return table.assign(share=table["n"] / totals)


def timeline(counts: pd.DataFrame, focus: str) -> pd.DataFrame:
    """Per key and period: comments, those labelled `focus`, its share and Wilson 95% interval."""
    grouped = counts.assign(hit=np.where(counts["label"] == focus, counts["n"], 0))
    table = grouped.groupby(["key", "period"], as_index=False)[["n", "hit"]].sum()
    table = table.rename(columns={"hit": focus})
    low, high = wilson(table[focus].to_numpy(), table["n"].to_numpy())
    return table.assign(share=table[focus] / table["n"], low=low, high=high).sort_values(["key", "period"])


def movers(line: pd.DataFrame, focus: str, *, freq: str, min_count: int = 20, top: int = 10) -> pd.DataFrame:
    """The periods whose `focus` share moved most against the same key's trailing baseline (the
    TRAILING[freq] periods before it, pooled), by two-proportion z score. Periods with fewer than
    `min_count` comments, or baselines with fewer, are not ranked: a handful of comments moves
    a share by chance."""
    window = TRAILING[freq]
    rows = []
    for key, part in line.groupby("key"):
        part = part.set_index("period")[["n", focus]]
        if len(part) > 1:  # periods without comments count as empty, so the baseline spans real time
            part = part.asfreq(_offset(freq), fill_value=0)
        n, hit = part["n"].to_numpy(float), part[focus].to_numpy(float)
        base_n = pd.Series(n).shift(1).rolling(window, min_periods=1).sum().to_numpy()
        base_hit = pd.Series(hit).shift(1).rolling(window, min_periods=1).sum().to_numpy()
        for i, period in enumerate(part.index):
            if n[i] < min_count or not base_n[i] >= min_count:
                continue
            p, p0 = hit[i] / n[i], base_hit[i] / base_n[i]
            pooled = (hit[i] + base_hit[i]) / (n[i] + base_n[i])
            se = np.sqrt(pooled * (1 - pooled) * (1 / n[i] + 1 / base_n[i]))
            z = (p - p0) / se if se > 0 else 0.0
            rows.append((key, period, int(n[i]), p, p0, p - p0, z))
    columns = ["key", "period", "n", "share", "baseline", "change", "z"]
    table = pd.DataFrame(rows, columns=columns)
    return table.reindex(table["z"].abs().sort_values(ascending=False).index).head(top).reset_index(drop=True)


def _offset(freq: str) -> str:
    return {"H": "h", "D": "D", "W": "W-MON", "M": "MS"}[freq]


def log_odds(group: pd.Series, rest: pd.Series) -> pd.DataFrame:
    """Weighted log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi and Quinn 2008,
    "Fightin' Words", eq. 16-22): each word's counts in `group` against `rest` (Series indexed by
    word), with the prior α_w = the word's count in both together, so that frequent words need
    more evidence and rare ones cannot win on a count of two. Returns word, count (in `group`),
    delta (the log-odds ratio) and z (delta over its standard error), highest z first."""
    group, rest = group.align(rest, fill_value=0)
    alpha = (group + rest).astype(float)
    a0, n_i, n_j = alpha.sum(), float(group.sum()), float(rest.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        odds_i = (group + alpha) / (n_i + a0 - group - alpha)
        odds_j = (rest + alpha) / (n_j + a0 - rest - alpha)
        delta = np.log(odds_i) - np.log(odds_j)
        z = delta / np.sqrt(1 / (group + alpha) + 1 / (rest + alpha))
    table = pd.DataFrame(
        {"word": group.index, "count": group.to_numpy().astype(np.int64), "delta": delta.to_numpy(), "z": z.to_numpy()}
    )
    return table.replace([np.inf, -np.inf], np.nan).dropna().sort_values("z", ascending=False, ignore_index=True)


def distinctive_words(words: pd.DataFrame, min_count: int = 10, top: int = 15) -> pd.DataFrame:
    """From comment counts per (key, label, word): per label, its words against the other labels';
    per key and label, that key's words against the other keys' for the same label (what sets one
    brand's complaints apart). A word needs `min_count` comments in the group; positive z only."""
    out = []
    by_label = words.groupby(["label", "word"])["n"].sum()
    for label in by_label.index.get_level_values(0).unique():
        rest = by_label.drop(label, level=0).groupby(level=1).sum()
        out.append(_top(log_odds(by_label.loc[label], rest), min_count, top).assign(key="", label=label))
    keys = words["key"].unique()
    if len(keys) > 1:
        cells = words.groupby(["label", "key", "word"])["n"].sum()
        for (label, key), group in cells.groupby(level=[0, 1]):
            if key == OTHER_KEY:  # the keys not broken down: in every rest, never a group of their own
                continue
            same_label = cells.loc[label]
            rest = same_label.drop(key, level=0).groupby(level=1).sum()
            table = log_odds(group.droplevel([0, 1]), rest)
            out.append(_top(table, min_count, top).assign(key=key, label=label))
    columns = ["key", "label", "word", "count", "delta", "z"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def _top(table: pd.DataFrame, min_count: int, top: int) -> pd.DataFrame:
    return table[(table["count"] >= min_count) & (table["z"] > 0)].head(top)
