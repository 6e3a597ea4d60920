"""The report's files: report.html (one self-contained page: plots embedded, no script, no network),
the plots as PNG (matplotlib, Agg), every table as Parquet and CSV, and summary.json for scripts.

The output directory holds only these names. A directory holding anything else is refused, and a
previous report there is replaced only with --overwrite, so no file of the user's is touched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import DataError
from ..storage import failing_as, resolve_filesystem
from .source import NO_TIME, UNITS
from .stats import TRAILING

if TYPE_CHECKING:
    from .build import Report

TABLES = ("counts", "label_shares", "key_shares", "timeline", "movers", "words", "examples", "drivers")
PLOTS = ("label_shares.png", "key_shares.png", "share_over_time.png")
FILES = ("report.html", "summary.json", *PLOTS, *(f"{t}.{ext}" for t in TABLES for ext in ("parquet", "csv")))
WRITTEN_BY = "ray-sentiment report"
COLOURS = {"negative": "#c0392b", "neutral": "#95a5a6", "positive": "#27ae60"}
PALETTE = ("#2c7fb8", "#e6550d", "#756bb1", "#31a354", "#de2d26", "#636363", "#fdae6b", "#9ecae1")
MAX_LINES = 8  # keys drawn over time; the rest are in the tables
MAX_BARS = 20  # keys drawn in the shares plot
MIN_PLOTTED = 10  # comments a period needs to be drawn: a share of 3 comments is noise; the tables keep it
PAGE_KEYS = 100  # keys in the page's table, and ...
SUMMARY_KEYS = 1_000  # ... in summary.json, those with most comments: key_shares.csv and .parquet hold every key


def check_output(output: str, overwrite: bool) -> None:
    """Refuse an output holding files a report did not write, or a previous report without --overwrite."""
    with failing_as(DataError, f"cannot use output {output}"):
        fs, path = resolve_filesystem(output)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            raise DataError(f"output {output} is a file; give a directory")
        if info.type == pafs.FileType.NotFound:
            return
        # One level: a report writes no folders, so a folder is foreign too, and the check never
        # walks a tree (`--output /usr` once walked it, following a link back to itself).
        found = {os.path.basename(e.path): e.type for e in fs.get_file_info(pafs.FileSelector(path))}
        if not found:
            return
        foreign = sorted(name for name, kind in found.items() if name not in FILES or kind != pafs.FileType.File)
        ours = "summary.json" in found and _written_by_us(fs, path)
        if foreign or not ours:
            shown = ", ".join((foreign or sorted(found))[:3])
            raise DataError(
                f"output {output} holds files that ray-sentiment report did not write ({shown}); "
                "give a new or empty directory"
            )
        if not overwrite:
            raise DataError(f"output {output} holds an earlier report; add --overwrite to replace it")


def _written_by_us(fs: pafs.FileSystem, path: str) -> bool:
    try:
        with fs.open_input_stream(f"{path}/summary.json") as f:
            return json.loads(f.read()).get("written_by") == WRITTEN_BY
    except (ValueError, AttributeError, OSError):
        return False


# A spreadsheet runs a cell that begins with one of these as a formula (CSV injection). OWASP's
# advice: such text gets a leading ' . Only the CSV copies: Parquet and JSON keep values exactly.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    def quoted(value):
        return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value

    texts = [c for c in table.columns if table[c].map(lambda v: isinstance(v, str)).any()]
    return table.assign(**{c: table[c].map(quoted) for c in texts})


def write_report(report: Report, output: str) -> list[str]:
    """Every file of the report under `output`; earlier report files this run does not write are
    deleted (they are ours: check_output ran). Returns the names written."""
    plots = _plots(report)
    tables = _tables(report)
    files: dict[str, bytes] = dict(plots)
    for name, table in tables.items():
        files[f"{name}.csv"] = csv_safe(table).to_csv(index=False).encode()
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), sink)
        files[f"{name}.parquet"] = sink.getvalue()
    files["summary.json"] = json.dumps(summary(report, sorted([*files, "report.html"])), indent=2).encode()
    files["report.html"] = page(report, plots).encode()
    with failing_as(DataError, f"cannot write the report to {output}"):
        fs, path = resolve_filesystem(output)
        fs.create_dir(path, recursive=True)
        for name in FILES:
            if name not in files and fs.get_file_info(f"{path}/{name}").type == pafs.FileType.File:
                fs.delete_file(f"{path}/{name}")
        for name, data in files.items():
            with fs.open_output_stream(f"{path}/{name}") as f:
                f.write(data)
    return sorted(files)


def _tables(report: Report) -> dict[str, pd.DataFrame]:
    candidates = {
        "counts": _counts(report),
        "label_shares": report.label_shares,
        "key_shares": report.key_shares if report.settings.key_column else None,
        "timeline": report.timeline,
        "movers": report.movers,
        "words": report.words,
        "examples": report.examples,
        "drivers": report.drivers,
    }
    return {name: t.reset_index(drop=True) for name, t in candidates.items() if t is not None and not t.empty}


def _counts(report: Report) -> pd.DataFrame:
    """Comments per key, period (null for a row without a time) and label."""
    if not report.settings.time_column:
        return report.counts.drop(columns="period")
    period = report.counts["period"]
    return report.counts.assign(period=pd.to_datetime(period.where(period != NO_TIME), unit="s"))


def summary(report: Report, files: list[str]) -> dict:
    s = report.settings
    overall = report.label_shares.set_index("label")
    keys: dict[str, dict] = {}
    words: dict[str, list[str]] = {}
    drivers: dict[str, list[str]] = {}
    out = {
        "written_by": WRITTEN_BY,
        "input": s.input,
        "rows": report.rows,
        "scored": report.rows - report.unscored,
        "unscored": report.unscored,
        "labels": report.labels,
        "counts": {k: int(v) for k, v in overall["n"].items()},
        "shares": {k: float(v) for k, v in overall["share"].items()},
        "key_column": s.key_column,
        "keys": keys,
        "time_column": s.time_column,
        "freq": s.freq if s.time_column else None,
        "focus_label": s.focus_label if s.time_column else None,
        "movers": _records(report.movers),
        "distinctive_words": words,
        "drivers": drivers,
        "redacted": s.redact,
        "notes": report.notes,
        "files": files,
    }
    if s.key_column:
        kept = set(_biggest_keys(report, SUMMARY_KEYS))
        out["keys_total"] = int(report.key_shares["key"].nunique())
        for key, part in report.key_shares[report.key_shares["key"].isin(kept)].groupby("key"):
            keys[key] = {
                "n": int(part["n"].sum()),
                "shares": {label: float(v) for label, v in zip(part["label"], part["share"])},
            }
    if not report.timeline.empty:
        out["periods"] = {"first": str(report.timeline["period"].min()), "last": str(report.timeline["period"].max())}
    if not report.words.empty:
        for label, part in report.words[report.words["key"] == ""].groupby("label"):
            words[label] = part["word"].tolist()
    if not report.drivers.empty:
        for label, part in report.drivers.groupby("label"):
            drivers[label] = part["token"].tolist()
    return out


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.to_json(orient="records", date_format="iso")) if not table.empty else []


# ---- plots ---------------------------------------------------------------------------------


def _plots(report: Report) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")  # no display: a server or a CI machine
    plots = {"label_shares.png": _label_shares(report)}
    if report.settings.key_column:
        plots["key_shares.png"] = _key_shares(report)
    if not report.timeline.empty:
        plots["share_over_time.png"] = _share_over_time(report)
    return plots


def _plain(text: str) -> str:
    """Text as matplotlib should draw it: a $ in a brand's name would start its maths mode."""
    return text.replace("$", r"\$")


