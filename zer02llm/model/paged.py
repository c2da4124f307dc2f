"""Batched inference over sequences of different lengths: a paged KV cache and its attention.

The inference engine (zer02llm/inference/engine/) runs many sequences in one forward. Their new tokens are
laid flat, one row each (N rows in all), so every matrix multiplication sees the whole batch at once; only
attention needs to know whose token is whose. Each token carries its own rotary position and the cache
slot its key and value go to; each sequence reads its context back from the slots that hold it.

The cache is one flat store of token slots per layer (slot = block * block_size + offset): which slots a
sequence owns is the engine's business (its block manager), not the model's. Attention runs in two groups:

- decoding sequences (one new token each): one scaled_dot_product_attention over all of them, each
  sequence's context gathered from its slots and padded to the longest, the padding masked out;
- sequences with several new tokens (a prompt, or a chunk of one): one attention each, causal within the
  chunk and over everything cached before it (the same call `Attention._sdpa` makes for a solo sequence).

Pure torch, no I/O; training never comes here (Transformer.forward is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from zer02llm.config import ModelConfig


class PagedKVCache:
    """Keys and values of every layer in `num_slots` token slots: (num_slots, n_kv_heads, head_dim) each."""

    def __init__(self, cfg: ModelConfig, num_slots: int, device: torch.device | str, dtype: torch.dtype):
        shape = (num_slots, cfg.n_kv_heads, cfg.head_dim)
        # one tensor per layer, written in place: a CUDA graph replays its writes into fixed addresses
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.num_slots = num_slots

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (N, n_kv_heads, head_dim) into slots (N,)."""
        self.keys[layer].index_copy_(0, slots, k.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(0, slots, v.to(self.values[layer].dtype))

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at slots (..., L) -> (..., n_kv_heads, L, head_dim) each."""
        k, v = self.keys[layer][slots], self.values[layer][slots]  # (..., L, KV, hd)
        return k.transpose(-3, -2), v.transpose(-3, -2)


@dataclass
class PrefillSegment:
    """A sequence with several new tokens: rows [start, end) of the batch, its whole context in `slots`
    (cached tokens first, then the new ones), so `past` = len(slots) - (end - start) tokens came before."""

    start: int
    end: int
    slots: torch.Tensor  # (L,) long


@dataclass
class PagedBatch:
    """Where the tokens of one batched forward are and what each may attend to.

    Rows 0..num_decode-1 are decoding sequences (one token each), the rest are prefill segments, in order.
    """

    positions: torch.Tensor  # (N,) long: rotary position of every token
    slots: torch.Tensor  # (N,) long: the cache slot each token's key and value are written to
    num_decode: int = 0
    decode_slots: Optional[torch.Tensor] = None  # (num_decode, L) long: context slots, padded
    decode_mask: Optional[torch.Tensor] = None  # (num_decode, 1, 1, L) bool: True on real context
    prefills: list[PrefillSegment] = field(default_factory=list)
    # rows whose logits are wanted (None: every row)
    logit_rows: Optional[torch.Tensor] = None


def decode_context(slot_lists: list[list[int]], device: torch.device | str,
                   pad_to: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(slots (B, L), mask (B, 1, 1, L)) of decoding sequences whose contexts are in slot_lists; padding
    reads slot 0 (any slot would do) under a False mask."""
    longest = max(len(s) for s in slot_lists)
    width = pad_to if pad_to is not None else longest
    slots = torch.zeros(len(slot_lists), width, dtype=torch.long)
    mask = torch.zeros(len(slot_lists), width, dtype=torch.bool)
    for i, s in enumerate(slot_lists):
        slots[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return slots.to(device), mask.view(len(slot_lists), 1, 1, width).to(device)


def paged_attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: PagedKVCache,
                    batch: PagedBatch) -> torch.Tensor:
    """q (N, H, hd), k and v (N, KV, hd) of the new tokens, rotated -> attention output (N, H, hd).

    The new keys and values are written to their slots first, so every query reads them back with the rest
    of its context. `attn` is the layer's Attention (its layer index and its kernel, sdpa or math).
    """
    layer = attn.layer_idx
    cache.write(layer, batch.slots, k, v)
    outs = []
    d = batch.num_decode
    if d:
        kd, vd = cache.gather(layer, batch.decode_slots)  # (d, KV, L, hd)
        qd = q[:d].unsqueeze(2)  # (d, H, 1, hd)
        outs.append(_attend(attn, qd, kd, vd, batch.decode_mask, past=kd.size(2) - 1).squeeze(2))
    for seg in batch.prefills:
        ks, vs = cache.gather(layer, seg.slots)  # (KV, L, hd)
        qs = q[seg.start:seg.end].transpose(0, 1).unsqueeze(0)  # (1, H, T, hd)
        T = seg.end - seg.start
        y = _attend(attn, qs, ks.unsqueeze(0), vs.unsqueeze(0), None, past=ks.size(1) - T)
        outs.append(y[0].transpose(0, 1))  # (T, H, hd)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _attend(attn, q, k, v, mask: Optional[torch.Tensor], past: int) -> torch.Tensor:
    """The layer's own kernel: with mask=None a causal chunk after `past` cached tokens, as a solo sequence."""
    if attn.impl == "sdpa":
        if mask is not None:
            import torch.nn.functional as F

            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=attn.n_kv_heads != attn.n_heads)
        return attn._sdpa(q, k, v, past, 0.0)
    return attn._math(q, k, v, past, 0.0, mask)
