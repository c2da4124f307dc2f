"""The Python API: `from zer02llm import LLM`.

    llm = LLM("outputs/<run>", max_batch=64, kv_budget_tokens=65536)      # engine knobs: EngineConfig
    for out in llm.generate(prompts, max_tokens=64, temperature=0):          # or params=SamplingParams(...)
        print(out.outputs[0].text, out.outputs[0].finish_reason)
    for index, delta in llm.stream(prompts, max_tokens=64):                   # pieces as they come
        ...
    scores = llm.score(contexts, continuations)   # log p(continuation | context) summed, and is_greedy

A prompt is a string (a document: bos + its tokens, as /v1/completions and eval's continuation mode) or
a list of token ids, used as given. Everything runs in the calling thread through the engine's offline
path; LLM.engine is the LLMEngine underneath.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence as Seq, Union

from zer02llm.config import EngineConfig
from zer02llm.inference.engine.engine import LLMEngine
from zer02llm.inference.engine.sequence import Delta, SamplingParams, Sequence, TokenLogprob

Prompt = Union[str, Seq[int]]
_ENGINE_KNOBS = {f.name for f in dataclasses.fields(EngineConfig)}
_SAMPLING_KNOBS = {f.name for f in dataclasses.fields(SamplingParams)}


@dataclass
class CompletionOutput:
    index: int  # which of the prompt's n samples
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (eos, a stop token or string) or "length" (max_tokens, model.max_seq_len)
    logprobs: Optional[list[TokenLogprob]] = None


@dataclass
class RequestOutput:
    prompt: Optional[str]
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens the prefix cache held (first sample)


@dataclass
class Score:
    logprob: float  # sum of log p(token | everything before) over the continuation's tokens
    is_greedy: bool  # whether every continuation token was the most likely one
    num_tokens: int


class LLM:
    def __init__(self, checkpoint: str, *, device: str = "auto", adapter: Optional[str] = None,
                 tokenizer_path: Optional[str] = None, threads: Optional[int] = None,
                 engine: Optional[EngineConfig] = None, **engine_knobs):
        """Load a checkpoint (or run directory) for batched generation; engine_knobs are EngineConfig's fields
        (max_batch, kv_budget_tokens, block_size, prefill_chunk, max_queue, prefix_caching, cuda_graphs)."""
        from zer02llm.inference.loading import load_for_inference

        config = _engine_config(engine, engine_knobs)
        self.loaded = load_for_inference(checkpoint, device, adapter, tokenizer_path, threads=threads)
        self.tokenizer = self.loaded.tokenizer
        self.engine = LLMEngine(self.loaded.model, self.tokenizer, config)

    @classmethod
    def from_model(cls, model, tokenizer=None, engine: Optional[EngineConfig] = None, eos_id: Optional[int] = None,
                   **engine_knobs) -> "LLM":
        """Over a model already in memory (tests, a training loop); prompts must then be token ids unless a
        tokenizer is given."""
        llm = cls.__new__(cls)
        llm.loaded, llm.tokenizer = None, tokenizer
        llm.engine = LLMEngine(model, tokenizer, _engine_config(engine, engine_knobs), eos_id=eos_id)
        return llm

    # ------------------------------------------------------------------ helpers
    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this LLM has no tokenizer: give prompts as lists of token ids")
            return [self.tokenizer.bos_id] + self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    @staticmethod
    def _params(params, sampling_knobs: dict, count: int) -> list[SamplingParams]:
        unknown = set(sampling_knobs) - _SAMPLING_KNOBS
        if unknown:
            raise TypeError(f"unknown sampling settings {sorted(unknown)}; SamplingParams has {sorted(_SAMPLING_KNOBS)}")
        if params is None:
            params = SamplingParams(**sampling_knobs)
        elif sampling_knobs:
            raise TypeError("give either params= or sampling settings as keywords, not both")
        if isinstance(params, SamplingParams):
            return [params] * count
        params = list(params)
        if len(params) != count:
            raise ValueError(f"{len(params)} SamplingParams for {count} prompts")
        return params

    def _submit(self, prompts: Seq[Prompt], params: list[SamplingParams], on_delta=None):
        """(prompt index, sample index, ids, params) of every sample, checked before any runs."""
        engine = self.engine
        requests = []  # (prompt index, sample index, ids, params)
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            ids = self.encode(prompt)
            engine.check_request(ids, p)
            for k in range(p.n):
                sample = p if p.n == 1 else dataclasses.replace(
                    p, n=1, seed=None if p.seed is None else p.seed + k)
                requests.append((i, k, ids, sample))
        return requests

    def _run(self, requests, on_delta=None) -> dict[tuple[int, int], Sequence]:
        """Feed the requests to the engine (no more than max_queue waiting at once) and step until all finished."""
        engine = self.engine
        seqs: dict[tuple[int, int], Sequence] = {}
        pending = list(reversed(requests))
        while pending or engine.has_work():
            while pending and not engine.queue_full():
                i, k, ids, p = pending.pop()
                callback = (lambda d, i=i, k=k: on_delta(i, k, d)) if on_delta is not None else None
                seqs[(i, k)] = engine.add_request(ids, p, on_delta=callback, force=True)
            engine.step()
        return seqs

    # ------------------------------------------------------------------ API
    def generate(self, prompts: Union[Prompt, Seq[Prompt]], params: Union[SamplingParams, Seq[SamplingParams], None] = None,
                 **sampling_knobs) -> list[RequestOutput]:
        """One RequestOutput per prompt (with params.n CompletionOutputs), in the prompts' order."""
        prompts = _as_list(prompts)
        plist = self._params(params, sampling_knobs, len(prompts))
        requests = self._submit(prompts, plist)
        seqs = self._run(requests)
        outputs = []
        for i, (prompt, p) in enumerate(zip(prompts, plist)):
            first = seqs[(i, 0)]
            out = RequestOutput(prompt if isinstance(prompt, str) else None, first.tokens[:first.num_prompt],
                                num_cached_tokens=first.num_cached_prompt)
            for k in range(p.n):
                seq = seqs[(i, k)]
                if seq.finish_reason == "error":
                    raise RuntimeError(f"generating for prompt {i} failed: {seq.error}") from seq.error
                out.outputs.append(CompletionOutput(k, seq.text, seq.output_ids, seq.finish_reason,
                                                    seq.logprobs if p.logprobs is not None else None))
            outputs.append(out)
        return outputs

    def stream(self, prompts: Union[Prompt, Seq[Prompt]], params: Union[SamplingParams, Seq[SamplingParams], None] = None,
               **sampling_knobs) -> Iterator[tuple[int, Delta]]:
        """(prompt index, Delta) as each step produces them (Delta.finished on each request's last one);
        with n > 1, Delta.request_id tells the samples apart ("<prompt>-<sample>")."""
        prompts = _as_list(prompts)
        plist = self._params(params, sampling_knobs, len(prompts))
        requests = self._submit(prompts, plist)
        engine = self.engine
        ready: list[tuple[int, Delta]] = []
        pending = list(reversed(requests))
        seqs = []

        def collect(i: int, k: int, delta: Delta) -> None:
            delta.request_id = f"{i}-{k}"
            ready.append((i, delta))

        try:
            while pending or engine.has_work():
                while pending and not engine.queue_full():
                    i, k, ids, p = pending.pop()
                    seqs.append(engine.add_request(ids, p, on_delta=lambda d, i=i, k=k: collect(i, k, d), force=True))
                engine.step()
                yield from ready
                ready.clear()
        finally:  # the consumer stopped early: nothing keeps running
            if engine.has_work():
                for seq in seqs:
                    seq.cancel()
                while engine.has_work():
                    engine.step()

    def score(self, contexts: Seq[Prompt], continuations: Seq[Prompt]) -> list[Score]:
        """log p(continuation | context), summed over its tokens, and whether greedy decoding would produce it;
        one forward per pair, batched, the contexts' shared prefixes computed once (prefix cache). A string
        context is a document (bos + its tokens); a string continuation is its tokens alone."""
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts for {len(continuations)} continuations")
        requests = []
        for i, (context, continuation) in enumerate(zip(contexts, continuations)):
            ctx = self.encode(context)
            cont = (self.tokenizer.encode(continuation) if isinstance(continuation, str) and self.tokenizer
                    else self.encode(continuation))
            if not ctx or not cont:
                raise ValueError(f"pair {i}: the context and the continuation must each have at least one token")
            params = SamplingParams(max_tokens=0, temperature=0)
            self.engine.check_request(ctx + cont, params)
            requests.append((i, len(ctx), ctx + cont, params))
        engine, seqs = self.engine, {}
        pending = list(reversed(requests))
        while pending or engine.has_work():
            while pending and not engine.queue_full():
                i, start, ids, p = pending.pop()
                seqs[i] = engine.add_request(ids, p, score_from=start, force=True)
            engine.step()
        out = []
        for i in range(len(requests)):
            seq = seqs[i]
            if seq.finish_reason == "error":
                raise RuntimeError(f"scoring pair {i} failed: {seq.error}") from seq.error
            out.append(Score(float(sum(seq.scores)), all(seq.greedy_hits), len(seq.scores)))
        return out


def _engine_config(engine: Optional[EngineConfig], knobs: dict) -> EngineConfig:
    unknown = set(knobs) - _ENGINE_KNOBS
    if unknown:
        raise TypeError(f"unknown engine settings {sorted(unknown)}; EngineConfig has {sorted(_ENGINE_KNOBS)}")
    return dataclasses.replace(engine or EngineConfig(), **knobs)


def _as_list(prompts) -> list:
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        return [prompts]
    return list(prompts)
