"""Mixture-of-Experts feed-forward: a softmax router picks k of E SwiGLU experts per token.

Dispatch is dropless by default: the (token, expert) pairs are sorted by expert so that each
expert's tokens are one contiguous slice, and the experts run as grouped matrix multiplications
(`torch.nn.functional.grouped_mm`, one kernel for all experts) with the slice boundaries kept on
the device, so the forward never waits for the host. Where grouped_mm is missing (older torch,
float64) the slices are run one expert at a time, which needs the slice sizes on the host once per
layer. With a capacity factor the experts instead get fixed-size buffers (tokens over capacity
are dropped and counted), for users who want static shapes.

Routed expert weights are stacked tensors (E, in, out), so every expert is part of the graph and
gets a gradient (zero when it received no token) on every step: DDP never waits for a missing one.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from zer02llm.config import MoEConfig

_HAS_GROUPED_MM = hasattr(F, "grouped_mm")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _grouped_mm_supported(x: torch.Tensor) -> bool:
    """grouped_mm runs on CPU in float32/bfloat16/float16, and on CUDA in bfloat16 from sm80."""
    if not _HAS_GROUPED_MM:
        return False
    if x.device.type == "cpu":
        # eager CPU kernels take float32 too, but the compiler's shape rules accept only bfloat16
        allowed = (torch.bfloat16,) if torch.compiler.is_compiling() else (torch.float32, torch.bfloat16, torch.float16)
        supported = x.dtype in allowed
    elif x.device.type == "cuda":
        supported = x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 8
    else:
        return False
    # in eager mode, check once per device and dtype that the kernel runs and agrees with plain
    # matmuls (builds differ in what they accept); the compiler follows the rules above
    return supported and (torch.compiler.is_compiling() or _grouped_mm_agrees(x.device, x.dtype))


@functools.lru_cache(maxsize=None)
def _grouped_mm_agrees(device: torch.device, dtype: torch.dtype) -> bool:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 16, generator=gen).to(device, dtype)
    b = torch.randn(3, 16, 8, generator=gen).to(device, dtype)
    offsets = torch.tensor([2, 2, 6], dtype=torch.int32, device=device)
    try:
        got = F.grouped_mm(a, b, offs=offsets).float()
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    expected = torch.cat([a[:2] @ b[0], a[2:6] @ b[2]]).float()
    return bool(torch.allclose(got, expected, rtol=2e-2, atol=2e-2))


class RouterStats(NamedTuple):
    aux_loss: torch.Tensor  # balance loss (+ z-loss), already scaled by its alpha
    expert_load: torch.Tensor  # (E,) share of routed (token, expert) pairs per expert, sums to 1
    router_entropy: torch.Tensor  # mean entropy of the router's distribution, in nats
    dropped: torch.Tensor  # pairs dropped by the capacity limit (0 when dropless)


def expert_counts(expert_of_pair: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many pairs each expert got (bincount with a static shape, which torch.compile can trace)."""
    counts = torch.zeros(num_experts, dtype=torch.long, device=expert_of_pair.device)
    return counts.scatter_add_(0, expert_of_pair, torch.ones_like(expert_of_pair))


def balance_loss(probs: torch.Tensor, topk_idx: torch.Tensor, num_experts: int, seq_len: int,
                 per_sequence: bool) -> torch.Tensor:
    """Switch-style load-balancing loss E * sum_e f_e * P_e (1 when perfectly balanced).

    f_e: share of the routed (token, expert) pairs that went to expert e; P_e: mean router
    probability of expert e. Batch level uses every token of the batch at once; sequence level
    computes the same per sequence and averages, which asks each sequence to be balanced.
    """
    k = topk_idx.size(-1)
    if per_sequence:
        probs = probs.view(-1, seq_len, num_experts)  # (B, T, E)
        chosen = topk_idx.view(-1, seq_len * k)
    else:
        probs = probs.view(1, -1, num_experts)
        chosen = topk_idx.view(1, -1)
    counts = torch.zeros(chosen.size(0), num_experts, device=probs.device, dtype=probs.dtype)
    counts.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=probs.dtype))
    f = counts / chosen.size(1)
    p = probs.mean(dim=1)
    return (num_experts * (f * p).sum(dim=-1)).mean()


