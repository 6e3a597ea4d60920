"""Shared by the benchmarks: where the datasets are, the table (and its JSON), the TF-IDF baseline,
a model to time."""

import argparse
import json
import os
import socket
import statistics
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ray_sentiment.model.bundle import ModelBundle, save_bundle
from ray_sentiment.model.lstm import SentimentLSTM
from ray_sentiment.model.presets import get_preset
from ray_sentiment.text.tokens import TokenizerConfig, build_vocab, count_tokens

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "tests"))  # conftest's random bundles, as chaos.py uses them
DATASETS = Path(os.environ.get("RAY_SENTIMENT_DATASETS", ROOT.parent / "shared" / "datasets"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for r in rows for c in r))  # every row's columns, in first-seen order
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def _fmt(value) -> str:
    if isinstance(value, float):
        if abs(value) < 10:
            return f"{value:.3f}"
        return f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


median = statistics.median


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the table (and its notes) to PATH as JSON")


def finish(rows: list[dict], args: argparse.Namespace, title: str) -> None:
    """Print the table under its title; with --json, write both, so README figures are regenerated."""
    print(f"\n{title}")
    print(table(rows))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps({"title": title, "rows": rows}, indent=2) + "\n")


def ratios(rows: list[dict], value: str, baseline: float, column: str = "× baseline") -> list[dict]:
    """Each row's `value` divided by the baseline's, as a column of the table."""
    return [{**r, column: r[value] / baseline} if value in r else r for r in rows]


def tfidf_baseline(texts, labels):
    """The baseline every benchmark compares against: TF-IDF word 1-2 grams and char 2-5 grams,
    balanced logistic regression, as a fitted scikit-learn pipeline (texts in, predict_proba out)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True),
    )
    model = make_pipeline(features, LogisticRegression(class_weight="balanced", max_iter=2000, C=2.0))
    return model.fit(list(texts), list(labels))


def random_bundle(texts: list[str], path: Path, preset: str = "seed") -> Path:
    """A bundle of the preset's shapes with untrained weights (and, for a hybrid, a random linear
    model, weighted 0.5): speed does not depend on what the weights hold."""
    from conftest import random_linear_model

    recipe = get_preset(preset)
    vocab = build_vocab(count_tokens(texts), recipe.model.vocab_size)
    torch.manual_seed(0)
    bundle = ModelBundle(
        labels=["negative", "neutral", "positive"],
        vocab=vocab,
        model_config=recipe.model,
        tokenizer=TokenizerConfig(len(vocab), recipe.max_len),
        state_dict=SentimentLSTM(recipe.model).state_dict(),
        preset=preset,
    )
    if recipe.linear:
        bundle.linear, bundle.linear_weight = random_linear_model(coef_scale=0.5), 0.5
    save_bundle(bundle, path)
    return path


def write_rows(texts: np.ndarray, rows: int, directory: Path, files: int = 8) -> Path:
    """`rows` rows (id, text) resampled from `texts`, in `files` Parquet files."""
    rng = np.random.default_rng(rows)
    directory.mkdir(parents=True)
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        pd.DataFrame({"id": np.arange(i * per_file, i * per_file + n), "text": rng.choice(texts, n)}).to_parquet(
            directory / f"part-{i:02d}.parquet", index=False
        )
    return directory


class Sampler:
    """Calls `sample()` every `interval` seconds in a thread while the `with` block runs; a
    `sample()` that returns False stops the sampling."""

    interval = 0.25

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(self.interval) and self.sample() is not False:
            pass

    def sample(self):
        raise NotImplementedError
