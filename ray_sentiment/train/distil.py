"""Knowledge distillation (`train --teacher BUNDLE`): a trained bundle, the hybrid say, scores the
training texts and the --unlabelled ones, and the model learns from its probabilities as well as
from the labels. A fast LSTM can so learn what a slower ensemble knows, and from comments nobody
labelled.

A labelled row's target is TEACHER_SHARE of the teacher's probabilities plus the rest of its
one-hot label; an unlabelled row's target is the teacher's probabilities. The teacher runs in a
Ray Data actor pool (loaded once per actor), the texts are encoded with the student's vocabulary
in the same pass, and validation keeps the labels alone.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
import torch

from ..model.bundle import ModelBundle
from ..model.predictor import Predictor
from ..progress import Reporter
from ..runtime import cpu_nodes, threads_per_actor
from ..text.tokens import TOKENISE_ROWS, Encoder

TEACHER_SHARE = 0.5


class Teacher:
    """One per actor: the teacher bundle, loaded once; each batch comes back encoded with its target."""

    def __init__(
        self, bundle: ModelBundle, *, encoder: Encoder, labels: list[str], threads: int, device: str, reporter: Reporter
    ):
        torch.set_num_threads(threads)
        self.predictor = Predictor(bundle, device=device)
        self.encoder, self.reporter = encoder, reporter
        self.label_ids = {label: i for i, label in enumerate(labels)}

    def __call__(self, batch: pa.Table) -> dict:
        texts = batch["text"].to_pylist()
        target = self.predictor.predict_proba(texts).astype(np.float32)
        if "label" in batch.column_names:  # labelled: part label, part teacher
            y = np.fromiter((self.label_ids[x] for x in batch["label"].to_pylist()), np.int64, len(texts))
            target *= TEACHER_SHARE
            target[np.arange(len(texts)), y] += 1 - TEACHER_SHARE
        ids, lengths = self.encoder(batch["text"])
        self.reporter.add("teacher scoring", len(texts))
        return {"ids": ids, "length": lengths, "target": target}


def soft_targets(
    labelled: ray.data.Dataset,
    unlabelled: ray.data.Dataset | None,
    *,
    teacher: ModelBundle,
    vocab: list[str],
    max_len: int,
    labels: list[str],
    use_gpu: bool,
    reporter: Reporter,
) -> ray.data.Dataset:
    """ids, length and target (float32 [classes]) for every labelled and unlabelled row; with use_gpu
    the teacher runs on one GPU per actor, as `score --use-gpu` does."""
    actors = max(1, int(sum(cpu_nodes()) // 2))
    constructor = {
        "bundle": teacher,
        "encoder": Encoder(vocab, max_len),
        "labels": labels,
        "threads": threads_per_actor(actors),
        "device": "cuda" if use_gpu else "cpu",
        "reporter": reporter,
    }
    parts = [labelled.select_columns(["text", "label"])]
    if unlabelled is not None:
        parts.append(unlabelled.select_columns(["text"]))
    scored = [
        part.map_batches(
            Teacher,
            fn_constructor_kwargs=constructor,
            batch_format="pyarrow",
            batch_size=TOKENISE_ROWS,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            num_gpus=1 if use_gpu else 0,
        )
        for part in parts
    ]
    return (scored[0].union(*scored[1:]) if len(scored) > 1 else scored[0]).materialize()
