"""Pretrain an encoder on comments without labels, for `train --init-from`.

    ray-sentiment pretrain --unlabelled comments.parquet [--train labelled.parquet] --output runs/encoder

The same Ray Train job as `train` (workers, checkpoints, resume after a failure), running only its
language-model phase: the vocabulary comes from every text given, and the result is the embedding
and LSTM of the chosen preset with that vocabulary (bundle.EncoderBundle). One encoder can start
many classifiers: other label sets, other brands, retraining as labels arrive.
"""

from __future__ import annotations

import dataclasses
import time

from ..data.read import read_labelled
from ..errors import TrainingError
from ..model.bundle import EncoderBundle, save_encoder
from ..model.embeddings import ppmi_vectors
from ..model.presets import encoder_preset
from ..runtime import cpus_per_process, ensure_ray
from ..settings import PretrainSettings
from ..text.tokens import TokenizerConfig
from .checks import check_pretrain
from .driver import fit
from .loop import LoopSettings, Pretraining
from .prepare import cooccurrence_matrix, encode_dataset, fit_vocab

DEFAULT_EPOCHS = 2  # for a preset that does not pretrain by itself


def pretrain(settings: PretrainSettings) -> str:
    s = settings
    preset = encoder_preset(s.preset)
    check_pretrain(s)
    ensure_ray()
    started = time.time()
    parts = [
        read_labelled(p, s.text_column, label_column=None) for p in filter(None, (s.unlabelled_path, s.train_path))
    ]
    texts = parts[0].dataset if len(parts) == 1 else parts[0].dataset.union(parts[1].dataset).materialize()
    rows = sum(p.rows for p in parts)
    print(f"data: {rows} texts ({sum(p.rows_dropped for p in parts)} null or empty dropped)")
    vocab = fit_vocab(texts, s.vocab_size or preset.model.vocab_size)
    max_len = s.max_len or preset.max_len
    encoded = encode_dataset(texts, vocab, max_len=max_len)
    model = dataclasses.replace(preset.model, num_classes=2, vocab_size=len(vocab))  # the head is not trained
    embedding = None
    if preset.embedding_init == "ppmi":
        embedding = ppmi_vectors(cooccurrence_matrix(encoded, len(vocab)), model.embed_dim, seed=s.seed)
    loop = LoopSettings(
        model=model,
        embedding=embedding,
        seed=s.seed,
        cpus=s.cpus_per_worker or cpus_per_process(s.num_workers, s.use_gpu),
        pretraining=Pretraining(
            epochs=s.epochs or preset.pretrain_epochs or DEFAULT_EPOCHS,
            batch_size=max(1, preset.pretrain_batch_size // s.num_workers),
            learning_rate=preset.pretrain_learning_rate,
        ),
    )
    state, checkpoint = fit(s, loop, {"lm": encoded})
    if not state.encoder:
        raise TrainingError("pretraining ended without an encoder; see the workers' errors above")
    metrics = {
        "pretraining": state.pretrain_history,
        "texts": rows,
        "preset": s.preset,
        "seconds": round(time.time() - started, 1),
        "checkpoint": checkpoint,
    }
    path = save_encoder(
        EncoderBundle(vocab, model, TokenizerConfig(len(vocab), max_len), state.encoder, metrics), s.output
    )
    last = state.pretrain_history[-1]
    print(
        f"pretrained {last['pretrain_epoch']} epochs, language-model loss {last['lm_loss']:.4f}; "
        f"encoder written to {path}"
    )
    return path
