"""Rollouts: group_size sampled completions of each prompt from the current weights.

`rollout()` is the one place GRPO generates; the batched engine replaces its body when it comes.
Until then it is a small batched sampler over the model: prompts of equal token length are decoded
together (no padding, so no attention mask or position shift is needed and each row computes exactly
what batch-1 decoding would), each prompt's KV prefilled once and shared by its group_size rows, then
one forward per new token for all rows of the length class through a KVCache. Rows that finished
(their eos sampled) ride along until the last one does and are cut at their eos.

Each prompt samples from its own generator (`seeds`), so what a prompt draws does not depend on
which prompts share its batch, its rank, or the order they are decoded in.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict
from typing import Callable, Optional, Sequence

import torch

from zer02llm.model import KVCache, Transformer


def prompt_seed(*parts: object) -> int:
    """A 63-bit seed from parts (run seed, rollout number, prompt index): independent streams per prompt."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def sample_rows(logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One token per row of logits (R, V): greedy at temperature 0, else sampled from softmax(logits / t)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def rollout(model: Transformer, prompts: Sequence[Sequence[int]], group_size: int, max_new_tokens: int,
            temperature: float, eos_id: Optional[int], seeds: Sequence[int],
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[list[int]]:
    """group_size completions of each prompt, prompt-major: result[p * group_size + g]. A completion holds
    its new tokens, its eos last when it finished within max_new_tokens (and within model.max_seq_len)."""
    device = model.tok_embeddings.weight.device
    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in range(len(prompts) * group_size)]
    by_length: dict[int, list[int]] = defaultdict(list)
    for p, ids in enumerate(prompts):
        if not ids:
            raise ValueError(f"prompt {p} is empty: give at least one token")
        by_length[len(ids)].append(p)
    try:
        for length, members in sorted(by_length.items()):
            new = min(max_new_tokens, model.cfg.max_seq_len - length)
            if new <= 0:
                raise ValueError(f"a prompt of {length} tokens leaves no room in model.max_seq_len="
                                 f"{model.cfg.max_seq_len}")
            generators = [torch.Generator(device).manual_seed(seeds[p]) for p in members]
            rows = _decode(model, [prompts[p] for p in members], group_size, new, temperature, eos_id, generators,
                           device, autocast)
            for i, p in enumerate(members):
                for g in range(group_size):
                    out[p * group_size + g] = rows[i * group_size + g]
    finally:
        model.train(was_training)
    return out


def _decode(model: Transformer, prompts: list[Sequence[int]], group_size: int, max_new_tokens: int,
            temperature: float, eos_id: Optional[int], generators: list[torch.Generator], device: torch.device,
            autocast: Callable[[], contextlib.AbstractContextManager]) -> list[list[int]]:
    """Completions of prompts of one length, group_size rows each, prompt-major."""
    n, length = len(prompts), len(prompts[0])
    prefill = model.new_cache(n, length)
    with autocast():
        logits = model(torch.tensor([list(p) for p in prompts], device=device), cache=prefill).logits[:, -1]
    # the group's rows share their prompt's keys and values: copied, not computed group_size times
    cache = KVCache(model.cfg, n * group_size, length + max_new_tokens, device, prefill.keys.dtype)
    cache.keys[:, :, :, :length] = prefill.keys.repeat_interleave(group_size, dim=1)
    cache.values[:, :, :, :length] = prefill.values.repeat_interleave(group_size, dim=1)
    cache.length = length
    logits = logits.repeat_interleave(group_size, dim=0)
    tokens = torch.empty(n * group_size, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(n * group_size, dtype=torch.bool, device=device)
    steps = 0
    for t in range(max_new_tokens):
        chosen = torch.cat([sample_rows(logits[i * group_size:(i + 1) * group_size], temperature, generators[i])
                            for i in range(n)])
        tokens[:, t] = chosen
        steps = t + 1
        if eos_id is not None:
            done |= chosen == eos_id
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        with autocast():
            logits = model(chosen[:, None], cache=cache).logits[:, -1]
    rows = tokens[:, :steps].tolist()
    if eos_id is not None:
        rows = [row[:row.index(eos_id) + 1] if eos_id in row else row for row in rows]
    return rows


__all__ = ["prompt_seed", "rollout", "sample_rows"]
