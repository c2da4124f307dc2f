"""Greedy replies for task evaluation: all of a task's prompts through the batched engine at once.

`greedy_batched` is what ModelScorer.generate runs: every prompt becomes a request of the engine
(zer02llm/inference/engine/), which decodes them together (continuous batching, prompts sharing a
prefix computed once) and gives each the tokens greedy decoding of that prompt alone would give.
`greedy_one_by_one` is the batch-1 path (sampling.generate through a KVCache), kept for a model the
engine cannot run (an FSDP-sharded one: the engine's forward goes around the blocks' gathering hooks)
and as the reference the batched path is tested and timed against.

Both stop a reply at (and keep) a stop id, at max_new_tokens, or where `stop(new ids so far)` first
says so (e.g. a task's stop string appeared in the decoded text).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from zer02llm.inference.engine.llm import LLM
from zer02llm.inference.engine.sequence import Delta, SamplingParams as EngineParams
from zer02llm.inference.sampling import SamplingParams, generate
from zer02llm.model import Transformer

GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
StopCheck = Callable[[list[int]], bool]


def greedy_one_by_one(model: Transformer, prompts: Sequence[list[int]], max_new_tokens: int,
                      stop_ids: Sequence[int], stop: Optional[StopCheck] = None) -> list[list[int]]:
    """Each prompt decoded alone, one forward per token (prompts must leave room for max_new_tokens)."""
    replies = []
    for prompt in prompts:
        new: list[int] = []
        stream = generate(model, prompt, max_new_tokens, GREEDY, None)
        for token in stream:
            new.append(token)
            if token in stop_ids or (stop is not None and stop(new)):
                stream.close()
                break
        replies.append(new)
    return replies


def greedy_batched(model: Transformer, prompts: Sequence[list[int]], max_new_tokens: int,
                   stop_ids: Sequence[int], stop: Optional[StopCheck] = None, max_batch: int = 64,
                   kv_budget_tokens: int = 32768) -> list[list[int]]:
    """Every prompt decoded together through the engine: the tokens greedy_one_by_one gives.

    max_batch: replies decoded in one forward; kv_budget_tokens: the engine's KV cache, at most (it is
    sized down to what these prompts can fill, and up to the longest one's prompt + max_new_tokens)."""
    if not prompts:
        return []
    block = 16
    blocks = [-(-(len(p) + max_new_tokens) // block) for p in prompts]  # each reply's cache at its longest
    # one block more than the longest needs: the engine admits a request beside running ones only with a block to spare
    num_blocks = max(min(kv_budget_tokens // block, sum(blocks) + 1, max_batch * max(blocks) + 1), max(blocks) + 1)
    budget = num_blocks * block
    # no tokenizer and no eos of the engine's own: the stop ids are the only stop tokens, and no text is decoded
    llm = LLM.from_model(model, None, eos_id=None, max_batch=max_batch, kv_budget_tokens=budget, block_size=block,
                         prefill_chunk=max(512, max(len(p) for p in prompts)), cuda_graphs=False)
    params = EngineParams(max_tokens=max_new_tokens, temperature=0.0, stop_token_ids=list(stop_ids))
    engine = llm.engine
    replies: list[list[int]] = [[] for _ in prompts]
    seqs = []

    def told_to_stop(i: int, delta: Delta) -> None:
        replies[i] += delta.token_ids
        if not delta.finished and delta.token_ids and stop(replies[i]):
            seqs[i].cancel()  # before the next step runs it: the reply ends with this token

    for i, prompt in enumerate(prompts):
        on_delta = (lambda delta, i=i: told_to_stop(i, delta)) if stop is not None else None
        seqs.append(engine.add_request(list(prompt), params, on_delta=on_delta, force=True))
    engine.run_until_done()
    for i, seq in enumerate(seqs):
        if seq.finish_reason == "error":
            raise RuntimeError(f"generating for prompt {i} failed: {seq.error}") from seq.error
    return [seq.output_ids for seq in seqs]
