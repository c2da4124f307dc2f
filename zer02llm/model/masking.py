"""Document masking for packed windows: each token attends only to earlier tokens of its own document.

Pretraining packs documents (bos + text + eos) back to back and cuts windows of seq_len + 1 tokens,
so a window holds the tail of one document, some whole ones and the head of the next. With a
document mask the packing stays (no padding) but attention stops at document boundaries:

    doc_ids = document_ids(inputs, bos_id)                       # (B, T): a new id at each bos
    out = model(inputs, targets, doc_ids=doc_ids)                # block-diagonal causal attention
    out = model(inputs, targets, doc_ids=doc_ids, positions=document_positions(doc_ids))  # + RoPE restart

The mask is built once per forward and shared by every layer: a dense (B, 1, T, T) boolean mask for
scaled_dot_product_attention and the math path, or a flex_attention BlockMask, which skips the
blocks that lie wholly outside a document instead of computing and discarding them.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
    HAS_FLEX = True
except ImportError:  # torch without flex_attention: the dense mask serves everywhere
    BlockMask, create_block_mask, flex_attention = None, None, None
    HAS_FLEX = False


def document_ids(tokens: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(B, T) int64 document index of every token: +1 at each bos. Tokens before a window's first bos
    (a document continued from the previous window) get 0 and so form a document of their own."""
    return (tokens == bos_id).cumsum(dim=1)


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) int64 index of every token within its document (0 where a run of equal ids starts)."""
    B, T = doc_ids.shape
    index = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.cat([torch.ones_like(doc_ids[:, :1], dtype=torch.bool), doc_ids[:, 1:] != doc_ids[:, :-1]], dim=1)
    # the latest start at or before each token, carried forward by a running max
    start_of_doc = torch.where(starts, index, 0).cummax(dim=1).values
    return index - start_of_doc


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool, True where query i may attend key j: j <= i and the same document.
    The diagonal is always True, so no row is fully masked (no NaN from an empty softmax)."""
    T = doc_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)  # (B, T, T)
    return (same_doc & causal).unsqueeze(1)


def document_block_mask(doc_ids: torch.Tensor) -> BlockMask:
    """The same mask as document_causal_mask, as a flex_attention BlockMask (broadcast over heads)."""
    B, T = doc_ids.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc_ids[b, q_idx] == doc_ids[b, kv_idx]) & (q_idx >= kv_idx)

    return create_block_mask(mask_mod, B, None, T, T, device=doc_ids.device)


def flex_trains_on(device: torch.device) -> bool:
    """Whether flex_attention runs forward and backward here: CUDA. On CPU torch compiles its forward
    only (no backward, no float64), so training there uses the dense mask with SDPA."""
    return HAS_FLEX and device.type == "cuda"


@functools.lru_cache(maxsize=None)
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    # uncompiled, flex_attention is a slow reference that materializes the scores; static shapes
    # because packed windows all have one length
    return torch.compile(flex_attention, dynamic=False)


def flex_document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask,
                            enable_gqa: bool) -> torch.Tensor:
    """flex_attention of q (B, H, T, hd) over k, v (B, KV, T, hd) under block_mask, compiled."""
    # inside a compiled model the call is traced into the model's graph; outside, it needs its own
    attend = flex_attention if torch.compiler.is_compiling() else _compiled_flex_attention()
    return attend(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
