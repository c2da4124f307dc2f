"""The engine: requests in, one batched forward per step, tokens and text out.

    engine = LLMEngine(model, tokenizer, EngineConfig(max_batch=32))
    seq = engine.add_request(prompt_ids, SamplingParams(max_tokens=64), on_delta=print)
    engine.run_until_done()           # offline: steps in this thread until every request finished
    # or: engine.start() runs the steps in a background thread (servers), engine.stop() ends it

Every step: requests that arrived join, cancelled ones leave (their cache freed), the scheduler picks the
work, the model runner runs it in one forward, the sampler picks each finished sequence's next token,
and each request that changed gets a Delta on its callback (from the engine's thread). add_request and
cancel may be called from any thread. The waiting queue is bounded: add_request raises QueueFull when
max_queue requests already wait (a server answers 429).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Optional, Sequence as Seq

import torch

from zer02llm.config import EngineConfig, engine_problems
from zer02llm.inference.engine.block_manager import BlockManager
from zer02llm.inference.engine.model_runner import ModelRunner
from zer02llm.inference.engine.sampler import Sampler
from zer02llm.inference.engine.scheduler import Scheduler, Work
from zer02llm.inference.engine.sequence import Delta, SamplingParams, Sequence, Status
from zer02llm.inference.engine.text import TextState
from zer02llm.model import Transformer

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue holds max_queue requests already: try again later."""


