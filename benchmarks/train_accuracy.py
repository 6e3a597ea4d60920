"""Accuracy of each preset on later tweets, on tweets/val and on airline tweets, against TF-IDF + LR.

Every model is trained through the real pipeline (`ray_sentiment.train.driver.train` on local Ray), with
each seed, and scored on rows it never saw:
- temporal: trained on tweets/train without its latest year (source twitter-2016test), validated
  (early stopping) on the latest year left (twitter-2016dev and -devtest), scored on twitter-2016test;
- tweets: trained on all of tweets/train (validated on a stratified 10% of it), scored on tweets/val;
- airline: trained on the `train` split (validated on 10% of it), scored on the `test` split.
Presets other than `seed` also read the unlabelled tweets (vocabulary, word vectors, pretraining).
A hybrid run is scored three ways: the whole hybrid, its LSTM alone (the `pretrained` preset's
model, pretraining included) and its linear model alone; a preset that trains its teacher first
(`default`) is scored beside that teacher. On the temporal split each model is also
scored with per-class decision offsets (added to its log-probabilities) fitted for macro recall on
the validation rows: do offsets tuned on validation help on the later year? With `--distil
PRESET`, each hybrid is also the teacher (`train --teacher`) of a model of that preset, scored
beside it. Each model is also scored on the evaluation texts that are no near-copy of a training
text ("new texts"): 43% of tweets/val are training tweets again, less their links, and a model
that memorises its training rows does well on those. The baseline (TF-IDF word 1-2 grams +
char 2-5 grams, balanced logistic regression, scikit-learn) is fitted on the same rows in the same run.

    python benchmarks/train_accuracy.py [--splits temporal,tweets,airline] [--presets seed,bilstm,hybrid]
                                        [--seeds 0,1] [--num-workers 2] [--json PATH]
                                        [--distil distilled --student-epochs 4 --student-unweighted]
                                        [--keep DIR] [--reuse DIR]
"""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_sentiment import Predictor
from ray_sentiment.metrics import classification_report
from ray_sentiment.model.presets import get_preset
from ray_sentiment.settings import TrainSettings
from ray_sentiment.text.tokens import tokenize
from ray_sentiment.train.driver import TEACHER_DIR, train

from _common import DATASETS, add_json_option, finish, table, tfidf_baseline

LATEST = "twitter-2016test"
LATEST_LEFT = ("twitter-2016dev", "twitter-2016devtest")
SPEED_TEXTS = 20_000


