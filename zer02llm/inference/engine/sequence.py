"""A request as the engine keeps it: its tokens, how to sample them, where its output goes.

A Sequence holds `tokens` (the prompt, then each sampled token) and `num_computed`, how many of them have
their keys and values in the cache. Every step the scheduler gives a running sequence some of its
uncomputed tokens (a prompt chunk, or the one token sampled last); once all are computed, the last logits
give the next token. Decoding, chunked prefill and recomputation after preemption are all this one rule.
"""

from __future__ import annotations

import enum
import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence as Seq

import torch


@dataclass
class SamplingParams:
    """How one request samples (OpenAI's names and defaults where OpenAI has the setting)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # 1: off
    top_k: int = 0  # 0: off
    # OpenAI's: subtract presence_penalty from the logit of every token already in the output, and
    # frequency_penalty times its count there (0: off; -2..2)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # CTRL's: divide positive logits (multiply negative ones) of tokens in the prompt or output (1: off)
    repetition_penalty: float = 1.0
    # a generator of the request's own: the same seed samples the same tokens whatever else runs
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)  # stop strings: the text ends where one begins
    stop_token_ids: list[int] = field(default_factory=list)  # besides eos (kept out of the text)
    ignore_eos: bool = False
    # None: no logprobs; k >= 0: the sampled token's log-probability and the k most likely (OpenAI's
    # `logprobs=true, top_logprobs=k`), from the model's distribution before any penalty or temperature
    logprobs: Optional[int] = None
    n: int = 1  # LLM.generate: samples per prompt (seeds seed, seed+1, ... when seeded)

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 0:
            problems.append(f"max_tokens={self.max_tokens}: must be >= 0 (0 only for scoring)")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature}: must be >= 0 (0 is greedy)")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k}: must be >= 0 (0 turns it off)")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty}: must be > 0 (1 turns it off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                problems.append(f"{name}={getattr(self, name)}: must be in [-2, 2]")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            problems.append(f"logprobs={self.logprobs}: must be in 0..20 (top tokens besides the sampled one)")
        if self.n < 1:
            problems.append(f"n={self.n}: must be >= 1")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            problems.append(f"stop={self.stop!r}: stop strings must be non-empty")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely (token id, logprob), most likely first


@dataclass
class Delta:
    """What a streaming callback gets after each step that changed a request (always on the engine's thread)."""

    request_id: str
    token_ids: list[int]  # sampled this step (usually one)
    text: str  # decoded text now safe to send (whole characters, stop strings held back / cut)
    num_tokens: int  # sampled so far in all
    logprobs: Optional[list[TokenLogprob]] = None
    finish_reason: Optional[str] = None  # set on the last delta: "stop", "length", "cancelled" or "error"
    error: Optional[BaseException] = None  # with finish_reason "error"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


class Sequence:
    """One request inside the engine (created by LLMEngine.add_request)."""

    def __init__(self, prompt_ids: Seq[int], params: SamplingParams, request_id: Optional[str] = None,
                 on_delta: Optional[Callable[[Delta], None]] = None, device: torch.device | str = "cpu",
                 score_from: Optional[int] = None, generator: Optional[torch.Generator] = None):
        if not prompt_ids:
            raise ValueError("the prompt is empty: give at least one token (e.g. the bos token)")
        self.seq_id = next(_ids)
        self.request_id = request_id if request_id is not None else f"seq-{self.seq_id}"
        self.tokens: list[int] = list(prompt_ids)
        self.num_prompt = len(self.tokens)
        self.params = params
        self.on_delta = on_delta
        self.status = Status.WAITING
        self.num_computed = 0  # tokens whose keys and values are in the cache
        self.block_table: list[int] = []  # cache blocks, in order
        self.num_cached_prompt = 0  # prompt tokens found in the prefix cache at admission (for the stats)
        self.finish_reason: Optional[str] = None
        self.error: Optional[BaseException] = None
        self._cancel = threading.Event()
        self.generator: Optional[torch.Generator] = generator  # given: shared with the caller (eval's session)
        if not params.greedy and generator is None:
            self.generator = torch.Generator(device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed % 2 ** 64)
            else:
                self.generator.seed()
        # scoring: log-probabilities of prompt tokens from index score_from on (no sampling then)
        self.score_from = score_from
        self.scores: list[float] = []  # logprob of tokens[score_from:] given what precedes
        self.greedy_hits: list[bool] = []  # whether each was the most likely token
        # penalties' state: counts of each output token (frequency/presence), seen in prompt or output (CTRL)
        self.output_counts: Optional[torch.Tensor] = None
        self.seen: Optional[torch.Tensor] = None
        self.logprobs: list[TokenLogprob] = []
        self.text_state = None  # the engine's incremental detokenizer and stop matcher
        self.text = ""

    # --- cancellation (any thread)
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # --- lengths
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.num_prompt:]

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id}, {self.status.value}, {self.num_prompt}+{self.num_output} tokens, "
                f"{self.num_computed} computed, {len(self.block_table)} blocks)")
