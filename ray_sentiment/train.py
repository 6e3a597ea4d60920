"""Train the LSTM with Ray Train: labelled comments in, a model bundle out.

Driver: read and split the data, fit the vocabulary and encode every text once (Ray Data), then
hand the encoded datasets to a TorchTrainer. Workers (`train_loop`): data-parallel (DDP) epochs,
validation on every worker's shard gathered into one report, a checkpoint every epoch holding
everything needed to resume (so a restarted worker group continues, not starts over), early
stopping on validation loss. The best epoch's weights become the bundle.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from .bundle import ModelBundle, save_bundle
from .data import check_input, cooccurrence_matrix, encode_dataset, fit_vocab, load_labelled, read_labelled
from .embeddings import ppmi_vectors
from .errors import ConfigError, DataError, TrainingError
from .evaluate import classification_report
from .model import ModelConfig, SentimentLSTM, get_preset, nonfinite_tensors
from .runtime import cpus_per_process, ensure_ray, quiet_ray_data
from .storage import is_uri
from .text import TokenizerConfig

STATE_FILE = "state.pt"


@dataclass
class TrainConfig:
    train_path: str
    output: str
    val_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    preset: str = "default"
    # None: take the preset's value
    epochs: int | None = None
    batch_size: int | None = None  # global: split across workers, so results don't depend on their number
    learning_rate: float | None = None
    max_len: int | None = None
    vocab_size: int | None = None
    class_weighted: bool | None = None
    embedding_init: str | None = None
    unlabelled_path: str | None = None  # extra comments, without labels, for the word vectors
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    seed: int = 0
    max_failures: int = 0
    storage_path: str | None = None
    val_fraction: float = 0.1


def resolved_settings(config: TrainConfig) -> dict:
    """The preset's recipe with every option the user gave laid over it, checked."""
    preset = get_preset(config.preset)
    s = {
        "epochs": config.epochs or preset.epochs,
        "batch_size": config.batch_size or preset.batch_size,
        "learning_rate": config.learning_rate or preset.learning_rate,
        "max_len": config.max_len or preset.max_len,
        "vocab_size": config.vocab_size or preset.model.vocab_size,
        "class_weighted": preset.class_weighted if config.class_weighted is None else config.class_weighted,
        "embedding_init": config.embedding_init or preset.embedding_init,
        "patience": preset.patience,
    }
    if s["embedding_init"] not in ("random", "ppmi"):
        raise ConfigError(f"unknown embedding init {s['embedding_init']!r}; use 'random' or 'ppmi'")
    if config.num_workers < 1:
        raise ConfigError("--num-workers must be at least 1")
    if s["batch_size"] < config.num_workers:
        raise ConfigError(f"--batch-size {s['batch_size']} is smaller than --num-workers {config.num_workers}")
    if s["epochs"] < 1 or s["max_len"] < 1 or s["vocab_size"] < 3:
        raise ConfigError("--epochs and --max-len must be at least 1, --vocab-size at least 3")
    if not 0 < s["learning_rate"] < float("inf"):
        raise ConfigError("--learning-rate must be a positive number")
    if not 0 < config.val_fraction < 1:
        raise ConfigError("the validation fraction must be between 0 and 1")
    if config.max_failures < 0:
        raise ConfigError("--max-failures must be 0 or more (-1 is not supported: a bug would retry forever)")
    return s