class LLMEngine:
    def __init__(self, model: Transformer, tokenizer=None, config: Optional[EngineConfig] = None,
                 eos_id: Optional[int] = None, compute_dtype: Optional[torch.dtype] = None):
        """compute_dtype: run the forward under autocast to it, the KV cache in it (None: the weights' dtype)."""
        self.config = config = config or EngineConfig()
        if problems := engine_problems(config):
            raise ValueError("; ".join(problems))
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        self.eos_id = eos_id if eos_id is not None else (tokenizer.eos_id if tokenizer is not None else None)
        self.device = model.tok_embeddings.weight.device
        self.max_seq_len = model.cfg.max_seq_len
        num_blocks = max(1, config.kv_budget_tokens // config.block_size)
        self.blocks = BlockManager(num_blocks, config.block_size, config.prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_batch, config.prefill_chunk)
        self.runner = ModelRunner(model, self.blocks, config.max_batch, config.cuda_graphs, config.cuda_graph_max_len,
                                  compute_dtype)
        self.sampler = Sampler(model.cfg.vocab_size, self.device)
        self._inbox: deque[Sequence] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._num_waiting = 0  # scheduler.waiting, as of the last step (read by add_request)
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "steps": 0, "tokens": 0, "peak_running": 0}

    # ------------------------------------------------------------------ requests (any thread)
    def check_request(self, prompt_ids: Seq[int], params: SamplingParams) -> None:
        """ValueError for a request the engine can never run (the server's 400)."""
        if not prompt_ids:
            raise ValueError("the prompt is empty: give at least one token (e.g. the bos token)")
        if len(prompt_ids) >= self.max_seq_len and params.max_tokens > 0:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; model.max_seq_len={self.max_seq_len} "
                             f"leaves no room for new ones")
        longest = min(self.max_seq_len, len(prompt_ids) + params.max_tokens)
        if longest > self.blocks.capacity:
            raise ValueError(f"the request may grow to {longest} tokens (prompt {len(prompt_ids)} + max_tokens "
                             f"{params.max_tokens}); the KV cache holds {self.blocks.capacity} "
                             f"(engine.kv_budget_tokens)")
        bad = [t for t in prompt_ids if not 0 <= t < self.model.cfg.vocab_size]
        if bad:
            raise ValueError(f"token ids out of the vocabulary (0..{self.model.cfg.vocab_size - 1}): {bad[:5]}")

    def add_request(self, prompt_ids: Seq[int], params: Optional[SamplingParams] = None,
                    request_id: Optional[str] = None, on_delta: Optional[Callable[[Delta], None]] = None,
                    score_from: Optional[int] = None, force: bool = False,
                    generator: Optional[torch.Generator] = None) -> Sequence:
        """Queue a request; returns its Sequence (seq.cancel() ends it). QueueFull when max_queue requests wait
        already (unless force: the offline path feeds its own queue). generator: sample from this one instead of
        one of the request's own (seeded from params.seed)."""
        params = params or SamplingParams()
        self.check_request(prompt_ids, params)
        if score_from is not None and not 1 <= score_from <= len(prompt_ids):
            raise ValueError(f"score_from={score_from}: must be in 1..{len(prompt_ids)} (the first scored token)")
        seq = Sequence(prompt_ids, params, request_id, on_delta, self.device, score_from, generator)
        with self._lock:
            if not force and len(self._inbox) + self._num_waiting >= self.config.max_queue:
                raise QueueFull(f"{self.config.max_queue} requests are waiting already (engine.max_queue)")
            self._inbox.append(seq)
            self._wake.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        seq.cancel()

    def queue_full(self) -> bool:
        with self._lock:
            return len(self._inbox) + self._num_waiting >= self.config.max_queue

    def stats(self) -> dict:
        running, waiting = len(self.scheduler.running), self._num_waiting + len(self._inbox)
        return {"max_batch": self.config.max_batch, "running": running, "waiting": waiting, "busy": running,
                "peak_busy": self.counts["peak_running"], **{k: v for k, v in self.counts.items() if k != "peak_running"},
                "kv_blocks": self.blocks.num_blocks, "kv_blocks_free": self.blocks.num_free,
                "kv_block_size": self.blocks.block_size, "prefix_hit_tokens": self.blocks.hit_tokens,
                "preemptions": self.scheduler.preemptions}

    def reset_prefix_cache(self) -> None:
        """Forget the cached prompt prefixes (after the model's weights changed); only while idle."""
        if self.has_work():
            raise RuntimeError("reset_prefix_cache while requests run: wait for them to finish first")
        self.blocks.reset_prefix_cache()

    # ------------------------------------------------------------------ stepping (the engine's thread)
    def has_work(self) -> bool:
        return bool(self._inbox) or self.scheduler.has_work()

    def step(self) -> list[Sequence]:
        """One step: admit, forward, sample, report. Returns the sequences that finished in it."""
        with self._lock:
            arrived = list(self._inbox)
            self._inbox.clear()
        for seq in arrived:
            self.scheduler.add(seq)
        finished = []
        for seq in self.scheduler.drop_cancelled():
            finished.append(self._finish(seq, "cancelled", release=False))
        step = self.scheduler.schedule()
        with self._lock:
            self._num_waiting = len(self.scheduler.waiting)
        self.counts["peak_running"] = max(self.counts["peak_running"], len(self.scheduler.running))
        if not step.work:
            return finished
        for w in step.work:
            self.sampler.start(w.seq)
            if w.seq.text_state is None and self.tokenizer is not None:
                w.seq.text_state = TextState(self.tokenizer, w.seq.params.stop)
        rows = [self._rows(w) for w in step.work]
        try:
            logits = self.runner.run(step.work, rows)
            finished += self._advance(step.work, rows, logits)
        except Exception as e:  # this step's requests fail; the engine goes on with the next ones
            log.exception("a step failed")
            for w in step.work:
                if not w.seq.finished:
                    w.seq.error = e
                    finished.append(self._finish(w.seq, "error"))
        self.counts["steps"] += 1
        self.counts["tokens"] += step.num_tokens
        return finished

    def _rows(self, w: Work) -> list[int]:
        """Token indices of w's sequence whose logits this step needs."""
        seq, end = w.seq, w.start + w.count
        rows = []
        if seq.score_from is not None:
            first = max(w.start, seq.score_from - 1 + len(seq.scores))  # never twice (after a preemption)
            rows = list(range(first, min(end, seq.num_prompt - 1)))
        if w.last and seq.num_output < seq.params.max_tokens and (not rows or rows[-1] != end - 1):
            rows.append(end - 1)
        return rows

    def _advance(self, work: list[Work], rows: list[list[int]], logits: torch.Tensor) -> list[Sequence]:
        finished = []
        to_sample: list[tuple[Sequence, int]] = []
        offset = 0
        for w, r in zip(work, rows):
            seq = w.seq
            seq.num_computed = w.start + w.count
            self.blocks.computed(seq)
            scored = [j for j in r if j < seq.num_prompt - 1 and seq.score_from is not None]
            if scored:
                part = logits[offset:offset + len(scored)]
                targets = torch.tensor([seq.tokens[j + 1] for j in scored], device=part.device)
                logp = torch.log_softmax(part, dim=-1)
                seq.scores += logp.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
                seq.greedy_hits += (part.argmax(dim=-1) == targets).tolist()
            if len(r) > len(scored):
                to_sample.append((seq, offset + len(r) - 1))
            elif w.last and seq.num_output >= seq.params.max_tokens:
                finished.append(self._finish(seq, "length"))
            offset += len(r)
        if to_sample:
            picked = logits[[i for _, i in to_sample]]
            seqs = [s for s, _ in to_sample]
            tokens = self.sampler.sample(picked, seqs)
            want = [s.params.logprobs for s in seqs]
            logprobs = None
            if any(k is not None for k in want):
                logprobs = Sampler.logprobs(picked, tokens, [k or 0 for k in want])
            for i, (seq, token) in enumerate(zip(seqs, tokens)):
                entry = logprobs[i] if logprobs is not None and want[i] is not None else None
                done = self._append(seq, token, entry)
                if done:
                    finished.append(seq)
        return finished

    def _append(self, seq: Sequence, token: int, logprob) -> bool:
        """Add a sampled token, report it, finish the sequence if it ended; True when it did."""
        seq.tokens.append(token)
        self.sampler.record(seq, token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        p = seq.params
        reason = None
        stop_token = (token == self.eos_id and not p.ignore_eos) or token in p.stop_token_ids
        text = ""
        if seq.text_state is not None and not stop_token:
            text, hit = seq.text_state.push(token)
            if hit:
                reason = "stop"
        if stop_token:
            reason = "stop"
        elif reason is None and (seq.num_output >= p.max_tokens or len(seq) >= self.max_seq_len):
            reason = "length"
        if reason is not None and seq.text_state is not None and not seq.text_state.stopped:
            text += seq.text_state.flush()
            if seq.text_state.stopped:  # the held-back tail completed a stop string
                reason = "stop"
        seq.text += text
        if reason is None:
            self._emit(seq, Delta(seq.request_id, [token], text, seq.num_output, [logprob] if logprob else None))
            return False
        self._finish(seq, reason, last=Delta(seq.request_id, [token], text, seq.num_output,
                                             [logprob] if logprob else None))
        return True

    def _finish(self, seq: Sequence, reason: str, release: bool = True, last: Optional[Delta] = None) -> Sequence:
        if release:
            self.scheduler.finish(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        self.counts[{"cancelled": "cancelled", "error": "failed"}.get(reason, "completed")] += 1
        delta = last or Delta(seq.request_id, [], "", seq.num_output)
        delta.finish_reason, delta.error = reason, seq.error
        self._emit(seq, delta)
        return seq

    def _emit(self, seq: Sequence, delta: Delta) -> None:
        if seq.on_delta is None:
            return
        try:
            seq.on_delta(delta)
        except Exception:  # a broken consumer cancels its own request, nobody else's
            log.exception("a request's callback failed; cancelling it")
            seq.cancel()

    # ------------------------------------------------------------------ offline
    def run_until_done(self) -> None:
        """Step in this thread until no request is left (the offline path; not with start())."""
        if self._thread is not None:
            raise RuntimeError("the engine runs in its background thread (start()); add requests and wait instead")
        while self.has_work():
            self.step()

    # ------------------------------------------------------------------ background thread
    def start(self) -> "LLMEngine":
        """Run the steps in a daemon thread from now on (for servers); stop() ends it."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="zer02llm-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        # whatever is left is cancelled, so that nobody waits for it
        with self._lock:
            left = list(self._inbox) + list(self.scheduler.waiting) + list(self.scheduler.running)
            self._inbox.clear()
        for seq in left:
            seq.cancel()
        self.scheduler.drop_cancelled()
        for seq in left:
            if seq.finish_reason is None:
                self._finish(seq, "cancelled", release=False)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._inbox and not self.scheduler.has_work():
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:  # a bug in the engine itself: logged, and the loop goes on
                log.exception("engine step failed")
                time.sleep(0.01)