class MoEFeedForward(nn.Module):
    def __init__(self, cfg: MoEConfig, shared_expert: type[nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.num_experts, self.top_k = cfg.num_experts, cfg.experts_per_token
        hidden = cfg.expert_ffn_dim
        self.router = nn.Linear(cfg.dim, cfg.num_experts, bias=False)
        # stacked routed experts, laid out (E, in, out) for grouped_mm
        self.gate_proj = nn.Parameter(torch.empty(cfg.num_experts, cfg.dim, hidden))
        self.up_proj = nn.Parameter(torch.empty(cfg.num_experts, cfg.dim, hidden))
        self.down_proj = nn.Parameter(torch.empty(cfg.num_experts, hidden, cfg.dim))
        # always-on experts; none at all (not even empty parameters) when the count is 0
        self.shared_experts = nn.ModuleList(shared_expert(cfg.dim, hidden, cfg.dropout)
                                            for _ in range(cfg.num_shared_experts))
        self.dropout = nn.Dropout(cfg.dropout)

    def init_weights(self, std: float, residual_std: float) -> None:
        nn.init.normal_(self.gate_proj, std=std)
        nn.init.normal_(self.up_proj, std=std)
        nn.init.normal_(self.down_proj, std=residual_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        B, T, D = x.shape
        flat = x.reshape(-1, D)  # (N, D)
        logits = self.router(flat)
        # routing decisions in float32 at least, whatever the autocast (float64 models stay float64)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        probs = logits.softmax(dim=-1)  # (N, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.cfg.norm_topk_prob and self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)

        if self.cfg.capacity_factor > 0:
            routed, dropped = self._capacity_experts(flat, chosen, weights)
        else:
            routed, dropped = self._dropless_experts(flat, chosen, weights), flat.new_zeros((), dtype=torch.long)
        out = routed
        for expert in self.shared_experts:
            out = out + expert(flat)

        aux = self.cfg.aux_loss_alpha * balance_loss(probs, chosen, self.num_experts, T, self.cfg.seq_aux)
        if self.cfg.router_z_loss > 0:
            aux = aux + self.cfg.router_z_loss * torch.logsumexp(logits, dim=-1).pow(2).mean()
        with torch.no_grad():
            load = expert_counts(chosen.flatten(), self.num_experts).float() / chosen.numel()
            entropy = -(probs * probs.clamp_min(1e-20).log()).sum(-1).mean()
        return out.view(B, T, D), RouterStats(aux, load, entropy, dropped)

    def _expert_mlp(self, xs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """SwiGLU of each expert on its contiguous slice of xs (slice e ends at offsets[e])."""
        xs = xs.to(_compute_dtype(xs))  # autocast does not cover grouped_mm: cast by hand
        gate, up, down = (w.to(xs.dtype) for w in (self.gate_proj, self.up_proj, self.down_proj))
        if _grouped_mm_supported(xs):
            h = F.silu(F.grouped_mm(xs, gate, offs=offsets)) * F.grouped_mm(xs, up, offs=offsets)
            return F.grouped_mm(h, down, offs=offsets)
        # fallback: one matmul per expert; the slice sizes must come to the host for this
        sizes = torch.diff(offsets, prepend=offsets.new_zeros(1)).tolist()
        outs = [(F.silu(part @ gate[e]) * (part @ up[e])) @ down[e] for e, part in enumerate(xs.split(sizes))]
        return torch.cat(outs)

    def _dropless_experts(self, flat: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        N, D = flat.shape
        expert_of_pair = chosen.flatten()  # (N*k,) pair p = token p // k, its (p % k)-th expert
        order = torch.argsort(expert_of_pair, stable=True)  # pairs grouped by expert
        offsets = expert_counts(expert_of_pair, self.num_experts).cumsum(0).to(torch.int32)
        out_sorted = self._expert_mlp(flat[order // self.top_k], offsets)  # (N*k, D)
        # back to pair order with a gather (deterministic, unlike a scatter-add), then weight and sum the k
        out_pairs = out_sorted[torch.argsort(order)].view(N, self.top_k, D)
        return self.dropout((out_pairs * weights.unsqueeze(-1).to(out_pairs.dtype)).sum(dim=1))

    def _capacity_experts(self, flat: torch.Tensor, chosen: torch.Tensor,
                          weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed (E, capacity) buffers: static shapes at the price of dropping overflow pairs."""
        N, D = flat.shape
        E, k = self.num_experts, self.top_k
        capacity = max(1, math.ceil(self.cfg.capacity_factor * N * k / E))
        expert_of_pair = chosen.flatten()
        one_hot = F.one_hot(expert_of_pair, E)  # (N*k, E)
        # position of each pair among its expert's pairs, in token order (earlier tokens win)
        position = ((one_hot.cumsum(0) - 1) * one_hot).sum(-1)
        kept = position < capacity
        slot = torch.where(kept, expert_of_pair * capacity + position, E * capacity)  # overflow -> scratch row
        buffer = flat.new_zeros(E * capacity + 1, D)
        buffer[slot] = flat.repeat_interleave(k, dim=0)  # pair p carries token p // k
        xs = buffer[:-1].view(E, capacity, D).to(_compute_dtype(flat))
        gate, up, down = (w.to(xs.dtype) for w in (self.gate_proj, self.up_proj, self.down_proj))
        h = F.silu(torch.bmm(xs, gate)) * torch.bmm(xs, up)
        expert_out = torch.cat([torch.bmm(h, down).view(E * capacity, D), xs.new_zeros(1, D)])
        pair_weight = (weights * kept.view(N, k)).unsqueeze(-1).to(expert_out.dtype)  # dropped pairs weigh 0
        out = (expert_out[slot].view(N, k, D) * pair_weight).sum(dim=1)
        return self.dropout(out), (~kept).sum()
