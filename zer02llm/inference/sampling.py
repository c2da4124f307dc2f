"""Sampling from a Transformer with a KV cache: temperature, top-k, top-p, repetition penalty.

`generate(model, ...)` decodes eagerly through a KVCache; `generate(StaticDecoder(model), ...)` gives
the same tokens from a StaticKVCache with the one-token step compiled (a CUDA graph on GPUs), for
batch-1 decoding that would otherwise wait on kernel launches.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from zer02llm.model import Transformer
from zer02llm.model.transformer import StaticKVCache


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


def _decode_step(model: Transformer, cache: StaticKVCache, token: torch.Tensor) -> torch.Tensor:
    """token (1, 1) -> its logits (vocab,), the cache advanced by one: the function that gets compiled."""
    return model(token, cache=cache).logits[0, -1]


class StaticDecoder:
    """Batch-1 decoding through a StaticKVCache, the one-token step compiled (`compile=true`).

    On CUDA the step is compiled with mode="reduce-overhead": replayed as one CUDA graph instead of
    launching each kernel from Python, which is what decoding a small model one token at a time waits
    on. On the CPU it is plainly compiled. The prompt (any length) runs eagerly, and sampling stays
    outside the graph. Cache lengths come in buckets (powers of two from 256, at most max_seq_len) and
    each bucket's cache is kept, so one compile serves every prompt that fits the bucket.
    """

    MIN_BUCKET = 256

    def __init__(self, model: Transformer, compile: bool = True):
        device = model.tok_embeddings.weight.device
        if compile and device.type not in ("cuda", "cpu"):
            raise ValueError(f"compile=true compiles the decode step for CUDA (CUDA graphs) or the CPU; the model is "
                             f"on {device.type!r}: use compile=false there")
        if compile and device.type == "cuda" and torch.cuda.get_device_capability(device) < (7, 0):
            raise ValueError(f"compile=true needs a GPU of compute capability 7.0 or newer (Triton); "
                             f"{torch.cuda.get_device_name(device)} is {torch.cuda.get_device_capability(device)}: "
                             f"use compile=false")
        self.model = model
        self.cuda_graphs = compile and device.type == "cuda"  # compiled to replay as CUDA graphs
        self.graph_skipped = False  # set (with a warning) when the compiler could not capture one
        self.caches: dict[int, StaticKVCache] = {}  # by length; kept, so that a graph's buffers stay put
        self._step: Callable[[Transformer, StaticKVCache, torch.Tensor], torch.Tensor] = _decode_step
        if compile:
            # static shapes: a bucket's step is compiled once, never specialised again per position
            self._step = torch.compile(_decode_step, mode="reduce-overhead" if self.cuda_graphs else None,
                                       fullgraph=True, dynamic=False)

    @property
    def compiled(self) -> bool:
        """False when the step does not compile into one graph (and so runs eagerly on the static cache)."""
        return self._step is not _decode_step

    def bucket(self, num_tokens: int) -> int:
        """The cache length that holds num_tokens: the next power of two from MIN_BUCKET, at most max_seq_len."""
        return min(self.model.cfg.max_seq_len, max(self.MIN_BUCKET, 1 << (num_tokens - 1).bit_length()))

    def start(self, max_len: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Begin a sequence of at most max_len tokens: returns forward(tokens (1, T)) -> last logits (vocab,),
        eager for a prompt of several tokens, the compiled step for one."""
        length = self.bucket(max_len)
        if length not in self.caches:
            self.caches[length] = self.model.new_static_cache(1, length)
        cache = self.caches[length]
        cache.reset()

        def forward(tokens: torch.Tensor) -> torch.Tensor:
            if tokens.size(1) > 1:
                return self.model(tokens, cache=cache).logits[0, -1]
            return self._decode(cache, tokens)

        return forward

    def _decode(self, cache: StaticKVCache, token: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return _decode_step(self.model, cache, token)
        # torch._dynamo is imported only when something compiles: it is half of a cold start otherwise
        from torch._dynamo.utils import counters

        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are no longer read
        skips = counters["inductor"]["cudagraph_skips"]
        try:
            # cloned: a CUDA graph overwrites its output at the next replay
            logits = self._step(self.model, cache, token).clone()
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.BackendCompilerFailed) as e:
            # a graph break, or a compiler that failed on this model or machine: still the same tokens, eagerly
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"compile=true: this model's decode step does not compile into one graph ({reason}); "
                          f"decoding eagerly instead", stacklevel=3)
            self._step, self.cuda_graphs = _decode_step, False
            return _decode_step(self.model, cache, token)
        if self.cuda_graphs and not self.graph_skipped and counters["inductor"]["cudagraph_skips"] > skips:
            self.graph_skipped = True
            warnings.warn("compile=true: the compiled decode step runs without a CUDA graph (TORCH_LOGS=cudagraphs "
                          "says why), so it gains little. A known case: dropless MoE layers outside bfloat16 bring "
                          "their expert sizes to the host every token (model.capacity_factor > 0, or bfloat16 "
                          "weights on an sm80+ GPU, keep them on the device)", stacklevel=3)
        return logits


@torch.no_grad()
def generate(model: Union[Transformer, StaticDecoder], prompt_ids: Sequence[int], max_new_tokens: int,
             params: SamplingParams, eos_id: Optional[int] = None,
             generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids (stopping after eos_id), one forward pass per token.

    `model` is a Transformer (eager, through a KVCache) or a StaticDecoder over one (compiled decode step).
    """
    decoder = model if isinstance(model, StaticDecoder) else None
    model = decoder.model if decoder is not None else model
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
    if decoder is not None:
        forward = decoder.start(max_len)
    else:
        cache = model.new_cache(1, max_len)

        def forward(tokens: torch.Tensor) -> torch.Tensor:
            return model(tokens, cache=cache).logits[0, -1]

    seen = torch.zeros(model.cfg.vocab_size, dtype=torch.bool, device=device)
    seen[torch.tensor(list(prompt_ids), device=device)] = True
    logits = forward(torch.tensor([list(prompt_ids)], device=device))
    try:
        for i in range(max_new_tokens):
            token = next_token(logits, params, seen, generator)
            yield token
            if token == eos_id or i == max_new_tokens - 1:
                break
            seen[token] = True
            logits = forward(torch.tensor([[token]], device=device))
    finally:
        model.train(was_training)
