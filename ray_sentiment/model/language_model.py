"""Language-model pretraining of the classifier's embedding and LSTM, on comments without labels.

ULMFiT-style (Howard & Ruder 2018): the LSTM's forward direction learns to predict each next token
and its backward direction each previous one, so both learn how comments are written before they
see a single label. The output layer over the whole vocabulary is an adaptive softmax (Grave et al.
2017): frequent tokens get a full-size output, rare ones a smaller one, which makes an epoch several
times cheaper on CPUs. Only the embedding and the LSTM are kept; the heads here are thrown away.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .lstm import SentimentLSTM
from .presets import ModelConfig

CUTOFFS = (1000, 4000)  # token ids below 1,000 (most of any text) get the full-size output


class LanguageModelHeads(nn.Module):
    """Next-token (and, for a bidirectional LSTM, previous-token) outputs over the vocabulary."""

    def __init__(self, config: ModelConfig, dropout: float = 0.1):
        super().__init__()
        cutoffs = [c for c in CUTOFFS if c < config.vocab_size - 1] or [config.vocab_size - 1]
        self.dropout = nn.Dropout(dropout)
        self.next = nn.AdaptiveLogSoftmaxWithLoss(config.hidden_dim, config.vocab_size, cutoffs, div_value=4.0)
        self.previous = (
            nn.AdaptiveLogSoftmaxWithLoss(config.hidden_dim, config.vocab_size, cutoffs, div_value=4.0)
            if config.bidirectional
            else None
        )


def language_model_loss(model: SentimentLSTM, heads: LanguageModelHeads, *, ids: torch.Tensor, lengths: torch.Tensor):
    """Mean negative log-likelihood per predicted token, over texts of at least two tokens."""
    lengths = lengths.to("cpu", torch.int64)
    keep = lengths >= 2
    ids, lengths = ids[keep.to(ids.device)], lengths[keep]
    if not len(lengths):
        return None
    ids = ids[:, : int(lengths.max())].long()
    packed = pack_padded_sequence(model.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
    outputs, _ = model.lstm(packed)
    outputs, _ = pad_packed_sequence(outputs, batch_first=True)  # [batch, time, hidden × directions]
    outputs = heads.dropout(outputs)
    hidden = model.config.hidden_dim
    steps = torch.arange(outputs.shape[1] - 1)
    # Position t's forward state has read tokens 0..t and predicts t+1, for t + 1 < length.
    ahead = (steps[None, :] < (lengths[:, None] - 1)).to(ids.device)
    losses = [heads.next(outputs[:, :-1, :hidden][ahead], ids[:, 1:][ahead]).loss]
    if heads.previous is not None:
        # Position t's backward state has read tokens t..end and predicts t-1, for 1 <= t < length.
        behind = (steps[None, :] + 1 < lengths[:, None]).to(ids.device)
        losses.append(heads.previous(outputs[:, 1:, hidden:][behind], ids[:, :-1][behind]).loss)
    return sum(losses) / len(losses)


def pretrain_epoch(
    model, heads, *, optimizer, arrays, order: np.ndarray, batch: int, steps: int, device, on_step=None
) -> float:
    """`steps` optimizer steps of language modelling over rows in `order`; the mean loss."""
    ids, lengths = arrays
    model.train()
    heads.train()
    total, counted = torch.zeros((), device=device), 0
    for step in range(steps):
        idx = order[step * batch : (step + 1) * batch]
        loss = language_model_loss(
            model, heads, ids=torch.from_numpy(ids[idx]).to(device), lengths=torch.from_numpy(lengths[idx])
        )
        optimizer.zero_grad(set_to_none=False)
        if loss is not None:  # a batch of one-token texts predicts nothing, but still joins the average
            loss.backward()
            total += loss.detach()
            counted += 1
        average_gradients(optimizer)
        optimizer.step()
        if on_step is not None:
            on_step(step + 1)
    return float(total) / max(counted, 1)


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Data parallelism by hand: the embedding and LSTM are shared with the classifier, which DDP
    wraps later, so this phase sums gradients itself. A parameter this worker did not use (a rare
    token's output) contributes zeros, so every worker makes the same calls in the same order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n
