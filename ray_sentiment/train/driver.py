"""Train the LSTM with Ray Train: labelled comments in, a model bundle out.

    ray-sentiment train --train examples/train.csv --output runs/example [--unlabelled more.parquet]

Driver: read and split the data, fit the vocabulary on labelled and unlabelled texts and encode
every text once (Ray Data), start the hybrid's linear model in a Ray task, then hand the encoded
datasets to a TorchTrainer, whose workers run loop.py. The best epoch's weights become the bundle;
the pretrained encoder is kept beside it. A preset with a teacher (the default) runs this twice in
one job: the teacher into the bundle's teacher/ directory, then the model, learning from it.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..data.read import read_labelled
from ..errors import DataError, TrainingError, user_cause
from ..model.bundle import EncoderBundle, ModelBundle, load_bundle, save_bundle, save_encoder
from ..model.embeddings import ppmi_vectors
from ..model.linear import LinearModel, best_weight, fit_linear
from ..model.predictor import Predictor
from ..model.presets import Preset
from ..progress import Reporter, progress
from ..runtime import cpus_per_process, ensure_ray
from ..settings import TrainSettings
from ..storage import is_uri
from ..text.tokens import TokenizerConfig, tokenize
from .checks import RECIPE_FIELDS, check_teacher_labels, check_train, teacher_recipe
from .distil import soft_targets
from .loop import STATE_FILE, Classifying, LoopSettings, Pretraining, TrainState, train_loop
from .prepare import LabelledData, cooccurrence_matrix, encode_dataset, fit_vocab, load_labelled

PRETRAINED_DIR = "pretrained"  # in the bundle directory: the encoder, for `train --init-from`
TEACHER_DIR = "teacher"  # in the bundle directory: the teacher a preset trains first (Preset.teacher)


def train(settings: TrainSettings, checked: tuple[Preset, EncoderBundle | None] | None = None) -> str:
    """Run the whole job; returns where the bundle went (a directory or a URI). `checked`: what
    checks.check_train returned, if the caller ran it already."""
    r, encoder = checked or check_train(settings)
    ensure_ray()
    started = time.time()
    inputs = read_inputs(settings, r, encoder)
    if (teacher_r := teacher_recipe(settings, r)) is not None:
        # The teacher first, on the same rows and vocabulary; the encoder (--init-from) is its.
        output = f"{settings.output.rstrip('/')}/{TEACHER_DIR}"
        print(f"teacher: training the {r.teacher!r} preset first, into {output}")
        teacher = dataclasses.replace(settings, preset=r.teacher, output=output)
        settings = dataclasses.replace(settings, teacher=fit_bundle(teacher, teacher_r, inputs, encoder, time.time()))
        encoder = None
    return fit_bundle(settings, r, inputs, encoder, started)


def read_inputs(settings: TrainSettings, r: Preset, encoder: EncoderBundle | None) -> Inputs:
    """The labelled rows split, the --unlabelled ones, and the vocabulary of both (or the encoder's)."""
    data = read_data(settings, r)
    unlabelled = read_unlabelled(settings.unlabelled_path, text_column=settings.text_column, counts=data.counts)
    texts = data.train.select_columns(["text"])
    texts = texts.union(unlabelled).materialize() if unlabelled is not None else texts
    return Inputs(data, unlabelled, texts, vocab=encoder.vocab if encoder else fit_vocab(texts, r.model.vocab_size))


@dataclasses.dataclass
class Inputs:
    """What every model of a job learns from: the split labelled rows, the unlabelled ones, all
    texts together, the vocabulary; all texts encoded and their word co-occurrences are made once
    for a teacher and its student."""

    data: LabelledData
    unlabelled: ray.data.Dataset | None
    texts: ray.data.Dataset
    vocab: list[str]
    _made: dict = dataclasses.field(default_factory=dict)

    def encoded(self, max_len: int) -> ray.data.Dataset:
        if ("encoded", max_len) not in self._made:
            self._made["encoded", max_len] = encode_dataset(self.texts, self.vocab, max_len=max_len)
        return self._made["encoded", max_len]

    def cooccurrence(self, max_len: int):
        if ("cooccurrence", max_len) not in self._made:
            self._made["cooccurrence", max_len] = cooccurrence_matrix(self.encoded(max_len), len(self.vocab))
        return self._made["cooccurrence", max_len]


def fit_bundle(
    settings: TrainSettings, r: Preset, inputs: Inputs, encoder: EncoderBundle | None, started: float
) -> str:
    """Train one model on the inputs and write its bundle; returns where it went."""
    data, vocab = inputs.data, inputs.vocab
    if settings.teacher:
        train_ds = distilled(settings, data=data, unlabelled=inputs.unlabelled, vocab=vocab, max_len=r.max_len)
    else:
        train_ds = encode_dataset(data.train, vocab, max_len=r.max_len, labels=data.labels)
    val_ds = encode_dataset(data.val, vocab, max_len=r.max_len, labels=data.labels)
    pretraining = r.pretrain_epochs > 0 and encoder is None
    linear = fit_linear_task.remote(data.train, data.labels, r.class_weighted) if r.linear else None
    loop = loop_settings(settings, r, inputs, encoder=encoder)
    datasets = {"train": train_ds, "val": val_ds, **({"lm": inputs.encoded(r.max_len)} if pretraining else {})}
    state, checkpoint = fit(settings, loop, datasets)
    if state.best_model is None or state.best_report is None:  # no bundle without a validated epoch
        raise TrainingError("training ended without a validated epoch; see the workers' errors above")
    report = state.best_report
    metrics = {
        **training_metrics(settings, r, state),
        "rows": data.counts,
        "train_seconds": round(time.time() - started, 1),
        "checkpoint": checkpoint,
    }
    bundle = ModelBundle(
        labels=data.labels,
        vocab=vocab,
        model_config=loop.model,
        tokenizer=TokenizerConfig(vocab_size=len(vocab), max_len=r.max_len),
        state_dict=state.best_model,
        preset=settings.preset,
        metrics=metrics,
    )
    if linear:
        bundle.linear = fitted = ray.get(linear)
        bundle.linear_weight, metrics["linear_weight"] = weigh_linear(
            bundle, fitted, val_ds=data.val, labels=data.labels
        )
    path = save_bundle(bundle, settings.output)
    if pretraining and state.encoder:
        save_encoder(encoder_of(bundle, state), f"{path.rstrip('/')}/{PRETRAINED_DIR}")
    print(
        f"best epoch {state.best_epoch}: val_loss {report['loss']:.4f} "
        f"macro_recall {report['macro_recall']:.4f} accuracy {report['accuracy']:.4f}; bundle written to {path}"
    )
    return path


MAX_WEIGHING_ROWS = 20_000  # validation rows brought to the driver to weigh the hybrid's halves


def weigh_linear(bundle: ModelBundle, linear: LinearModel, *, val_ds, labels: list[str]) -> tuple[float, dict]:
    """The linear model's share of the hybrid average with the lowest validation log loss."""
    rows = val_ds.limit(MAX_WEIGHING_ROWS).to_pandas()
    tokens = tokenize(rows["text"].tolist())
    lstm = Predictor(dataclasses.replace(bundle, linear=None))
    ids, lengths = lstm.encoder.encode_tokens(tokens)
    y = rows["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    weight, losses = best_weight(lstm.predict_proba_encoded(ids, lengths), linear.predict_proba(tokens), y)
    print(f"hybrid: the linear model's weight is {weight:.1f} (lowest validation log loss, {losses[weight]:.4f})")
    return weight, {"chosen": weight, "val_log_loss": losses}


def read_unlabelled(path: str | None, *, text_column: str, counts: dict):
    """The --unlabelled texts, if given: with the training texts, what the vocabulary, word vectors
    and language model learn from, and what a --teacher labels."""
    if not path:
        return None
    extra = read_labelled(path, text_column, label_column=None)
    counts["unlabelled"] = {"read": extra.rows_read, "dropped": extra.rows_dropped}
    return extra.dataset


def distilled(settings: TrainSettings, *, data: LabelledData, unlabelled, vocab: list[str], max_len: int):
    """The training rows and the unlabelled ones, each with the --teacher's probabilities as its target."""
    path = str(settings.teacher)
    teacher = load_bundle(path)
    check_teacher_labels(teacher, data.labels, path)
    started = time.time()
    extra = data.counts.get("unlabelled", {})
    with progress() as reporter:
        reporter.update(
            "teacher scoring", 0, data.counts["train"]["rows"] + extra.get("read", 0) - extra.get("dropped", 0)
        )
        rows = soft_targets(
            data.train,
            unlabelled,
            teacher=teacher,
            vocab=vocab,
            max_len=max_len,
            labels=data.labels,
            use_gpu=settings.use_gpu,
            reporter=reporter,
        )
    n = rows.count()
    seconds = time.time() - started
    data.counts["teacher"] = {"rows": n, "seconds": round(seconds, 1)}
    print(f"teacher: {n:,} texts scored by {path} in {seconds:.0f} s")
    return rows


@ray.remote(num_cpus=0.5)  # beside the Train workers: cpus_per_process leaves one CPU for such work
def fit_linear_task(train_ds, labels: list[str], class_weighted: bool) -> LinearModel:
    rows = train_ds.to_pandas()
    y = rows["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    return fit_linear(rows["text"].tolist(), y, num_classes=len(labels), class_weighted=class_weighted)


def encoder_of(bundle: ModelBundle, state: TrainState) -> EncoderBundle:
    return EncoderBundle(
        bundle.vocab,
        bundle.model_config,
        bundle.tokenizer,
        state.encoder or {},
        {"pretraining": state.pretrain_history},
    )


def read_data(settings: TrainSettings, r: Preset) -> LabelledData:
    """The labelled rows, split, with a line saying what was read."""
    s = settings
    data = load_labelled(s)
    rows = data.counts["train"]["rows"]
    print(
        f"data: {rows} training rows, {data.counts['val']['rows']} validation rows, "
        f"labels {data.labels}, {data.counts['train']['dropped']} training rows dropped (null or empty)"
    )
    if rows < r.batch_size:
        message = f"{rows} training rows are fewer than one batch ({r.batch_size}); lower --batch-size or add data"
        raise DataError(message)
    return data


def training_metrics(settings: TrainSettings, r: Preset, state: TrainState) -> dict:
    """What metrics.json says about the run: the best epoch's report, the history, the recipe."""
    recipe_used = {name: getattr(r, name) for name in (*RECIPE_FIELDS, "patience")}
    return {
        "validation": state.best_report,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.epoch < r.epochs,
        "history": state.history,
        "pretraining": state.pretrain_history,
        "restarts": state.restarts,
        "settings": {
            **recipe_used,
            "vocab_size": r.model.vocab_size,
            "preset": settings.preset,
            "num_workers": settings.num_workers,
            "use_gpu": settings.use_gpu,
            "seed": settings.seed,
            "teacher": settings.teacher,
        },
    }


def loop_settings(settings: TrainSettings, r: Preset, inputs: Inputs, *, encoder: EncoderBundle | None) -> LoopSettings:
    data, vocab = inputs.data, inputs.vocab
    # The embedding has a row per token actually seen, up to the requested vocabulary size.
    model = dataclasses.replace(r.model, num_classes=len(data.labels), vocab_size=len(vocab))
    counts = np.array([data.counts["class_counts"].get(label, 0) for label in data.labels], dtype=np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1)) if r.class_weighted else None
    embedding = None
    if r.embedding_init == "ppmi" and encoder is None:
        embedding = ppmi_vectors(inputs.cooccurrence(r.max_len), model.embed_dim, seed=settings.seed)
    pretraining = None
    if r.pretrain_epochs and encoder is None:
        batch = max(1, r.pretrain_batch_size // settings.num_workers)
        pretraining = Pretraining(r.pretrain_epochs, batch, r.pretrain_learning_rate)
    return LoopSettings(
        model=model,
        embedding=embedding,
        seed=settings.seed,
        cpus=settings.cpus_per_worker or cpus_per_process(settings.num_workers, settings.use_gpu),
        initial=encoder.state_dict if encoder else None,
        pretraining=pretraining,
        classifying=Classifying(
            labels=tuple(data.labels),
            epochs=r.epochs,
            patience=r.patience,
            batch_size=max(1, r.batch_size // settings.num_workers),
            learning_rate=r.learning_rate,
            class_weights=None if weights is None else tuple(weights.tolist()),
            soft_targets=bool(settings.teacher),
        ),
    )


def fit(settings, loop: LoopSettings, datasets: dict) -> tuple[TrainState, str]:
    """Run the workers; returns the last checkpoint's state and where that checkpoint is."""
    with progress() as reporter:
        return _fit(settings, loop, datasets=datasets, reporter=reporter)


# Ray Train's controller takes a worker's report when it polls, every 2 s by default, and the worker's
# next report waits for that: each epoch of a small dataset lasted at least 2 s. A user's own setting
# wins; Ray passes it on to the controller.
POLL_INTERVAL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def _fit(settings, loop: LoopSettings, *, datasets: dict, reporter: Reporter) -> tuple[TrainState, str]:
    os.environ.setdefault(*POLL_INTERVAL)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"loop": loop, "progress": reporter},
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers, use_gpu=settings.use_gpu, resources_per_worker={"CPU": loop.cpus}
        ),
        run_config=RunConfig(
            name=f"ray-sentiment-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=_absolute(settings.storage_path),
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None if settings.keep_checkpoints else 2),
            logging_config=LoggingConfig(log_level="WARNING"),  # our epoch lines say what matters
        ),
        datasets=datasets,
    )
    nodes = _alive_nodes()
    try:
        result = trainer.fit()
    except ray.train.WorkerGroupError as exc:
        lost = _lost_worker(exc, nodes, settings.max_failures)
        if lost is None:
            raise
        raise lost from None
    if result.metrics and result.metrics.get("error"):
        raise TrainingError(result.metrics["error"])
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    if not settings.keep_checkpoints:
        prune_checkpoints(result.checkpoint)
    return TrainState(**state), result.checkpoint.path


