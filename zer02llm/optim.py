"""The optimizer and the learning-rate schedule (a pure function of the step and, for a run whose length
changed on resume, of an anchor saved in the checkpoint)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from zer02llm.config import Config


# (start step, start lr) of a cosine re-laid when a resumed run's length changed; None: the plain schedule
Anchor = Optional[tuple[int, float]]


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float,
          anchor: Anchor = None) -> float:
    """Linear warmup to lr over warmup_steps, then cosine decay to lr * min_lr_ratio at total_steps.

    With an anchor (s0, lr0), steps from s0 on follow a cosine from lr0 at s0 to lr * min_lr_ratio at
    total_steps instead: what a run extended (or shortened) on resume follows, so the lr never jumps.
    """
    min_lr = lr * min_lr_ratio
    if anchor is not None and step >= anchor[0]:
        start, start_lr = anchor
        progress = min(1.0, (step - start) / max(1, total_steps - start))
        return min_lr + 0.5 * (start_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def relaid_anchor(step: int, lr: float, warmup_steps: int, old_total: int, min_lr_ratio: float,
                  old_anchor: Anchor) -> Anchor:
    """The anchor that continues, from `step`, a schedule laid for old_total steps to any new total.

    During warmup none is needed (warmup does not depend on the total); after it, the cosine restarts
    from the lr the old schedule gives at `step` (the floor, if the old run had finished).
    """
    if old_anchor is None and step < warmup_steps:
        return None
    return step, lr_at(step, lr, warmup_steps, old_total, min_lr_ratio, old_anchor)


def build_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (linear weights, embeddings), none on norms' gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # the fused kernel does the whole update in one launch on GPUs (and exists for CPU in recent torch)
    fused = device.type in ("cuda", "cpu")
    try:
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2), fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