def train(config: TrainConfig) -> str:
    """Run the whole job; returns where the bundle went (a directory or a URI)."""
    settings = resolved_settings(config)
    for path in filter(None, (config.train_path, config.val_path, config.unlabelled_path)):
        check_input(path)  # a wrong path or a file that is not UTF-8 fails now, before Ray starts
    ensure_ray()
    quiet_ray_data()
    started = time.time()
    data = load_labelled(
        config.train_path, config.val_path, config.text_column, config.label_column,
        config.val_fraction, config.seed,
    )
    print(f"data: {data.counts['train']['rows']} training rows, {data.counts['val']['rows']} validation rows, "
          f"labels {data.labels}, {data.counts['train']['dropped']} training rows dropped (null or empty)")
    if data.counts["train"]["rows"] < settings["batch_size"]:
        raise DataError(f"{data.counts['train']['rows']} training rows are fewer than one batch "
                        f"({settings['batch_size']}); lower --batch-size or add data")
    vocab = fit_vocab(data.train, settings["vocab_size"])
    train_ds = encode_dataset(data.train, vocab, settings["max_len"], data.labels)
    val_ds = encode_dataset(data.val, vocab, settings["max_len"], data.labels)

    preset = get_preset(config.preset)
    # The embedding has a row per token actually seen, up to the requested vocabulary size.
    model_config = dataclasses.replace(preset.model, num_classes=len(data.labels), vocab_size=len(vocab))
    counts = np.array([data.counts["class_counts"].get(label, 0) for label in data.labels], dtype=np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1)) if settings["class_weighted"] else None
    cpus = config.cpus_per_worker or cpus_per_process(config.num_workers, config.use_gpu)
    embedding = None
    if settings["embedding_init"] == "ppmi":
        embedding = word_vectors(train_ds, vocab, model_config.embed_dim, settings["max_len"], config, data.counts)

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "model": dataclasses.asdict(model_config),
            "labels": data.labels,
            "epochs": settings["epochs"],
            "patience": settings["patience"],
            "batch_size": max(1, settings["batch_size"] // config.num_workers),
            "learning_rate": settings["learning_rate"],
            "class_weights": None if weights is None else weights.tolist(),
            "embedding": embedding,
            "seed": config.seed,
            "threads": max(1, int(cpus)),
        },
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(
            name=f"ray-sentiment-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=_absolute(config.storage_path),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),  # our epoch lines say what matters
        ),
        datasets={"train": train_ds, "val": val_ds},
    )
    result = trainer.fit()
    if result.metrics and result.metrics.get("error"):
        raise TrainingError(result.metrics["error"])
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)

    metrics = {
        "validation": state["best_report"],
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": state["epoch"] < settings["epochs"],
        "history": state["history"],
        "restarts": state["restarts"],
        "rows": data.counts,
        "settings": {**settings, "preset": config.preset, "num_workers": config.num_workers,
                     "use_gpu": config.use_gpu, "seed": config.seed},
        "train_seconds": round(time.time() - started, 1),
        "checkpoint": result.checkpoint.path,
    }
    bundle = ModelBundle(
        labels=data.labels, vocab=vocab, model_config=model_config,
        tokenizer=TokenizerConfig(vocab_size=len(vocab), max_len=settings["max_len"]),
        state_dict=state["best_model"], preset=config.preset, metrics=metrics,
    )
    path = save_bundle(bundle, config.output)
    report = state["best_report"]
    print(f"best epoch {state['best_epoch']}: val_loss {report['loss']:.4f} "
          f"macro_recall {report['macro_recall']:.4f} accuracy {report['accuracy']:.4f}; bundle written to {path}")
    return path


def word_vectors(train_ds, vocab: list[str], dim: int, max_len: int, config: TrainConfig, counts: dict) -> np.ndarray:
    """PPMI-SVD vectors from the training texts and, if given, unlabelled comments."""
    cooccurrence = cooccurrence_matrix(train_ds, len(vocab))
    if config.unlabelled_path:
        extra = read_labelled(config.unlabelled_path, config.text_column, label_column=None)
        cooccurrence += cooccurrence_matrix(encode_dataset(extra.dataset, vocab, max_len), len(vocab))
        counts["unlabelled"] = {"read": extra.rows_read, "dropped": extra.rows_dropped}
    return ppmi_vectors(cooccurrence, dim, seed=config.seed)


def _absolute(path: str | None) -> str | None:
    return path if path is None or is_uri(path) else os.path.abspath(path)


# ---------------------------------------------------------------------------------------------
# Runs on every Ray Train worker.


