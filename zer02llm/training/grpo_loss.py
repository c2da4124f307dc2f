"""GRPO's loss, pure tensor functions (the objective around them: grpo.py).

For completion i of a prompt's group of G, with reward r_i, and each of its tokens t:

    advantage   A_i = (r_i - mean(r)) / (std(r) + 1e-4)    scale_rewards=true (GRPO; std unbiased)
                A_i = r_i - mean(r)                        scale_rewards=false (Dr. GRPO)
    ratio       rho_it = exp(log pi(y_it) - log pi_old(y_it))     pi_old: the weights that sampled the rollouts
    loss_it     = -min(rho_it * A_i, clip(rho_it, 1 - eps, 1 + eps_high) * A_i) + beta * k3_it
    k3_it       = exp(ref_it - logp_it) - (ref_it - logp_it) - 1   (Schulman's unbiased, positive KL estimator)

With one update per rollout batch pi_old is the current policy (rho = 1, its gradient that of the
policy-gradient), so its log-probs are the current ones detached and no extra forward is run. The
token losses are summed and divided by (loss_norm): "token", the completion tokens of the whole step
(DAPO; every token weighs the same); "sequence", each completion's length, then the completions (the
GRPO paper); "constant", completions x max_new_tokens (Dr. GRPO, no length bias). These are TRL's
loss_type dapo/bnpo, grpo and dr_grpo.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from zer02llm.model import IGNORE_INDEX

ADVANTAGE_EPS = 1e-4  # added to the group's std: a group of equal rewards gets advantage 0, not 0/0


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """rewards (P, G), a row per prompt -> advantages (P, G): centred on the row's mean, divided by its
    std (unbiased) + ADVANTAGE_EPS when `scale`."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + ADVANTAGE_EPS)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-probabilities of each target token (N, T), float32 at least; 0 where the target is IGNORE_INDEX."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="none").view(targets.shape)


def token_losses(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip_eps: float,
                 clip_eps_high: Optional[float] = None, beta: float = 0.0,
                 ref_logps: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token losses (N, T) from per-token log-probs (N, T) and per-completion advantages (N,), and
    per-token figures: `clipped` (the clip took the gradient away) and `kl` (k3; only when beta > 0)."""
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None].to(ratio.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high) * adv
    losses = -torch.minimum(unclipped, clipped)
    figures = {"clipped": (((ratio < 1.0 - clip_eps) & (adv < 0)) | ((ratio > 1.0 + high) & (adv > 0))).float()}
    if beta > 0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1.0
        losses = losses + beta * kl
        figures["kl"] = kl.detach()
    return losses, figures


def reduce_losses(losses: torch.Tensor, mask: torch.Tensor, loss_norm: str, max_new_tokens: int) -> torch.Tensor:
    """The loss of one batch alone: token losses (N, T) under mask (N, T) normalised by loss_norm."""
    mask = mask.to(losses.dtype)
    summed = (losses * mask).sum()
    if loss_norm == "token":
        return summed / mask.sum().clamp(min=1)
    if loss_norm == "sequence":
        return ((losses * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if loss_norm == "constant":
        return summed / (losses.shape[0] * max_new_tokens)
    raise ValueError(f"mode.loss_norm={loss_norm!r}: must be token, sequence or constant")


def units(mask: torch.Tensor, loss_norm: str) -> int:
    """What reduce_losses averages over: tokens ("token") or completions: the trainer's weight of a micro-batch."""
    return int(mask.sum()) if loss_norm == "token" else mask.shape[0]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy (N, T) of softmax(logits), in nats."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(logp.exp() * logp).sum(-1)


__all__ = ["ADVANTAGE_EPS", "entropy", "group_advantages", "reduce_losses", "token_logps", "token_losses", "units"]
