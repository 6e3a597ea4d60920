"""Accuracy of the `seed` and `default` presets against the TF-IDF + logistic regression baseline.

Each model is trained through the real pipeline (`ray_sentiment.train.train` on local Ray) and
scored on a split it never saw; presets with PPMI word vectors also read the unlabelled tweets.
In the same run the baseline (TF-IDF word 1-2 grams + char 2-5 grams, balanced logistic
regression) is fitted on the same training rows.

    python benchmarks/train_accuracy.py [--presets seed,default] [--datasets tweets,airline] [--num-workers 1]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment import Predictor
from ray_sentiment.metrics import classification_report
from ray_sentiment.model import get_preset
from ray_sentiment.settings import TrainSettings
from ray_sentiment.train import train

from _common import DATASETS, add_json_option, finish, table, tfidf_baseline


def splits(name: str, tmp: Path) -> tuple[Path, Path | None, pd.DataFrame, pd.DataFrame]:
    """(train file, validation file or None, train rows, evaluation rows)."""
    if name == "tweets":
        train_rows = pd.read_parquet(DATASETS / "tweets/train.parquet")
        eval_rows = pd.read_parquet(DATASETS / "tweets/val.parquet")
        return DATASETS / "tweets/train.parquet", DATASETS / "tweets/val.parquet", train_rows, eval_rows
    rows = pd.read_parquet(DATASETS / "airline/tweets.parquet")
    train_rows, eval_rows = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
    path = tmp / "airline_train.parquet"
    train_rows[["text", "label"]].to_parquet(path)
    return path, None, train_rows, eval_rows  # early stopping on a held-out 10% of train


def baseline(train_rows: pd.DataFrame, eval_rows: pd.DataFrame, labels: list[str]) -> tuple[dict, float]:
    started = time.perf_counter()
    model = tfidf_baseline(train_rows["text"], train_rows["label"].str.strip().str.lower())
    seconds = time.perf_counter() - started
    order = [list(model.classes_).index(label) for label in labels]
    return _report(eval_rows, model.predict_proba(list(eval_rows["text"]))[:, order], labels), seconds


def _report(rows: pd.DataFrame, proba: np.ndarray, labels: list[str]) -> dict:
    y = rows["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    return classification_report(y, proba, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="seed,default")
    parser.add_argument("--datasets", default="tweets,airline")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument(
        "--unlabelled",
        default=str(DATASETS / "unlabeled/tweets.parquet"),
        help="unlabelled tweets for the default preset's word vectors ('' for none)",
    )
    add_json_option(parser)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.datasets.split(","):
            train_path, val_path, train_rows, eval_rows = splits(name, tmp)
            labels = sorted(train_rows["label"].str.strip().str.lower().unique())
            for preset in args.presets.split(","):
                started = time.perf_counter()
                bundle = train(
                    TrainSettings(
                        train_path=str(train_path),
                        val_path=val_path and str(val_path),
                        output=str(tmp / f"{name}-{preset}"),
                        preset=preset,
                        num_workers=args.num_workers,
                        storage_path=str(tmp / "ckpt"),
                        unlabelled_path=(args.unlabelled or None)
                        if get_preset(preset).embedding_init == "ppmi"
                        else None,
                    )
                )
                seconds = time.perf_counter() - started
                predictor = Predictor.load(bundle)
                report = _report(eval_rows, predictor.predict_proba(eval_rows["text"].tolist()), predictor.labels)
                results.append(_row(name, f"LSTM {preset}", report, seconds))
                print(table(results[-1:]), flush=True)
            report, seconds = baseline(train_rows, eval_rows, labels)
            base = _row(name, "TF-IDF + LR (baseline)", report, seconds)
            for row in results:
                if row["dataset"] == name:
                    row["macro recall vs baseline"] = row["macro recall"] - base["macro recall"]
            results.append({**base, "macro recall vs baseline": 0.0})
    import ray

    ray.shutdown()
    finish(
        results,
        args,
        "evaluated on tweets/val and on the airline test split; rates in percent, " "'vs baseline' in points",
    )


def _row(dataset: str, model: str, report: dict, seconds: float) -> dict:
    return {
        "dataset": dataset,
        "model": model,
        "macro recall": 100 * report["macro_recall"],
        "accuracy": 100 * report["accuracy"],
        "macro F1": 100 * report["macro_f1"],
        "train s": seconds,
    }


if __name__ == "__main__":
    main()