def legend_label(text: str) -> str:
    """A legend entry: matplotlib leaves out labels that begin with "_", so those get a space first."""
    text = _plain(text)
    return " " + text if text.startswith("_") else text


def _colour(labels: list[str]) -> dict[str, str]:
    spare = iter(PALETTE)
    return {label: COLOURS[label] if label in COLOURS else next(spare, "#333333") for label in labels}


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    sink = io.BytesIO()
    figure.tight_layout()
    figure.savefig(sink, format="png", dpi=110)
    plt.close(figure)
    return sink.getvalue()


def _label_shares(report: Report) -> bytes:
    import matplotlib.pyplot as plt

    table = report.label_shares.sort_values("label")
    colours = _colour(report.labels)
    figure, axes = plt.subplots(figsize=(6, 0.5 * len(table) + 1))
    bars = axes.barh(table["label"], table["share"] * 100, color=[colours[x] for x in table["label"]])
    axes.bar_label(bars, labels=[f"{s:.1%} ({n:,})" for s, n in zip(table["share"], table["n"])], padding=3)
    axes.set_xlim(0, 115)
    axes.set_xlabel("share of comments (%)")
    axes.invert_yaxis()
    axes.set_title(f"Labels over {report.rows - report.unscored:,} comments")
    return _png(figure)


