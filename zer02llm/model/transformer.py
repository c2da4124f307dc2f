"""A LLaMA-style decoder-only Transformer in plain PyTorch.

RMSNorm (pre-norm, computed in float32) -> grouped-query attention with rotary embeddings ->
RMSNorm -> SwiGLU feed-forward, repeated n_layers times; a final norm and an LM head tied to the
token embedding. Attention runs through torch's scaled_dot_product_attention, or a plain-math path
that the tests use as the reference. A KVCache makes generation cost one token per step; a
StaticKVCache keeps every shape fixed from step to step, so that a compiled decode step serves them all.
Packed training windows can be document-masked (`doc_ids`, see masking.py) so that attention stops
at document boundaries, optionally with rotary positions restarted per document (`positions`).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from zer02llm.config import ModelConfig, MoEConfig
from zer02llm.model.masking import HAS_FLEX, BlockMask, document_block_mask, document_causal_mask, \
    flex_document_attention, flex_trains_on
from zer02llm.model.moe import MoEFeedForward, RouterStats
from zer02llm.model.paged import PagedBatch, PagedKVCache, paged_attention

IGNORE_INDEX = -100  # targets with this value (padding, prompts) add nothing to the loss
# a document mask: dense (B, 1, T, T) bool (True = may attend) for SDPA / math, or a flex BlockMask
AttentionMask = Union[torch.Tensor, "BlockMask"]
Cache = Union["KVCache", "StaticKVCache"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics: the mean of squares overflows/underflows in half precision
        compute = torch.promote_types(x.dtype, torch.float32)  # float32 at least, float64 kept
        xf = x.to(compute)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.to(compute)).to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, shape (max_len, head_dim), halves repeated."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + head_dim/2) of x (B, H, T, head_dim) by position-dependent angles;
    cos, sin are (T, head_dim) for positions shared by the batch, or (B, 1, T, head_dim)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to max_len."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str,
                 dtype: torch.dtype):
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # tokens stored; advanced by the model once every layer has written

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} requested")
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class StaticKVCache:
    """Keys and values in buffers of one fixed length, written at a position held in a tensor.

    Nothing about a step depends on a Python number that changes (the position lives on the device,
    attention runs over the whole buffer under a mask of the positions written so far), so one compiled
    decode step, CUDA graph included, serves every position. The caller keeps the tokens within max_len
    (sampling.StaticDecoder does): an overflow is not checked here, as that would need the host.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str,
                 dtype: torch.dtype):
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        # one tensor per layer, each updated in place: a CUDA graph replays writes into fixed addresses
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # tokens stored; advanced by the model
        self.max_len = max_len
        for buffer in (*self.keys, *self.values, self.position):
            torch._dynamo.mark_static_address(buffer)

    def reset(self) -> None:
        """Empty, for a new sequence (the stale entries are masked out, never read)."""
        self.position.zero_()

    def positions(self, num_tokens: int) -> torch.Tensor:
        """(num_tokens,) positions of the next tokens."""
        return self.position + torch.arange(num_tokens, device=self.position.device)

    def visible(self, positions: torch.Tensor) -> torch.Tensor:
        """(T, max_len) bool, True where the query at each of `positions` may attend a buffer slot."""
        return torch.arange(self.max_len, device=positions.device) <= positions.unsqueeze(1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.positions(k.size(2))
        self.keys[layer].index_copy_(2, index, k.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(2, index, v.to(self.values[layer].dtype))
        return self.keys[layer], self.values[layer]  # the whole buffer: (B, KV, max_len, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.impl = cfg.attention
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.o_proj.is_residual_proj = True

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: Optional[Cache] = None, mask: Optional[AttentionMask] = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # now (B, KV, past + T, hd); static: (B, KV, max_len, hd)
        past = k.size(2) - T
        dropout = self.dropout if self.training else 0.0
        if mask is not None and not isinstance(mask, torch.Tensor):  # a flex BlockMask
            y = flex_document_attention(q, k, v, mask, enable_gqa=self.n_kv_heads != self.n_heads)
        elif self.impl == "sdpa":
            y = self._sdpa(q, k, v, past, dropout, mask)
        else:
            y = self._math(q, k, v, past, dropout, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def forward_paged(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: PagedKVCache,
                      batch: PagedBatch) -> torch.Tensor:
        """x (N, dim): new tokens of several sequences laid flat; cos, sin (N, 1, hd) at their positions."""
        N = x.size(0)
        q = apply_rope(self.q_proj(x).view(N, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(N, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(N, self.n_kv_heads, self.head_dim)
        y = paged_attention(self, q, k, v, cache, batch)  # (N, H, hd)
        return self.o_proj(y.reshape(N, -1))

    def _sdpa(self, q, k, v, past: int, dropout: float, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Common cases need no mask tensor: a fresh sequence is plain causal, and a single new
        # token may see everything cached. Only a multi-token chunk after a cache needs one, and
        # a document mask comes with causality already in it.
        is_causal = mask is None and past == 0 and q.size(2) > 1
        if mask is None and past and q.size(2) > 1:
            mask = causal_mask(q.size(2), k.size(2), q.device)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )

    def _math(self, q, k, v, past: int, dropout: float, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        n_rep = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, past + T)
        if mask is None:
            mask = causal_mask(q.size(2), k.size(2), q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = F.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
        weights = F.dropout(weights, p=dropout, training=dropout > 0)
        return weights @ v


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """True where query i (the last q_len of kv_len positions) may attend key j."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=kv_len - q_len)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.down_proj.is_residual_proj = True
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.is_moe = isinstance(cfg, MoEConfig) and cfg.is_moe_layer(layer_idx)
        if self.is_moe:
            self.ffn = MoEFeedForward(cfg, FeedForward)
        else:
            self.ffn = FeedForward(cfg.dim, cfg.ffn_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Optional[Cache] = None,
                mask: Optional[AttentionMask] = None) -> tuple[torch.Tensor, Optional[RouterStats]]:
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, cache, mask))
        if self.is_moe:
            out, stats = self.ffn(self.ffn_norm(x))
            return x + out, stats
        return x + self.ffn(self.ffn_norm(x)), None


    def forward_paged(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: PagedKVCache,
                      batch: PagedBatch) -> torch.Tensor:
        x = x + self.attn.forward_paged(self.attn_norm(x), cos, sin, cache, batch)
        if self.is_moe:
            out, _ = self.ffn(self.ffn_norm(x).unsqueeze(0))
            return x + out[0]
        return x + self.ffn(self.ffn_norm(x))


class Output(NamedTuple):
    logits: torch.Tensor  # (B, T, vocab), float32
    loss: Optional[torch.Tensor]  # mean cross-entropy over targets != IGNORE_INDEX, when targets given
    # MoE only (None for dense models): the balance loss summed over MoE layers, to add to `loss`,
    # and per MoE layer the experts' shares of routed tokens (layers, E) and the router entropy
    aux_loss: Optional[torch.Tensor] = None
    expert_load: Optional[torch.Tensor] = None
    router_entropy: Optional[torch.Tensor] = None
    dropped_tokens: Optional[torch.Tensor] = None


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        cos, sin = cos.float(), sin.float()
        # not saved: recomputed from the config
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # kernel for document masks: None picks flex_attention where it trains (CUDA) and the dense
        # mask elsewhere; True/False force it (flex needs model.attention="sdpa" and no attention dropout)
        self.use_flex_attention: Optional[bool] = None
        self.apply(self._init_weights)

    def _apply(self, fn, recurse=True):
        # rebuild the rotary tables after .to()/.double()/.bfloat16(): float64 in a float64 model,
        # float32 otherwise (apply_rope casts them to the activations' dtype), never a rounded copy
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.tok_embeddings.weight.dtype == torch.float64 else torch.float32
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        self.rope_cos = cos.to(self.rope_cos.device, dtype)
        self.rope_sin = sin.to(self.rope_sin.device, dtype)
        return self

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, MoEFeedForward):
            module.init_weights(std, residual_std=std / math.sqrt(2 * self.cfg.n_layers))
        elif isinstance(module, nn.Linear):
            # GPT-2 scaling: each block adds two residual branches, keep the stream's variance flat
            if getattr(module, "is_residual_proj", False):
                std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, tokens: torch.Tensor, targets: Optional[torch.Tensor] = None,
                cache: Optional[Cache] = None, doc_ids: Optional[torch.Tensor] = None,
                positions: Optional[torch.Tensor] = None) -> Output:
        """tokens (B, T) -> logits (B, T, vocab); with a cache, tokens continue the cached ones.

        doc_ids (B, T), e.g. masking.document_ids(tokens, bos_id): each token attends only to earlier
        tokens with the same id. positions (B, T): rotary position of each token instead of 0..T-1,
        e.g. masking.document_positions(doc_ids) to restart at every document. Both are for whole
        training windows, not for generation with a cache.
        """
        x, router_stats = self._blocks(tokens, cache, doc_ids, positions)
        logits = self.lm_head(self.norm(x))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        if not router_stats:
            return Output(logits, loss)
        return Output(logits, loss, aux_loss=torch.stack([s.aux_loss for s in router_stats]).sum(),
                      expert_load=torch.stack([s.expert_load for s in router_stats]),
                      router_entropy=torch.stack([s.router_entropy for s in router_stats]),
                      dropped_tokens=torch.stack([s.dropped for s in router_stats]).sum())

    def hidden_states(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens (B, T) -> the final norm's output (B, T, dim): forward without the LM head, for a caller that
        needs logits at a few positions only (lm_head(hidden[picked])). mask (B, 1, T, T) bool, True where a
        query may attend a key, replaces the causal mask (e.g. several continuations packed after one context);
        positions (B, T) as forward's."""
        if mask is not None and tuple(mask.shape[-2:]) != (tokens.size(1), tokens.size(1)):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; it must end in ({tokens.size(1)}, {tokens.size(1)})")
        x, _ = self._blocks(tokens, None, None, positions, mask)
        return self.norm(x)

    def _blocks(self, tokens: torch.Tensor, cache: Optional[Cache], doc_ids: Optional[torch.Tensor],
                positions: Optional[torch.Tensor], mask: Optional[AttentionMask] = None):
        """The embeddings through every block: (x (B, T, dim) before the final norm, each MoE layer's router stats)."""
        T = tokens.size(1)
        for name, value in (("doc_ids", doc_ids), ("positions", positions)):
            if value is not None and cache is not None:
                raise ValueError(f"{name} is for training windows; generation with a KV cache takes none")
            if value is not None and value.shape != tokens.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}; it must match tokens {tuple(tokens.shape)}")
        if isinstance(cache, StaticKVCache):
            # positions from the device, never the host: the compiled decode step stays one graph
            at = cache.positions(T)  # (T,)
            cos, sin = self.rope_cos[at], self.rope_sin[at]  # (T, hd)
            mask = cache.visible(at)  # (T, max_len), shared by all layers
        else:
            start = cache.length if cache is not None else 0
            if start + T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
            if positions is None:
                cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]  # (T, hd)
            else:
                cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)  # (B, 1, T, hd)
            if doc_ids is not None:
                mask = self._document_mask(doc_ids)  # once, shared by all layers
        x = self.dropout(self.tok_embeddings(tokens))
        router_stats = []
        for layer in self.layers:
            x, stats = layer(x, cos, sin, cache, mask)
            if stats is not None:
                router_stats.append(stats)
        if isinstance(cache, StaticKVCache):
            cache.position.add_(T)  # in place: the CUDA graph's input stays where it was
        elif cache is not None:
            cache.length += T
        return x, router_stats

    def forward_paged(self, tokens: torch.Tensor, cache: PagedKVCache, batch: PagedBatch) -> torch.Tensor:
        """Inference over several sequences at once (see paged.py): tokens (N,) laid flat, each at its
        batch.positions and written to its batch.slots -> float32 logits (len(batch.logit_rows), vocab)."""
        cos = self.rope_cos[batch.positions].unsqueeze(1)  # (N, 1, hd)
        sin = self.rope_sin[batch.positions].unsqueeze(1)
        x = self.tok_embeddings(tokens)  # (N, dim)
        for layer in self.layers:
            x = layer.forward_paged(x, cos, sin, cache, batch)
        if batch.logit_rows is not None:
            x = x[batch.logit_rows]
        logits = self.lm_head(self.norm(x))
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def new_paged_cache(self, num_slots: int, dtype: Optional[torch.dtype] = None) -> PagedKVCache:
        param = self.tok_embeddings.weight
        return PagedKVCache(self.cfg, num_slots, param.device, dtype or param.dtype)

    def _document_mask(self, doc_ids: torch.Tensor) -> AttentionMask:
        """The mask of doc_ids in the form the kernel takes: a flex BlockMask or a dense boolean mask."""
        flex_fits = HAS_FLEX and self.cfg.attention == "sdpa" and not (self.training and self.cfg.dropout > 0)
        if self.use_flex_attention is None:
            use_flex = flex_fits and flex_trains_on(doc_ids.device)
        elif self.use_flex_attention and not flex_fits:  # flex has no attention dropout: never drop it silently
            raise ValueError("use_flex_attention=True needs torch's flex_attention, model.attention='sdpa' "
                             f"(got {self.cfg.attention!r}) and no dropout while training (got {self.cfg.dropout})")
        else:
            use_flex = self.use_flex_attention
        return document_block_mask(doc_ids) if use_flex else document_causal_mask(doc_ids)

    def new_cache(self, batch_size: int, max_len: Optional[int] = None) -> KVCache:
        param = self.tok_embeddings.weight
        return KVCache(self.cfg, batch_size, max_len or self.cfg.max_seq_len, param.device, param.dtype)

    def new_static_cache(self, batch_size: int, max_len: int) -> StaticKVCache:
        if not 0 < max_len <= self.cfg.max_seq_len:
            raise ValueError(f"a static KV cache of {max_len} tokens: must be in "
                             f"1..model.max_seq_len={self.cfg.max_seq_len}")
        param = self.tok_embeddings.weight
        return StaticKVCache(self.cfg, batch_size, max_len, param.device, param.dtype)

    def num_params(self, exclude_embeddings: bool = False, active: bool = False) -> int:
        """Parameter count (tied weights once); optionally without the token embedding, or only
        those one token uses (`active`: an MoE layer's unchosen routed experts left out)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.tok_embeddings.weight.numel()
        if active:
            for layer in self.layers:
                if layer.is_moe:
                    moe = layer.ffn
                    per_expert = (moe.gate_proj.numel() + moe.up_proj.numel() + moe.down_proj.numel()) // moe.num_experts
                    total -= (moe.num_experts - moe.top_k) * per_expert
        return total

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 * N (active matmul weights, forward + backward) + 12 * L * dim * T
        (attention scores and weighted sum); the router is counted in N, the MoE dispatch is not."""
        n_matmul = self.num_params(exclude_embeddings=True, active=True)
        if self.cfg.tie_embeddings:
            n_matmul += self.lm_head.weight.numel()
        return 6 * n_matmul + 12 * self.cfg.n_layers * self.cfg.dim * seq_len
