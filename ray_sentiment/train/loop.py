"""The Ray Train worker loop: what each TorchTrainer worker runs.

Language-model pretraining epochs if the recipe has them (model/language_model.py), then
data-parallel (DDP) classifier epochs on the worker's shard, validation gathered from every
worker into one report, a checkpoint every epoch holding everything needed to resume (so a
restarted worker group continues, not starts over), and early stopping on validation loss.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from ..metrics import classification_report
from ..model.bundle import ENCODER_PARTS
from ..model.language_model import LanguageModelHeads, pretrain_epoch
from ..model.lstm import SentimentLSTM, nonfinite_tensors
from ..model.presets import ModelConfig
from ..progress import Reporter
from .batches import bucketed_order

STATE_FILE = "state.pt"
EPOCH_METRICS = ("loss", "accuracy", "macro_recall", "macro_f1")  # in each epoch's record, as val_<name>


@dataclass(frozen=True)
class Pretraining:
    """The language-model phase: next-word prediction over the "lm" shard."""

    epochs: int
    batch_size: int  # per worker
    learning_rate: float


@dataclass(frozen=True)
class Classifying:
    """The classifier phase: labelled epochs with early stopping on the validation loss."""

    labels: tuple[str, ...]
    epochs: int
    patience: int
    batch_size: int  # per worker
    learning_rate: float
    class_weights: tuple[float, ...] | None
    soft_targets: bool = False  # rows carry a "target" distribution (distil.py), not a label_id


@dataclass(frozen=True)
class LoopSettings:
    """Everything a worker's loop needs, passed whole as the TorchTrainer's train_loop_config:
    `train` runs one phase or both, `pretrain` only the first."""

    model: ModelConfig
    embedding: np.ndarray | None
    seed: int
    cpus: float  # reserved per worker; its whole part is the worker's torch threads
    initial: dict | None = None  # embedding and LSTM weights to start from (a pretrained encoder)
    pretraining: Pretraining | None = None
    classifying: Classifying | None = None


@dataclass
class TrainState:
    """What a checkpoint holds: enough to resume where training stopped. Tensors, numbers, lists
    and dicts only, so that torch.load(weights_only=True) reads it back."""

    epoch: int = 0
    history: list = field(default_factory=list)
    restarts: list = field(default_factory=list)
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    best_report: dict | None = None
    best_model: dict | None = None
    bad_epochs: int = 0
    model: dict | None = None
    optimizer: dict | None = None  # of the phase in progress
    pretrain_epoch: int = 0
    pretrain_history: list = field(default_factory=list)
    heads: dict | None = None  # the language model's outputs, while pretraining
    encoder: dict | None = None  # embedding and LSTM as pretraining left them

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def train_loop(config: dict) -> None:
    logging.getLogger().setLevel(logging.WARNING)  # Ray Train logs each report at INFO through the root logger
    cfg: LoopSettings = config["loop"]
    reporter: Reporter = config["progress"]
    torch.set_num_threads(max(1, int(cfg.cpus)))
    torch.manual_seed(cfg.seed)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    state = _restore(ray.train.get_checkpoint(), rank, reporter)
    model = _initial_model(cfg, state).to(device)
    bad = nonfinite_tensors(model.state_dict())
    if bad:  # every worker starts from the same weights, so all of them stop here together
        return _stop(f"initial weights are not finite in {', '.join(bad)}; nothing was trained", rank)
    if cfg.pretraining and state.pretrain_epoch < cfg.pretraining.epochs:
        language_model_phase(
            cfg.model,
            cfg.pretraining,
            seed=cfg.seed,
            state=state,
            model=model,
            device=device,
            rank=rank,
            reporter=reporter,
        )
    if cfg.classifying is None:  # `ray-sentiment pretrain`: the encoder is the result
        return None
    return classifier_phase(
        cfg.classifying, cfg.seed, state=state, model=model, device=device, rank=rank, reporter=reporter
    )


def _initial_model(cfg: LoopSettings, state: TrainState) -> SentimentLSTM:
    """Word vectors, a pretrained encoder or a checkpoint, whichever is latest, loaded."""
    model = SentimentLSTM(cfg.model)
    with torch.no_grad():
        if cfg.embedding is not None:
            model.embedding.weight.copy_(torch.tensor(cfg.embedding))
        if cfg.initial is not None:
            initial = {k: torch.as_tensor(v) for k, v in cfg.initial.items()}
            model.load_state_dict(initial, strict=False)  # embedding and LSTM; the head starts fresh
    if state.model is not None:
        model.load_state_dict(state.model)
        state.model = None
    return model


def language_model_phase(
    config: ModelConfig,
    phase: Pretraining,
    *,
    seed: int,
    state: TrainState,
    model: SentimentLSTM,
    device,
    rank: int,
    reporter: Reporter,
) -> None:
    """Language-model epochs over the "lm" shard; a checkpoint after each. Gradients are averaged by
    hand (language_model.average_gradients): DDP wraps the model only for the classifier."""
    ids, lengths = _load_shard("lm", ("ids", "length"))
    heads = LanguageModelHeads(config).to(device)
    if state.heads is not None:
        heads.load_state_dict(state.heads)
    optimizer = _adam([*model.parameters(), *heads.parameters()], lr=phase.learning_rate, state=state)
    # A handful of texts pretrains in smaller batches; the same number of steps on every worker.
    texts = int(_all_reduce(len(ids), device, dist.ReduceOp.MIN))
    if texts == 0:
        raise ValueError("a worker's shard holds no texts to pretrain on")
    batch = min(phase.batch_size, texts)
    steps = texts // batch
    for epoch in range(state.pretrain_epoch + 1, phase.epochs + 1):
        started = time.perf_counter()
        order = bucketed_order(np.random.default_rng([seed, epoch, rank, 1]), lengths, batch)
        what = f"pretrain epoch {epoch}/{phase.epochs}"
        on_step = _on_step(reporter, what, steps=steps, batch=batch, rank=rank)
        loss = pretrain_epoch(
            model,
            heads,
            optimizer=optimizer,
            arrays=(ids, lengths),
            order=order,
            batch=batch,
            steps=steps,
            device=device,
            on_step=on_step,
        )
        loss = _all_reduce(loss, device, dist.ReduceOp.SUM) / _world()
        seconds = time.perf_counter() - started
        rate = steps * batch * _world() / seconds
        record = {"pretrain_epoch": epoch, "lm_loss": loss, "texts_per_s": rate, "seconds": seconds}
        state.pretrain_history.append(record)
        state.pretrain_epoch = epoch
        last = epoch == phase.epochs
        state.heads = None if last else heads.state_dict()
        state.encoder = {k: v for k, v in _cpu_state(model).items() if k.startswith(ENCODER_PARTS)}
        if rank == 0:
            reporter.line(f"{what} language-model loss {loss:.4f} {record['texts_per_s']:.0f} texts/s")
        # After the last epoch the classifier starts with a fresh optimizer; a restart from here must too.
        _report(record, state, model=model, optimizer=None if last else optimizer, rank=rank)


def classifier_phase(
    phase: Classifying, seed: int, *, state: TrainState, model: SentimentLSTM, device, rank: int, reporter: Reporter
) -> None:
    """The classifier's epochs, with early stopping on the validation loss."""
    world = _world()
    train_arrays = _load_shard("train", ("ids", "length", "target" if phase.soft_targets else "label_id"))
    val_ids, val_len, val_y = _load_shard("val", ("ids", "length", "label_id"))
    model = ray.train.torch.prepare_model(model)  # DDP when world > 1
    # Created after the move, so a restored optimizer state lands on the parameters' device.
    optimizer = _adam(model.parameters(), lr=phase.learning_rate, state=state)
    weights = (
        None if phase.class_weights is None else torch.tensor(phase.class_weights, dtype=torch.float32, device=device)
    )
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    batch = phase.batch_size
    n_train = len(train_arrays[2])
    # DDP needs the same number of steps on every worker.
    steps = int(_all_reduce(n_train // batch, device, dist.ReduceOp.MIN))
    if steps == 0:
        raise ValueError(f"a worker's shard has fewer rows ({n_train}) than one batch ({batch})")

    for epoch in range(state.epoch + 1, phase.epochs + 1):
        started = time.perf_counter()
        order = bucketed_order(np.random.default_rng([seed, epoch, rank]), train_arrays[1], batch)
        on_step = _on_step(reporter, f"epoch {epoch}/{phase.epochs}", steps=steps, batch=batch, rank=rank)
        loss = train_epoch(
            model,
            optimizer,
            loss_fn=loss_fn,
            arrays=train_arrays,
            order=order,
            batch=batch,
            steps=steps,
            device=device,
            on_step=on_step,
        )
        seconds = time.perf_counter() - started
        train_loss = _all_reduce(loss, device, dist.ReduceOp.SUM) / world
        if not np.isfinite(train_loss):  # all-reduced: every worker sees it and stops
            return _stop(
                f"the training loss became {train_loss} in epoch {epoch}, so no bundle was written; "
                "lower --learning-rate, or check the data",
                rank,
            )
        report = _validate(model, val_ids, lengths=val_len, y=val_y, device=device, labels=phase.labels)
        record = {"epoch": epoch, "loss": train_loss, **{f"val_{k}": report[k] for k in EPOCH_METRICS}}
        record.update(samples_per_s=steps * batch * world / seconds, seconds=seconds)
        _advance(state, record, report=report, model=model)
        if rank == 0:
            reporter.line(f"epoch {epoch}/{phase.epochs} {_summary(record)}")
        _report(record, state, model=model, optimizer=optimizer, rank=rank)
        if state.bad_epochs >= phase.patience:
            if rank == 0:
                reporter.line(f"early stop: validation loss has not improved for {phase.patience} epochs")
            break
    return None


def _adam(parameters, *, lr: float, state: TrainState) -> torch.optim.Adam:
    """Adam, given once the optimizer state a restart restored."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
        state.optimizer = None
    return optimizer


def _summary(record: dict) -> str:
    """An epoch's line, after its number."""
    return (
        f"loss {record['loss']:.4f} val_loss {record['val_loss']:.4f} "
        f"val_macro_recall {record['val_macro_recall']:.4f} val_accuracy {record['val_accuracy']:.4f} "
        f"{record['samples_per_s']:.0f} samples/s"
    )


def _validate(model, ids: np.ndarray, *, lengths: np.ndarray, y: np.ndarray, device, labels) -> dict:
    """Metrics (and the loss) over every worker's validation shard, gathered."""
    proba, y_all = _gather(_predict(model, ids, lengths=lengths, device=device)), _gather(y)
    report = classification_report(y_all, proba, list(labels))
    report["loss"] = float(-np.log(np.clip(proba[np.arange(len(y_all)), y_all], 1e-12, None)).mean())
    return report


def _advance(state: TrainState, record: dict, *, report: dict, model) -> None:
    """One epoch done: history, best weights so far, epochs without improvement."""
    state.history.append(record)
    state.epoch = record["epoch"]
    if report["loss"] < state.best_val_loss:
        state.best_val_loss, state.best_epoch, state.best_report = report["loss"], record["epoch"], report
        state.best_model, state.bad_epochs = _cpu_state(model), 0
    else:
        state.bad_epochs += 1


def train_epoch(
    model, optimizer, *, loss_fn, arrays, order: np.ndarray, batch: int, steps: int, device, on_step=None
) -> float:
    """`steps` optimizer steps over rows in `order`; returns the mean training loss.

    Shared with the throughput benchmark's plain loop, so both time exactly the same work."""
    ids, lengths, labels = arrays
    model.train()
    loss_sum = torch.zeros((), device=device)
    for step in range(steps):
        idx = order[step * batch : (step + 1) * batch]
        logits = model(torch.from_numpy(ids[idx]).to(device), torch.from_numpy(lengths[idx]))
        loss = loss_fn(logits, torch.from_numpy(labels[idx]).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        if on_step is not None:
            on_step(step + 1)
    return float(loss_sum) / steps


def _on_step(reporter: Reporter, what: str, *, steps: int, batch: int, rank: int):
    """Rank 0 counts the epoch's batches; every worker runs as many, in step."""
    if rank != 0:
        return None
    scale = batch * _world()
    return lambda step: reporter.update(what, step, steps, unit="batch", scale=scale)


def _load_shard(name: str, columns: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """This worker's encoded rows, held in memory: numbers only, read once and reused every epoch."""
    parts = list(ray.train.get_dataset_shard(name).iter_batches(batch_size=8192, batch_format="numpy"))
    if not parts:
        empty: dict[str, np.ndarray] = {
            "ids": np.zeros((0, 1), np.int32),
            "length": np.zeros(0, np.int32),
            "label_id": np.zeros(0, np.int64),
            "target": np.zeros((0, 1), np.float32),
        }
        return tuple(empty[c] for c in columns)
    return tuple(np.concatenate([p[key] for p in parts]) for key in columns)


def _restore(checkpoint: Checkpoint | None, rank: int, reporter: Reporter) -> TrainState:
    """The training state of the latest checkpoint (model and optimizer included), or a fresh one."""
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as directory:
        state = TrainState(**torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True))
    state.restarts.append({"resumed_after_epoch": state.epoch, "time": time.time()})
    if rank == 0:
        reporter.line(f"resuming from the checkpoint of epoch {state.epoch}")
    return state


def _report(record: dict, state: TrainState, *, model, optimizer, rank: int) -> None:
    if rank != 0:  # every worker reports; one writes the checkpoint
        ray.train.report(record)
        return
    with tempfile.TemporaryDirectory() as directory:
        saved = dataclasses.replace(
            state, model=_cpu_state(model), optimizer=optimizer.state_dict() if optimizer else None
        )
        torch.save(saved.as_dict(), Path(directory) / STATE_FILE)
        (Path(directory) / "history.json").write_text(json.dumps(state.history, indent=2))
        ray.train.report(record, checkpoint=Checkpoint.from_directory(directory))


def _stop(message: str, rank: int) -> None:
    """End training with a message for the driver's one-line error. Not an exception: Ray would
    print a worker traceback and retry. Only a checkpoint's metrics reach the driver's result."""
    if rank != 0:
        ray.train.report({"error": message})
        return
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "error.txt").write_text(message + "\n")
        ray.train.report({"error": message}, checkpoint=Checkpoint.from_directory(directory))


def _cpu_state(model: torch.nn.Module) -> dict:
    inner = getattr(model, "module", model)  # unwrap DDP
    return {k: v.detach().to("cpu").clone() for k, v in inner.state_dict().items()}


def _predict(model, ids: np.ndarray, *, lengths: np.ndarray, device, batch: int = 1024) -> np.ndarray:
    model.eval()
    inner = model.module if hasattr(model, "module") else model  # no DDP sync for inference
    out = [np.zeros((0, inner.config.num_classes), np.float32)]
    with torch.inference_mode():
        for s in range(0, len(ids), batch):
            logits = inner(torch.from_numpy(ids[s : s + batch]).to(device), torch.from_numpy(lengths[s : s + batch]))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out)


def _world() -> int:
    return dist.get_world_size() if _distributed() else 1


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(array: np.ndarray) -> np.ndarray:
    if not _distributed():
        return array
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def _all_reduce(value: float, device: torch.device, op) -> float:
    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)  # on the device: NCCL needs it there
    dist.all_reduce(t, op=op)
    return t.item()
