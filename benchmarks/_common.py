"""Shared by the benchmarks: where the datasets are, a plain-text table, a model to time."""
import os
import socket
import statistics
from pathlib import Path

import torch

from ray_sentiment.bundle import ModelBundle, save_bundle
from ray_sentiment.model import SentimentLSTM, get_preset
from ray_sentiment.text import TokenizerConfig, build_vocab, count_tokens

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("RAY_SENTIMENT_DATASETS", ROOT.parent / "shared" / "datasets"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def _fmt(value) -> str:
    if isinstance(value, float):
        if abs(value) < 10:
            return f"{value:.3f}"
        return f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


median = statistics.median


def seed_bundle(texts: list[str], path: Path) -> Path:
    preset = get_preset("seed")
    vocab = build_vocab(count_tokens(texts), preset.model.vocab_size)
    torch.manual_seed(0)
    model = SentimentLSTM(preset.model)
    save_bundle(ModelBundle(labels=["negative", "neutral", "positive"], vocab=vocab, model_config=preset.model,
                            tokenizer=TokenizerConfig(len(vocab), preset.max_len), state_dict=model.state_dict(),
                            preset="seed"), path)
    return path