def train_loop(cfg: dict) -> None:
    logging.getLogger().setLevel(logging.WARNING)  # Ray Train logs each report at INFO through the root logger
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    train_ids, train_len, train_y = _load_shard("train")
    val_ids, val_len, val_y = _load_shard("val")

    model = SentimentLSTM(ModelConfig(**cfg["model"]))
    if cfg["embedding"] is not None:
        with torch.no_grad():
            model.embedding.weight.copy_(torch.tensor(cfg["embedding"]))
    state = _restore(ray.train.get_checkpoint())
    if "model" in state:
        model.load_state_dict(state.pop("model"))
    bad = nonfinite_tensors(model.state_dict())
    if bad:  # every worker starts from the same weights, so all of them stop here together
        return _stop(f"initial weights are not finite in {', '.join(bad)}; nothing was trained", rank)
    model = ray.train.torch.prepare_model(model)  # to device; DDP when world > 1
    # Created after the move, so a restored optimizer state lands on the parameters' device.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
    if "optimizer" in state:
        optimizer.load_state_dict(state.pop("optimizer"))
    weights = cfg["class_weights"]
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    )

    batch = cfg["batch_size"]
    steps = int(_all_reduce(len(train_y) // batch, device, dist.ReduceOp.MIN))  # DDP needs the same number of steps everywhere
    if steps == 0:
        raise ValueError(f"a worker's shard has fewer rows ({len(train_y)}) than one batch ({batch})")

    for epoch in range(state["epoch"] + 1, cfg["epochs"] + 1):
        started = time.perf_counter()
        order = np.random.default_rng([cfg["seed"], epoch, rank]).permutation(len(train_y))
        loss = train_epoch(model, optimizer, loss_fn, (train_ids, train_len, train_y), order, batch, steps, device)
        seconds = time.perf_counter() - started
        train_loss = _all_reduce(loss, device, dist.ReduceOp.SUM) / world
        if not np.isfinite(train_loss):  # all-reduced: every worker sees it and stops
            return _stop(f"the training loss became {train_loss} in epoch {epoch}, so no bundle was written; "
                         "lower --learning-rate, or check the data", rank)

        proba = _predict(model, val_ids, val_len, device)
        proba, y_val = _gather(proba), _gather(val_y)
        report = classification_report(y_val, proba, cfg["labels"])
        report["loss"] = float(-np.log(np.clip(proba[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
        record = {
            "epoch": epoch,
            "loss": train_loss,
            "val_loss": report["loss"],
            "val_accuracy": report["accuracy"],
            "val_macro_recall": report["macro_recall"],
            "val_macro_f1": report["macro_f1"],
            "samples_per_s": steps * batch * world / seconds,
            "seconds": seconds,
        }
        state["history"].append(record)
        state["epoch"] = epoch
        if report["loss"] < state["best_val_loss"]:
            state.update(best_val_loss=report["loss"], best_epoch=epoch, best_report=report, bad_epochs=0,
                         best_model=_cpu_state(model))
        else:
            state["bad_epochs"] += 1
        if rank == 0:
            _progress(f"epoch {epoch}/{cfg['epochs']} loss {train_loss:.4f} val_loss {report['loss']:.4f} "
                      f"val_macro_recall {report['macro_recall']:.4f} val_accuracy {report['accuracy']:.4f} "
                      f"{record['samples_per_s']:.0f} samples/s")
        _report(record, state, model, optimizer, rank)
        if state["bad_epochs"] >= cfg["patience"]:
            if rank == 0:
                _progress(f"early stop: validation loss has not improved for {cfg['patience']} epochs")
            break


def train_epoch(model, optimizer, loss_fn, arrays, order: np.ndarray, batch: int, steps: int, device) -> float:
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
    return float(loss_sum) / steps


def _progress(line: str) -> None:
    # Not print(): Ray Train patches it in workers, and the line would reach the driver twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _load_shard(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This worker's encoded rows, held in memory: numbers only, read once and reused every epoch."""
    parts = list(ray.train.get_dataset_shard(name).iter_batches(batch_size=8192, batch_format="numpy"))
    if not parts:
        return np.zeros((0, 1), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64)
    return tuple(np.concatenate([p[key] for p in parts]) for key in ("ids", "length", "label_id"))


def _restore(checkpoint: Checkpoint | None) -> dict:
    """The training state of the latest checkpoint (model and optimizer included), or a fresh one."""
    fresh = {"epoch": 0, "history": [], "restarts": [], "best_val_loss": float("inf"), "best_epoch": 0,
             "best_report": None, "best_model": None, "bad_epochs": 0}
    if checkpoint is None:
        return fresh
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    state["restarts"].append({"resumed_after_epoch": state["epoch"], "time": time.time()})
    if ray.train.get_context().get_world_rank() == 0:
        _progress(f"resuming from the checkpoint of epoch {state['epoch']}")
    return state


def _report(record: dict, state: dict, model, optimizer, rank: int) -> None:
    if rank != 0:  # every worker reports; one writes the checkpoint
        ray.train.report(record)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save({**state, "model": _cpu_state(model), "optimizer": optimizer.state_dict()},
                   Path(directory) / STATE_FILE)
        (Path(directory) / "history.json").write_text(json.dumps(state["history"], indent=2))
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
    inner = model.module if hasattr(model, "module") else model  # unwrap DDP
    return {k: v.detach().to("cpu").clone() for k, v in inner.state_dict().items()}


def _predict(model, ids: np.ndarray, lengths: np.ndarray, device, batch: int = 1024) -> np.ndarray:
    model.eval()
    inner = model.module if hasattr(model, "module") else model  # no DDP sync for inference
    out = [np.zeros((0, inner.config.num_classes), np.float32)]
    with torch.inference_mode():
        for s in range(0, len(ids), batch):
            logits = inner(torch.from_numpy(ids[s : s + batch]).to(device), torch.from_numpy(lengths[s : s + batch]))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(array: np.ndarray) -> np.ndarray:
    if not _distributed():
        return array
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def _all_reduce(value: float, device: torch.device, op) -> float:
    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)  # on the device: NCCL needs it there
    dist.all_reduce(t, op=op)
    return t.item()
