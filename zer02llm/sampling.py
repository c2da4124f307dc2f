"""Sampling from a Transformer with a KV cache: temperature, top-k, top-p, repetition penalty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from zer02llm.model import Transformer


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off; >1 discourages tokens already in prompt or output

    def __post_init__(self) -> None:
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature}: must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k}: must be >= 0 (0 turns it off)")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p}: must be in (0, 1]")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty}: must be > 0 (1 turns it off)")
        if problems:
            raise ValueError("; ".join(problems))


def next_token(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> int:
    """Choose the next token from last-position logits (vocab,); `seen` is a bool mask (vocab,)."""
    logits = logits.float().clone()
    if params.repetition_penalty != 1.0:
        # CTRL-style: push seen tokens' logits towards "less likely" whatever their sign
        penalised = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the ones before it already cover top_p (the first always stays)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= params.top_p
        logits = logits.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model: Transformer, prompt_ids: Sequence[int], max_new_tokens: int, params: SamplingParams,
             eos_id: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids (stopping after eos_id), one forward pass per token."""
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token (e.g. the bos token)")
    if len(prompt_ids) >= model.cfg.max_seq_len:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; model.max_seq_len={model.cfg.max_seq_len} "
                         f"leaves no room for new ones")
    max_len = min(model.cfg.max_seq_len, len(prompt_ids) + max_new_tokens)
    max_new_tokens = max_len - len(prompt_ids)
    device = model.tok_embeddings.weight.device
    was_training = model.training
    model.eval()
    cache = model.new_cache(1, max_len)
    seen = torch.zeros(model.cfg.vocab_size, dtype=torch.bool, device=device)
    seen[torch.tensor(list(prompt_ids), device=device)] = True
    logits = model(torch.tensor([list(prompt_ids)], device=device), cache=cache).logits[0, -1]
    try:
        for i in range(max_new_tokens):
            token = next_token(logits, params, seen, generator)
            yield token
            if token == eos_id or i == max_new_tokens - 1:
                break
            seen[token] = True
            logits = model(torch.tensor([[token]], device=device), cache=cache).logits[0, -1]
    finally:
        model.train(was_training)
