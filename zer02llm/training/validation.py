"""Validation: loss, perplexity and bits per byte over a validation set, shared among ranks.

Bits per byte (`val_bpb`) is the summed next-token loss in bits divided by the UTF-8 bytes of the
target text: it does not depend on the tokenizer, so runs with different vocabularies compare.
Special-token targets (bos, eos, chat markers) stand for no text: they count in `val_loss` but
neither their loss nor any bytes count in `val_bpb` (nanochat's convention).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from zer02llm.training import distributed
from zer02llm.model import IGNORE_INDEX

LN2 = math.log(2.0)


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token loss in nats of every target, (B, T), 0 where the target is IGNORE_INDEX."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none").view(targets.shape)


def loss_sums(logits: torch.Tensor, targets: torch.Tensor, byte_lengths: torch.Tensor) -> torch.Tensor:
    """float64 [loss over all targets, number of targets, loss over text targets, their UTF-8 bytes]."""
    losses = token_losses(logits, targets).double()
    counted = targets != IGNORE_INDEX
    nbytes = byte_lengths[targets.clamp(min=0)] * counted
    text = nbytes > 0
    return torch.stack([losses.sum(), counted.sum().double(), losses[text].sum(), nbytes.sum().double()])


def metrics_from_sums(sums: Sequence[float]) -> dict[str, float]:
    loss_sum, n_targets, text_loss_sum, n_bytes = (float(x) for x in sums)
    val_loss = loss_sum / max(n_targets, 1.0)
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)),
            "val_bpb": text_loss_sum / LN2 / n_bytes if n_bytes > 0 else float("nan")}


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Any, batch_size: int, max_batches: int, byte_lengths: torch.Tensor,
             device: torch.device, rank: int = 0, world_size: int = 1,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             forward_kwargs: Callable[[torch.Tensor], dict[str, Any]] = lambda inputs: {}) -> dict[str, float]:
    """val_loss, val_ppl and val_bpb over the first `max_batches` batches (-1: all) of `dataset`.

    Every rank runs the same number of forwards (a sharded model gathers its weights in each); a rank
    past the end repeats batch 0 with weight 0. `forward_kwargs(inputs)`: extra model arguments
    (a document mask).
    """
    was_training = model.training
    model.eval()
    n_batches = math.ceil(len(dataset) / batch_size)
    if max_batches > 0:
        n_batches = min(n_batches, max_batches)
    byte_lengths = byte_lengths.to(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for i in range(math.ceil(n_batches / world_size)):
        b = i * world_size + rank
        counted = b < n_batches
        b = b if counted else 0
        indices = list(range(b * batch_size, min(len(dataset), (b + 1) * batch_size)))
        inputs, targets = dataset.batch(indices)
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast():
            logits = model(inputs, **forward_kwargs(inputs)).logits
        if counted:
            sums += loss_sums(logits, targets, byte_lengths)
    distributed.all_reduce_sum(sums)
    model.train(was_training)
    return metrics_from_sums(sums.tolist())