def _key_shares(report: Report) -> bytes:
    import matplotlib.pyplot as plt

    totals = report.key_shares.groupby("key")["n"].sum()
    biggest = totals.nlargest(MAX_BARS).index
    table = report.key_shares.pivot(index="key", columns="label", values="share").fillna(0).loc[biggest]
    focus = report.settings.focus_label
    table = table.sort_values(focus if focus in table else table.columns[0])
    colours = _colour(report.labels)
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(table) + 1.5))
    left = pd.Series(0.0, index=table.index)
    for label in report.labels:
        if label in table:
            axes.barh(table.index, table[label] * 100, left=left * 100, color=colours[label], label=legend_label(label))
            left += table[label]
    axes.set_yticks(range(len(table)), [_plain(f"{k} ({totals[k]:,})") for k in table.index])
    axes.set_xlabel("share of comments (%)")
    axes.set_xlim(0, 100)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15 if len(table) > 3 else -0.3), ncol=len(report.labels))
    more = f", the {MAX_BARS} with most comments" if len(totals) > MAX_BARS else ""
    axes.set_title(_plain(f"Labels per {report.settings.key_column}{more}"))
    return _png(figure)


def _share_over_time(report: Report) -> bytes:
    import matplotlib.pyplot as plt

    line, focus = report.timeline, report.settings.focus_label
    biggest = line.groupby("key")["n"].sum().sort_values(ascending=False).index[:MAX_LINES]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for colour, key in zip(PALETTE, biggest):
        part = line[(line["key"] == key) & (line["n"] >= MIN_PLOTTED)]
        name = legend_label(key or "all")
        axes.plot(part["period"], part["share"] * 100, marker="o", markersize=3, color=colour, label=name)
        axes.fill_between(part["period"], part["low"] * 100, part["high"] * 100, color=colour, alpha=0.15)
    axes.set_ylabel(f"{focus} share (%), 95% interval")
    axes.set_ylim(0, 100)
    if report.settings.key_column:
        axes.legend(fontsize="small", ncol=2)
    figure.autofmt_xdate()
    axes.set_title(f"{focus.capitalize()} share per {UNITS[report.settings.freq]}")
    return _png(figure)


def _when(period, freq: str) -> str:
    return pd.Timestamp(period).strftime("%Y-%m-%d %H:00" if freq == "H" else "%Y-%m-%d")


