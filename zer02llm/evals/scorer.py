"""What task evaluation asks of a model: log-likelihoods of continuations and greedy replies.

`LanguageModel` is the whole interface the tasks, the trainer's eval steps and the lm-evaluation-harness
model use; `ModelScorer` implements it with a Transformer's forward (log-likelihoods) and the batched
engine (greedy replies). Both calls take every request of a task at once; make_scorer() is the one place
that picks the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F

from zer02llm.evals.generation import greedy_batched, greedy_one_by_one
from zer02llm.model import Transformer
from zer02llm.tokenizer import Tokenizer

@dataclass
class Score:
    """A continuation's log-likelihood given its context."""

    logprob: float  # sum over its tokens of log p(token | everything before it)
    greedy: bool  # whether each of its tokens was the model's most likely next token
    num_tokens: int


# (context ids, [continuation ids, ...]): the continuations scored after the same context
LoglikelihoodRequest = tuple[list[int], list[list[int]]]


class LanguageModel(Protocol):
    max_len: int  # the longest sequence (context + continuation) the model takes

    def loglikelihoods(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[Score]]:
        """Each request's continuations scored after its context (a context too long is cut from the left)."""
        ...

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int],
                 stop: Optional[Callable[[list[int]], bool]] = None) -> list[list[int]]:
        """Greedy new tokens for each prompt: at most max_new_tokens, ending at (and holding) a stop id, or
        cut where `stop(new ids so far)` first says so."""
        ...


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context ids (after bos, as our documents begin) and continuation ids, split as lm-evaluation-harness
    splits them: the whole text is tokenized at once and the context's own tokens cut off its front, so the
    continuation's tokens are those of the text the model would have read. Trailing spaces of the context
    move to the continuation (" Paris", not "Paris" after a dangling space)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = [tokenizer.bos_id] + tokenizer.encode(context)
    whole = [tokenizer.bos_id] + tokenizer.encode(context + continuation)
    return context_ids, whole[len(context_ids):]


@dataclass
class Row:
    """One request packed into a row: its context once, then each continuation but its last token (nothing
    follows that one), each continuation seeing the context and its own earlier tokens only."""

    tokens: list[int]
    segments: list[int]  # 0: the context; j + 1: continuation j
    positions: list[int]  # continuation j restarts where the context ends: each reads as if it alone followed
    predict_at: list[list[int]]  # per continuation, the row index whose output predicts each of its tokens


def pack(context: list[int], continuations: list[list[int]], max_len: int) -> Row:
    if not context or any(not c for c in continuations):
        raise ValueError("a context and every continuation need at least one token (the context: bos)")
    longest = max(len(c) for c in continuations)
    if longest > max_len:  # the model reads the context's last token and all but the last of these
        raise ValueError(f"a continuation of {longest} tokens is longer than the model's {max_len}")
    context = context[-(max_len - longest + 1):]  # the last context token predicts the first one
    tokens, segments, positions = list(context), [0] * len(context), list(range(len(context)))
    predict_at = []
    for j, continuation in enumerate(continuations):
        start = len(tokens)
        tokens += continuation[:-1]
        segments += [j + 1] * (len(continuation) - 1)
        positions += range(len(context), len(context) + len(continuation) - 1)
        predict_at.append([len(context) - 1] + list(range(start, start + len(continuation) - 1)))
    return Row(tokens, segments, positions, predict_at)


