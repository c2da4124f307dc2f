"""Rollouts: group_size sampled completions of each prompt from the current weights, through the engine.

GRPO generates only here. `Rollouts` keeps one LLMEngine (zer02llm/inference/engine/) over the model being
trained for the whole run, and gives it all of a rollout's samples at once: continuous batching (a
completion that ended leaves the batch; no finished rows ride along) and each prompt's keys and values
computed once and shared by its group through the prefix cache (the prompt's whole blocks; its last 1 to
block_size tokens each sample computes itself).

The weights change between rollouts, so:
- the prefix cache is emptied at the start of every rollout: no keys and values of older weights are read;
- the engine reads the model's parameters where they are (no copy), and a CUDA graph of its decoding step
  casts and reads them at every replay: the optimizer's in-place updates are what the next rollout samples
  from. (A parameter replaced by a new tensor is not seen by a captured graph: make new Rollouts then.)

Sampling: sample g of prompt p draws from its own generator, seeded seeds[p] + g (as LLM.generate's n
samples), through the engine's sampler, the rule of batch-1 generation. So what a prompt draws does not
depend on which prompts share the rollout, on the rank, or on the order. Temperature 0 is greedy. A
completion holds its new tokens, its eos last when it ended within max_new_tokens (and model.max_seq_len).

Precision: under the trainer's autocast (hardware.dtype bfloat16 or float16 over float32 weights) the
engine computes in that dtype and keeps its KV cache in it, as the training forward computes; without an
autocast, in the weights' dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Optional, Sequence

import torch

from zer02llm.config import EngineConfig
from zer02llm.inference.engine.engine import LLMEngine
from zer02llm.inference.engine.sequence import SamplingParams
from zer02llm.model import Transformer

Autocast = Callable[[], contextlib.AbstractContextManager]
BLOCK_SIZE = 16  # the engine's default: a prompt's whole 16-token blocks are shared by its group


def prompt_seed(*parts: object) -> int:
    """A 63-bit seed from parts (run seed, rollout number, prompt index): independent streams per prompt."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


class Rollouts:
    """An engine over `model`, kept across rollouts (built on first use, rebuilt larger when a rollout
    needs more sequences, cache or context than it holds)."""

    def __init__(self, model: Transformer, autocast: Autocast = contextlib.nullcontext,
                 block_size: int = BLOCK_SIZE, cuda_graphs: bool = True):
        self.model = model
        # the trainer's autocast dtype (None without one): the engine computes in it
        self.compute_dtype: Optional[torch.dtype] = getattr(autocast(), "fast_dtype", None)
        self.block_size, self.cuda_graphs = block_size, cuda_graphs
        self.engine: Optional[LLMEngine] = None
        self.engines_built = 0

    def _engine(self, num_seqs: int, num_blocks: int, longest: int, prompt_tokens: int) -> LLMEngine:
        """The kept engine, its prefix cache emptied; a new one when it is too small for this rollout."""
        engine = self.engine
        graphs = engine is not None and engine.runner.graphs is not None
        if (engine is not None and engine.config.max_batch >= num_seqs and engine.blocks.num_blocks >= num_blocks
                and (not graphs or engine.config.cuda_graph_max_len >= longest)):
            engine.reset_prefix_cache()
            return engine
        old = engine.config if engine is not None else None
        # room to spare (twice the cache, CUDA graphs over a power-of-two context): rebuilding, which on a GPU
        # captures the graphs again, stays rare when later prompts run a little longer
        blocks = 2 * max(num_blocks, engine.blocks.num_blocks if engine is not None else 0)
        max_batch = max(num_seqs, old.max_batch if old else 0)
        width = min(1 << (max(longest, old.cuda_graph_max_len if old else 1) - 1).bit_length(),
                    self.model.cfg.max_seq_len)
        # every sequence at once (no one waits for a place, nothing is preempted), every prompt in one step
        config = EngineConfig(max_batch=max_batch, kv_budget_tokens=blocks * self.block_size,
                              block_size=self.block_size, prefill_chunk=max(512, prompt_tokens),
                              max_queue=max_batch, prefix_caching=True, cuda_graphs=self.cuda_graphs,
                              cuda_graph_max_len=width)
        self.engine = None  # the old cache's memory goes before the new one's is taken
        was_training = self.model.training
        self.engine = LLMEngine(self.model, config=config, compute_dtype=self.compute_dtype)
        self.model.train(was_training)
        self.engines_built += 1
        return self.engine

    @torch.no_grad()
    def sample(self, prompts: Sequence[Sequence[int]], group_size: int, max_new_tokens: int, temperature: float,
               eos_id: Optional[int], seeds: Sequence[int]) -> list[list[int]]:
        """group_size completions of each prompt, prompt-major: result[p * group_size + g]."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per prompt")
        if not prompts:
            return []
        max_len = self.model.cfg.max_seq_len
        for p, ids in enumerate(prompts):
            if not ids:
                raise ValueError(f"prompt {p} is empty: give at least one token")
            if len(ids) >= max_len:
                raise ValueError(f"prompt {p} has {len(ids)} tokens; model.max_seq_len={max_len} leaves no room "
                                 f"for new ones")
        lengths = [min(len(ids) + max_new_tokens, max_len) for ids in prompts]
        num_blocks = group_size * sum(-(-n // self.block_size) for n in lengths) + 1  # + the admission reserve
        engine = self._engine(len(prompts) * group_size, num_blocks, max(lengths, default=1),
                              group_size * sum(len(ids) for ids in prompts))
        stop = [eos_id] if eos_id is not None else []

        def params(p: int, g: int) -> SamplingParams:
            return SamplingParams(max_tokens=max_new_tokens, temperature=temperature, stop_token_ids=stop,
                                  seed=None if temperature == 0 else seeds[p] + g)

        was_training = self.model.training
        self.model.eval()
        try:
            seqs = [engine.add_request(ids, params(p, g), force=True)
                    for p, ids in enumerate(prompts) for g in range(group_size)]
            engine.run_until_done()
        except BaseException:
            self.engine = None  # requests may be left inside: the next rollout starts a clean engine
            raise
        finally:
            self.model.train(was_training)
        for n, seq in enumerate(seqs):
            if seq.finish_reason == "error":
                raise RuntimeError(f"sampling completion {n % group_size} of prompt {n // group_size} failed: "
                                   f"{seq.error}") from seq.error
        return [seq.output_ids for seq in seqs]


def rollout(model: Transformer, prompts: Sequence[Sequence[int]], group_size: int, max_new_tokens: int,
            temperature: float, eos_id: Optional[int], seeds: Sequence[int],
            autocast: Autocast = contextlib.nullcontext) -> list[list[int]]:
    """group_size completions of each prompt, prompt-major (result[p * group_size + g]), through an engine
    of its own; a training loop keeps one `Rollouts` instead, whose engine lives across rollouts."""
    return Rollouts(model, autocast).sample(prompts, group_size, max_new_tokens, temperature, eos_id, seeds)


__all__ = ["Rollouts", "prompt_seed", "rollout"]