def split(name: str, tmp: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(TrainSettings options for the data, training rows, evaluation rows). The temporal split's
    validation rows are `validation_rows(tweets)`."""
    tweets = pd.read_parquet(DATASETS / "tweets/train.parquet")
    if name == "temporal":
        rows, later = tweets[tweets["source"] != LATEST], tweets[tweets["source"] == LATEST]
        path = tmp / "temporal_train.parquet"
        rows[["text", "label", "source"]].to_parquet(path)
        options = {"train_path": str(path), "split_column": "source", "val_split": LATEST_LEFT}
        return options, rows[~rows["source"].isin(LATEST_LEFT)], later
    if name == "tweets":
        return (
            {"train_path": str(DATASETS / "tweets/train.parquet")},
            tweets,
            pd.read_parquet(DATASETS / "tweets/val.parquet"),
        )
    airline = pd.read_parquet(DATASETS / "airline/tweets.parquet")
    options = {
        "train_path": str(DATASETS / "airline/tweets.parquet"),
        "split_column": "split",
        "train_split": ("train",),
    }
    return options, airline[airline["split"] == "train"], airline[airline["split"] == "test"]


def validation_rows(name: str) -> pd.DataFrame | None:
    """The rows early stopping saw, where the split names them (temporal); else None."""
    if name != "temporal":
        return None
    tweets = pd.read_parquet(DATASETS / "tweets/train.parquet")
    return tweets[tweets["source"].isin(LATEST_LEFT)]


NEAR = 0.7  # token-set Jaccard similarity from which an evaluation text counts as a training text's copy
COMMON = 2_000  # tokens in more training texts than this (stop words) do not propose candidates


def new_rows(train_texts: list[str], eval_texts: list[str]) -> np.ndarray:
    """True for each evaluation text that is not a near-copy of a training text: tweets/val holds
    many training tweets again, less their links (a retweet, or the same tweet in two SemEval years).
    Candidates are the training texts sharing the most uncommon tokens; 20 are compared."""
    train_sets = [set(t) for t in tokenize(train_texts).to_pylist()]
    index: dict[str, list[int]] = {}
    for i, tokens in enumerate(train_sets):
        for token in tokens:
            index.setdefault(token, []).append(i)
    new = []
    for tokens in map(set, tokenize(eval_texts).to_pylist()):
        shared = Counter(i for t in sorted(tokens) if len(index.get(t, ())) <= COMMON for i in index.get(t, ()))
        similar = (len(tokens & train_sets[i]) / len(tokens | train_sets[i]) for i, _ in shared.most_common(20))
        new.append(max(similar, default=0) < NEAR)
    return np.array(new)


OFFSETS = " + offsets fitted on validation"  # a model's name, so scored
OFFSET_GRID = np.round(np.arange(-1.5, 1.51, 0.1), 2)


def with_offsets(predict, val: pd.DataFrame, labels: list[str]):
    """`predict` with per-class offsets on its log-probabilities (the first class's fixed at 0),
    chosen on a grid for the best macro recall on `val`."""
    y = val["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    logp = np.log(np.clip(predict(val["text"].tolist()), 1e-9, 1.0))
    k = len(labels)

    def macro_recall(offsets: np.ndarray) -> float:
        confusion = np.bincount(y * k + (logp + offsets).argmax(axis=1), minlength=k * k).reshape(k, k)
        return float(np.mean(np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)))

    grids = np.meshgrid(*[OFFSET_GRID] * (k - 1), indexing="ij")
    options = np.column_stack([np.zeros(grids[0].size), *(g.ravel() for g in grids)])
    best = max(options, key=macro_recall)

    def shifted(texts: list[str]) -> np.ndarray:
        p = np.clip(predict(texts), 1e-9, 1.0) * np.exp(best)
        return p / p.sum(axis=1, keepdims=True)

    return shifted


def reads_unlabelled(preset: str) -> bool:
    return get_preset(preset).embedding_init == "ppmi" or get_preset(preset).pretrain_epochs > 0


def trained(settings: TrainSettings, reuse: str | None) -> tuple[str, float | None]:
    """The bundle's path and its training minutes; None for one an earlier run trained (--reuse)."""
    earlier = Path(reuse or "", Path(settings.output).name)
    if reuse and (earlier / "config.json").is_file():
        print(f"reusing {earlier}", flush=True)
        return str(earlier), None
    started = time.perf_counter()
    path = train(settings)
    return path, (time.perf_counter() - started) / 60


def train_minutes(entries: list[dict]) -> float | None:
    """Mean over the seeds trained in this run; None where every bundle came from --reuse."""
    minutes = [e["minutes"] for e in entries if e["minutes"] is not None]
    return float(np.mean(minutes)) if minutes else None


def candidates(bundle_path: str, preset: str, timed: bool = False) -> tuple[dict, dict]:
    """(name → a function from texts to probabilities, columns in the bundle's label order; name →
    training minutes of a teacher trained in the same job, if `timed`: this run trained it)."""
    predictor = Predictor.load(bundle_path)
    found, minutes = {preset: predictor.predict_proba}, {}
    if predictor.linear is not None:
        alone = Predictor.load(bundle_path)
        alone.linear = None
        found[f"{preset}: its LSTM alone"] = alone.predict_proba
        found[f"{preset}: its linear model alone"] = lambda texts: predictor.linear.predict_proba(tokenize(texts))
    teacher = Path(bundle_path, TEACHER_DIR)
    if (teacher / "config.json").is_file():  # a preset whose job trains its teacher first
        name = f"{preset}: its teacher, {get_preset(preset).teacher}"
        models, _ = candidates(str(teacher), name)
        found.update(models)
        seconds = json.loads((teacher / "metrics.json").read_text())["train_seconds"]
        minutes.update({model: seconds / 60 if timed else None for model in models})
    return found, minutes


def texts_per_s(predict, texts: list[str]) -> float:
    predict(texts[:2048])  # warm up
    started = time.perf_counter()
    predict(texts)
    return len(texts) / (time.perf_counter() - started)


def scoring_speed(speed: dict, rounds: int = 3) -> dict:
    """texts/s of each model, after all training: rounds interleaved, the median kept, so a busy
    moment of a shared machine slows every model alike."""
    times: dict = {key: [] for key in speed}
    for _ in range(rounds):
        for key, (predict, texts) in speed.items():
            times[key].append(texts_per_s(predict, texts))
    return {key: float(np.median(values)) for key, values in times.items()}


def report(rows: pd.DataFrame, proba: np.ndarray, labels: list[str], new: np.ndarray) -> dict:
    """Metrics on every evaluation row, and the macro recall on the `new` ones alone."""
    y = rows["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    result = classification_report(y, proba, labels)
    result["shares"] = np.bincount(proba.argmax(axis=1), minlength=len(labels)) / len(y)
    result["new_macro_recall"] = classification_report(y[new], proba[new], labels)["macro_recall"]
    return result


def shares(values: np.ndarray) -> str:
    return "/".join(f"{100 * v:.0f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", default="temporal,tweets,airline")
    parser.add_argument("--presets", default="seed,bilstm,hybrid")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--unlabelled", default=str(DATASETS / "unlabeled/tweets.parquet"), help="'' for none")
    parser.add_argument("--keep", metavar="DIR", help="write the bundles here, to look at later (default: deleted)")
    parser.add_argument("--reuse", metavar="DIR", help="take the bundles an earlier --keep DIR run wrote, if there")
    parser.add_argument("--distil", metavar="PRESET", help="also train this preset with each hybrid as --teacher")
    parser.add_argument("--student-epochs", type=int, help="the students' --epochs (default: the preset's)")
    parser.add_argument("--student-unweighted", action="store_true", help="the students' loss not class-weighted")
    add_json_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)  # scoring speed: the in-process ceiling with both cores
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict] = []
    speed: dict = {}  # (split, model) → (predict, texts): timed together at the end
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.splits.split(","):
            options, train_rows, eval_rows = split(name, tmp)
            val_rows = validation_rows(name)
            labels = sorted(train_rows["label"].unique())
            texts = eval_rows["text"].tolist()
            new = new_rows(train_rows["text"].tolist(), texts)
            print(f"{name}: {new.sum():,} of {len(new):,} evaluation texts are new (no near-copy)", flush=True)
            speed_texts = (texts * (SPEED_TEXTS // len(texts) + 1))[:SPEED_TEXTS]
            results: dict[str, list] = {}
            for preset in args.presets.split(","):
                for seed in seeds:
                    settings = TrainSettings(
                        **options,
                        output=str(Path(args.keep or tmp) / f"{name}-{preset}-{seed}"),
                        preset=preset,
                        seed=seed,
                        num_workers=args.num_workers,
                        storage_path=str(tmp / "checkpoints"),
                        unlabelled_path=(args.unlabelled or None) if reads_unlabelled(preset) else None,
                    )
                    path, minutes = trained(settings, args.reuse)
                    models, minutes_of = candidates(path, preset, timed=minutes is not None)
                    if args.distil and get_preset(preset).linear:
                        student = dataclasses.replace(
                            settings,
                            output=f"{settings.output}-{args.distil}-student",
                            preset=args.distil,
                            unlabelled_path=args.unlabelled or None,
                            teacher=path,
                            epochs=args.student_epochs,
                            class_weighted=False if args.student_unweighted else None,
                        )
                        student_path, student_minutes = trained(student, args.reuse)
                        models[f"{args.distil}, student of {preset}"] = Predictor.load(student_path).predict_proba
                        minutes_of[f"{args.distil}, student of {preset}"] = student_minutes
                    if val_rows is not None:
                        offsets = {f"{m}{OFFSETS}": with_offsets(p, val_rows, labels) for m, p in models.items()}
                        models.update(offsets)
                    for model, predict in models.items():
                        entry = report(eval_rows, predict(texts), labels, new)
                        entry["minutes"] = minutes_of.get(model.removesuffix(OFFSETS), minutes)
                        speed.setdefault((name, model), (predict, speed_texts))
                        results.setdefault(model, []).append(entry)
                        print(f"{name} {model} seed {seed}: macro recall {100 * entry['macro_recall']:.1f}", flush=True)
            started = time.perf_counter()
            lr = tfidf_baseline(train_rows["text"], train_rows["label"])
            order = [list(lr.classes_).index(label) for label in labels]
            base = report(eval_rows, lr.predict_proba(texts)[:, order], labels, new)
            base["minutes"] = (time.perf_counter() - started) / 60
            results["TF-IDF + LR (baseline)"] = [base]
            speed[(name, "TF-IDF + LR (baseline)")] = (lr.predict_proba, speed_texts)
            truth = eval_rows["label"].value_counts(normalize=True).reindex(labels).to_numpy()
            for model, entries in results.items():
                recall = [100 * e["macro_recall"] for e in entries]
                rows.append(
                    {
                        "split": name,
                        "model": model,
                        "macro recall": float(np.mean(recall)),
                        "spread": float(max(recall) - min(recall)),
                        "vs LR": float(np.mean(recall)) - 100 * base["macro_recall"],
                        "new texts": 100 * float(np.mean([e["new_macro_recall"] for e in entries])),
                        "new rows": int(new.sum()),
                        "accuracy": 100 * float(np.mean([e["accuracy"] for e in entries])),
                        "seeds": len(entries),
                        f"predicted % ({'/'.join(label[:3] for label in labels)})": shares(
                            np.mean([e["shares"] for e in entries], axis=0)
                        ),
                        "true %": shares(truth),
                        "train min": train_minutes(entries),
                    }
                )
            print(table([r for r in rows if r["split"] == name]), flush=True)
        rates = scoring_speed(speed)
        for row in rows:
            row["texts/s"] = rates[(row["split"], row["model"])]
    import ray

    ray.shutdown()
    finish(
        rows,
        args,
        "macro recall in percent, mean over the seeds; spread: best minus worst seed; vs LR in points; "
        f"new texts: macro recall on the evaluation texts that are no near-copy (token Jaccard >= {NEAR}) "
        "of a training text, new rows of them; "
        "texts/s: Predictor.predict_proba in one process, 2 threads, after all training, "
        "median of 3 interleaved rounds",
    )


if __name__ == "__main__":
    main()