class ModelScorer:
    """LanguageModel over a Transformer. Requests are packed a row each (the context's keys and values computed
    once, shared by all of its continuations) and rows batched into one forward, with an attention mask that
    keeps the continuations of a row apart; only the outputs that predict a continuation token go through the
    LM head. Greedy replies: all prompts at once through the batched engine (evals/generation.py)."""

    def __init__(self, model: Transformer, max_len: Optional[int] = None, batch_tokens: int = 8192,
                 max_batch: int = 64, batched_replies: bool = True):
        self.model = model.eval()
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.device = model.tok_embeddings.weight.device
        self.batch_tokens = batch_tokens  # padded tokens per forward (rows x longest row)
        self.max_batch = max_batch  # replies decoded together
        self.batched_replies = batched_replies  # False: one prompt at a time (the batch-1 path, for comparison)
        self.sharded = hasattr(model, "unshard") and hasattr(model, "reshard")  # FSDP2

    @torch.no_grad()
    def loglikelihoods(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[Score]]:
        # an FSDP2-sharded model (train.eval_tasks with distributed.strategy=fsdp): model.hidden_states() bypasses
        # the root's forward, whose hook would gather the root's own parameters (embeddings, final norm, LM head);
        # each block's hook still gathers the block's
        if self.sharded:
            self.model.unshard()
        try:
            return self._loglikelihoods(requests)
        finally:
            if self.sharded:
                self.model.reshard()

    def _loglikelihoods(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[Score]]:
        rows = [pack(context, continuations, self.max_len) for context, continuations in requests]
        results: list[list[Score]] = [[] for _ in rows]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].tokens))  # alike lengths: little padding
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) + 1) * len(rows[i].tokens) > self.batch_tokens:
                self._score_batch([rows[b] for b in batch], [requests[b][1] for b in batch], results, batch)
                batch = []
            batch.append(i)
        if batch:
            self._score_batch([rows[b] for b in batch], [requests[b][1] for b in batch], results, batch)
        return results

    def _score_batch(self, rows: list[Row], continuations: list[list[list[int]]], results: list[list[Score]],
                     indices: list[int]) -> None:
        model, device = self.model, self.device
        width = max(len(r.tokens) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        segments = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            n = len(r.tokens)
            tokens[b, :n], segments[b, :n], positions[b, :n] = (torch.tensor(r.tokens), torch.tensor(r.segments),
                                                                 torch.tensor(r.positions))
        tokens, segments, positions = tokens.to(device), segments.to(device), positions.to(device)
        # a query sees earlier keys of the context and of its own continuation; padding sees only itself
        earlier = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        seg_q, seg_k = segments[:, :, None], segments[:, None, :]
        mask = earlier & ((seg_k == 0) | (seg_k == seg_q)) & (seg_q >= 0)
        mask |= torch.eye(width, dtype=torch.bool, device=device)
        hidden = model.hidden_states(tokens, positions, mask[:, None])  # (B, width, dim), normed
        # the outputs that predict a continuation token, and the tokens they predict
        where_b, where_t, targets = [], [], []
        for b, (r, conts) in enumerate(zip(rows, continuations)):
            for at, c in zip(r.predict_at, conts):
                where_b += [b] * len(at)
                where_t += at
                targets += c
        logits = model.lm_head(hidden[torch.tensor(where_b, device=device), torch.tensor(where_t, device=device)])
        logprobs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        target_ids = torch.tensor(targets, device=device)
        picked = logprobs.gather(1, target_ids[:, None])[:, 0].double().cpu().tolist()
        hits = (logprobs.argmax(-1) == target_ids).cpu().tolist()
        k = 0
        for b, conts in enumerate(continuations):
            scores = []
            for c in conts:
                scores.append(Score(sum(picked[k:k + len(c)]), all(hits[k:k + len(c)]), len(c)))
                k += len(c)
            results[indices[b]] = scores

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int],
                 stop: Optional[Callable[[list[int]], bool]] = None) -> list[list[int]]:
        if max_new_tokens >= self.max_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                             f"{self.max_len} tokens")
        keep = self.max_len - max_new_tokens  # a prompt too long is cut from the left
        prompts = [list(p[-keep:]) for p in prompts]
        if self.sharded or not self.batched_replies:  # sharded: the engine's forward skips the blocks' FSDP hooks
            return greedy_one_by_one(self.model, prompts, max_new_tokens, stop_ids, stop)
        return greedy_batched(self.model, prompts, max_new_tokens, stop_ids, stop, self.max_batch)


def make_scorer(model: Transformer, max_len: Optional[int] = None) -> LanguageModel:
    """The LanguageModel that evaluation runs on."""
    return ModelScorer(model, max_len)