# What a worker raises when its peer in the process group vanished (gloo's words, for CPU training).
PEER_GONE = ("Connection reset by peer", "Connection closed by peer")
NODE_DEATH_S = 30.0  # how long Ray may take to mark a lost node dead (missed health checks)


def _alive_nodes() -> dict[str, str]:
    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}


def machine_failed(exc: ray.train.WorkerGroupError) -> bool:
    """Whether a worker failed with its process or node (Ray's error, or a peer that vanished),
    rather than raising an error of its own."""
    failures = list((getattr(exc, "worker_failures", None) or {}).values())
    # A worker whose node died may also be reported as a failed health check holding Ray's error.
    failures += [getattr(f, "health_check_failure", None) for f in failures]
    failures = [f for f in failures if isinstance(f, BaseException)]
    return any(user_cause(f) is not None for f in failures) or any(
        gone in str(f) for f in failures for gone in PEER_GONE
    )


def _lost_worker(exc: ray.train.WorkerGroupError, before: dict[str, str], max_failures: int) -> TrainingError | None:
    """A worker lost with its process or node: the others then fail as their peer vanishes. The
    machines failed, not the input or the code; the error names the node if one died. None: a
    worker raised an error of its own, which is a bug."""
    if not machine_failed(exc):
        return None
    deadline = time.monotonic() + NODE_DEATH_S
    while not (dead := set(before) - set(_alive_nodes())) and time.monotonic() < deadline:
        time.sleep(0.5)
    where = "; ".join(f"node {node[:12]} at {before[node]}" for node in sorted(dead))
    what = f"its node was lost ({where})" if dead else "its process died"
    retries = f"--max-failures {max_failures} was used up" if max_failures else "give --max-failures N"
    return TrainingError(f"a training worker was lost: {what}; {retries} to resume from the latest checkpoint")


def prune_checkpoints(latest: Checkpoint) -> None:
    """Once a run has succeeded, only its latest checkpoint stays: it also holds the best epoch's
    weights. The others are deleted; they are this run's own, in the directory Ray Train made for it."""
    fs, run_dir = latest.filesystem, posixpath.dirname(latest.path.rstrip("/"))
    for info in fs.get_file_info(pafs.FileSelector(run_dir)):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.Directory and name.startswith("checkpoint_") and info.path != latest.path:
            fs.delete_dir(info.path)


def _absolute(path: str | None) -> str | None:
    return path if path is None or is_uri(path) else os.path.abspath(path)


# ---------------------------------------------------------------------------------------------
# Runs on every Ray Train worker.