# ---- the page ------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;
color:#222;line-height:1.45}
img{max-width:100%;height:auto}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem;display:block;overflow-x:auto}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.up{color:#c0392b}.down{color:#27ae60}.muted{color:#666;font-size:.85rem}
blockquote{margin:.3rem 0;padding:.3rem .8rem;border-left:3px solid #ccc;background:#fafafa}
"""


def page(report: Report, plots: dict[str, bytes]) -> str:
    s = report.settings
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Sentiment report: {_e(s.input)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Sentiment report</h1><p class='muted'>{_e(s.input)}: {report.rows:,} rows, "
        f"{report.rows - report.unscored:,} scored"
        + (f", {report.unscored:,} not scored (their error is in the input)" if report.unscored else "")
        + (". Handles, e-mail addresses, phone numbers and URLs are masked." if s.redact else ".")
        + "</p>",
        "<h2>Overall</h2>",
        _image(plots, "label_shares.png", "Share of each label"),
        _table(report.label_shares, ["label", "n", "share"]),
    ]
    if s.key_column:
        parts += [
            f"<h2>Per {_e(s.key_column)}</h2>",
            _image(plots, "key_shares.png", f"Share of each label per {s.key_column}"),
            *_key_table(report),
        ]
    if not report.timeline.empty:
        parts += [
            f"<h2>{_e(s.focus_label.capitalize())} share over time</h2>",
            _image(plots, "share_over_time.png", f"{s.focus_label} share per period with its 95% interval"),
            "<p class='muted'>Shaded: the Wilson 95% interval, wide where a period has few comments. "
            f"Periods with fewer than {MIN_PLOTTED} comments are left out of the plot; timeline.csv has them.</p>",
            "<h3>Biggest moves against the trailing baseline</h3>",
            "<p class='muted'>Each period's share against the same key's previous "
            f"{TRAILING[s.freq]} periods pooled; ranked by two-proportion z score.</p>",
            _movers(report) if not report.movers.empty else "<p>Not enough comments per period to rank moves.</p>",
        ]
    if not report.words.empty:
        parts += ["<h2>Distinctive words</h2>", _words(report)]
    if not report.drivers.empty:
        parts += [
            "<h2>Tokens that drove each label</h2>",
            "<p class='muted'>Over a sample of comments, the token whose removal lowered the predicted label's "
            "probability most (leave-one-token-out occlusion), counted per label.</p>",
            _table(report.drivers, ["label", "token", "texts", "mean_contribution"]),
        ]
    if not report.examples.empty:
        parts += ["<h2>Representative comments</h2>", _examples(report)]
    parts += [f"<p class='muted'>{_e(note)}</p>" for note in report.notes]
    parts.append("</body></html>")
    return "\n".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value))


def _image(plots: dict[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(plots[name]).decode()
    return f"<img src='data:image/png;base64,{data}' alt='{_e(alt)}' data-plot='{_e(name)}'>"


def _cell(value: object, column: str) -> str:
    if isinstance(value, float):
        shown = f"{value:.1%}" if column.endswith(("share", "baseline", "low", "high")) else f"{value:.3f}"
        return f"<td class='n'>{shown}</td>"
    if isinstance(value, int):
        return f"<td class='n'>{value:,}</td>"
    return f"<td>{_e(value)}</td>"


def _table(table: pd.DataFrame, columns: list[str] | None) -> str:
    table = table if columns is None else table[columns]
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(_cell(v.item() if hasattr(v, "item") else v, c) for c, v in zip(table.columns, row)) + "</tr>"
        for row in table.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _biggest_keys(report: Report, count: int) -> list[str]:
    return report.key_shares.groupby("key")["n"].sum().nlargest(count).index.tolist()


def _key_table(report: Report) -> list[str]:
    """The keys with most comments, one row each; a page of 100,000 rows helps no one."""
    biggest = _biggest_keys(report, PAGE_KEYS)
    rows = report.key_shares[report.key_shares["key"].isin(biggest)]
    wide = rows.pivot(index="key", columns="label", values="share").fillna(0.0).rename(columns=lambda c: f"{c} share")
    wide.insert(0, "comments", rows.groupby("key")["n"].sum())
    parts = [_table(wide.loc[biggest].reset_index(), None)]
    more = report.key_shares["key"].nunique() - len(biggest)
    if more > 0:
        note = f"The {len(biggest)} with most comments; {more:,} more are in key_shares.csv and key_shares.parquet."
        parts.append(f"<p class='muted'>{note}</p>")
    return parts


def _movers(report: Report) -> str:
    rows = []
    for m in report.movers.itertuples(index=False):
        arrow = "up" if m.change > 0 else "down"
        rows.append(
            f"<tr><td>{_e(m.key or 'all')}</td><td>{_when(m.period, report.settings.freq)}</td>"
            f"<td class='n'>{m.n:,}</td>"
            f"<td class='n'>{m.share:.1%}</td><td class='n'>{m.baseline:.1%}</td>"
            f"<td class='n {arrow}'>{m.change * 100:+.1f} pts</td><td class='n'>{m.z:+.1f}</td></tr>"
        )
    head = "".join(f"<th>{c}</th>" for c in ("key", "period", "comments", "share", "baseline", "change", "z"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _words(report: Report) -> str:
    s, words = report.settings, report.words
    parts = [
        "<p class='muted'>Weighted log-odds with an informative Dirichlet prior (Monroe et al. 2008): words "
        f"in at least {s.min_word_count} comments, ranked by z score. Per label: against the other labels. "
        f"Per {_e(s.key_column or 'key')}: against the same label's comments about the others.</p>"
    ]
    for label, part in words[words["key"] == ""].groupby("label"):
        parts.append(f"<h3>{_e(label)}</h3><p>{_e(', '.join(part['word']))}</p>")
    keyed = words[words["key"] != ""]
    for (key, label), part in keyed.groupby(["key", "label"]):
        parts.append(f"<p><b>{_e(key)}</b>, {_e(label)}: {_e(', '.join(part['word']))}</p>")
    return "\n".join(parts)


def _examples(report: Report) -> str:
    parts = []
    for (key, label), part in report.examples.groupby(["key", "label"]):
        title = f"{key}, {label}" if key else label
        quotes = "".join(
            f"<blockquote>{_e(t)} <span class='muted'>({c:.0%})</span></blockquote>"
            for t, c in zip(part["text"], part["confidence"])
        )
        parts.append(f"<h3>{_e(title)}</h3>{quotes}")
    return "\n".join(parts)
