"""Choosing each sequence's next token from its logits, every sequence with its own settings.

Greedy rows without penalties are one argmax over the batch. Rows with a temperature alone (no top-k,
top-p or penalty, as RL's rollouts) share one softmax per temperature, then each draws from its own
generator: what `sampling.next_token` computes row by row, without its per-row work. Every other row goes
through `sampling.next_token`, the rule that batch-1 generation uses (repetition penalty, temperature,
top-k, top-p, then a draw from the request's own generator), after OpenAI's presence and frequency
penalties: so a seeded request draws the same tokens alone or among others, and the same as
`sampling.generate`.
Log-probabilities are those of the model's distribution (log_softmax of the raw logits).
"""

from __future__ import annotations

from typing import Optional

import torch

from zer02llm.inference import sampling
from zer02llm.inference.engine.sequence import Sequence, TokenLogprob


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device):
        self.vocab_size, self.device = vocab_size, device

    def start(self, seq: Sequence) -> None:
        """Penalty state for a sequence that needs it, from its prompt (and output, if recomputed)."""
        p = seq.params
        if p.penalised and seq.seen is None:
            seq.seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            seq.seen[torch.tensor(seq.tokens, device=self.device)] = True
            seq.output_counts = torch.zeros(self.vocab_size, dtype=torch.float32, device=self.device)
            if seq.num_output:
                seq.output_counts.index_add_(0, torch.tensor(seq.output_ids, device=self.device),
                                             torch.ones(seq.num_output, device=self.device))

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits (len(seqs), vocab) float32 -> the next token of each sequence."""
        tokens: list[Optional[int]] = [None] * len(seqs)
        plain = [i for i, s in enumerate(seqs) if s.params.greedy and not s.params.penalised]
        if plain:
            chosen = logits[plain].argmax(dim=-1).tolist()
            for i, t in zip(plain, chosen):
                tokens[i] = t
        by_temperature: dict[float, list[int]] = {}
        for i, seq in enumerate(seqs):
            p = seq.params
            if tokens[i] is None and not p.greedy and not p.penalised and p.top_k == 0 and p.top_p == 1.0:
                by_temperature.setdefault(p.temperature, []).append(i)
        for temperature, rows in by_temperature.items():
            # next_token's operations (float, divide by the same float, softmax), on all the rows at once
            probs = (logits[rows].float() / temperature).softmax(-1)
            for row, i in zip(probs, rows):
                tokens[i] = int(torch.multinomial(row, 1, generator=seqs[i].generator))
        for i, seq in enumerate(seqs):
            if tokens[i] is not None:
                continue
            p = seq.params
            row = logits[i]
            if p.presence_penalty or p.frequency_penalty:
                counts = seq.output_counts
                row = row - p.presence_penalty * (counts > 0).to(row.dtype) - p.frequency_penalty * counts
            params = sampling.SamplingParams(p.temperature, p.top_k, p.top_p, p.repetition_penalty)
            seen = seq.seen if seq.seen is not None else _NO_SEEN
            tokens[i] = sampling.next_token(row, params, seen, seq.generator)
        return tokens  # type: ignore[return-value]

    def record(self, seq: Sequence, token: int) -> None:
        """Update seq's penalty state with its newly sampled token."""
        if seq.seen is not None:
            seq.seen[token] = True
            seq.output_counts[token] += 1

    @staticmethod
    def logprobs(logits: torch.Tensor, tokens: list[int], top: list[int]) -> list[TokenLogprob]:
        """Each row's chosen token's log-probability and its top[i] most likely tokens."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        chosen = logp.gather(1, torch.tensor(tokens, device=logits.device).unsqueeze(1)).squeeze(1).tolist()
        k = max(top) if top else 0
        values, ids = (logp.topk(k, dim=-1) if k else (None, None))
        out = []
        for i, t in enumerate(tokens):
            pairs = list(zip(ids[i, :top[i]].tolist(), values[i, :top[i]].tolist())) if top[i] else []
            out.append(TokenLogprob(t, chosen[i], pairs))
        return out


_NO_SEEN = None  # next_token reads `seen` only when repetition_penalty != 1, and then seq.seen exists
