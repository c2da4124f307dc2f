"""What task evaluation asks of a model: log-likelihoods of continuations and greedy replies.

`LanguageModel` is the whole interface the tasks, the trainer's eval steps and the lm-evaluation-harness
model use; `ModelScorer` implements it today with a Transformer's forward and sampling.generate. Both
calls take every request of a task at once, so a batched engine can be slotted in behind the same
protocol (make_scorer() is the one place that picks the implementation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F

from zer02llm.inference.sampling import SamplingParams, generate
from zer02llm.model import Transformer
from zer02llm.tokenizer import Tokenizer

GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)


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


class ModelScorer:
    """LanguageModel over a Transformer: one request at a time, its context's keys and values computed once
    and shared by all of its continuations (run as one batch)."""

    def __init__(self, model: Transformer, max_len: Optional[int] = None):
        self.model = model.eval()
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.device = model.tok_embeddings.weight.device

    @torch.no_grad()
    def loglikelihoods(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[Score]]:
        return [self.score(context, continuations) for context, continuations in requests]

    def score(self, context: list[int], continuations: list[list[int]]) -> list[Score]:
        if not context or any(not c for c in continuations):
            raise ValueError("a context and every continuation need at least one token (the context: bos)")
        longest = max(len(c) for c in continuations)
        if longest > self.max_len:  # the model reads the context's last token and all but the last of these
            raise ValueError(f"a continuation of {longest} tokens is longer than the model's {self.max_len}")
        context = context[-(self.max_len - longest + 1):]  # the last context token predicts the first one
        model, n = self.model, len(continuations)
        tokens = torch.tensor([context], device=self.device)
        cache = model.new_cache(1, len(context) + longest - 1)
        first = F.log_softmax(model(tokens, cache=cache).logits[0, -1], dim=-1)  # (vocab,)
        rest = None
        if longest > 1:
            # the context's keys and values, once, for every continuation: a batch of n from here on
            shared = model.new_cache(n, len(context) + longest - 1)
            shared.keys[:, :, :, :len(context)] = cache.keys[:, :, :, :len(context)]
            shared.values[:, :, :, :len(context)] = cache.values[:, :, :, :len(context)]
            shared.length = len(context)
            # the continuations' tokens but their last (nothing follows it), right-padded: padding comes after
            # every token that is scored, so causal attention keeps it out of their logits
            inputs = torch.zeros(n, longest - 1, dtype=torch.long, device=self.device)
            for i, c in enumerate(continuations):
                inputs[i, :len(c) - 1] = torch.tensor(c[:-1], device=self.device)
            rest = F.log_softmax(model(inputs, cache=shared).logits, dim=-1)  # (n, longest - 1, vocab)
        scores = []
        for i, c in enumerate(continuations):
            logprobs = [first] + ([rest[i, j] for j in range(len(c) - 1)] if rest is not None else [])
            targets = torch.tensor(c, device=self.device)
            stacked = torch.stack(logprobs)  # (len(c), vocab)
            picked = stacked.gather(1, targets[:, None])[:, 0]
            scores.append(Score(float(picked.double().sum()), bool((stacked.argmax(-1) == targets).all()), len(c)))
        return scores

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int],
                 stop: Optional[Callable[[list[int]], bool]] = None) -> list[list[int]]:
        replies = []
        for prompt in prompts:
            prompt = prompt[-(self.max_len - max_new_tokens):] if len(prompt) + max_new_tokens > self.max_len \
                else prompt
            new: list[int] = []
            stream = generate(self.model, prompt, max_new_tokens, GREEDY, None)
            for token in stream:
                new.append(token)
                if token in stop_ids or (stop is not None and stop(new)):
                    stream.close()
                    break
            replies.append(new)
        return replies


def make_scorer(model: Transformer, max_len: Optional[int] = None) -> LanguageModel:
    """The LanguageModel that evaluation runs on (the place to hand over to a batched engine)."""
    return ModelScorer(model, max_len)
