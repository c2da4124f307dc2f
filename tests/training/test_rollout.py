"""GRPO's rollouts (zer02llm/training/rollout.py) against a naive sampler that recomputes every sequence
from scratch (no KV cache, no batching of prompts), drawing from the same per-prompt generators."""

from __future__ import annotations

import pytest
import torch

from zer02llm.config import ModelConfig
from zer02llm.inference.sampling import SamplingParams, generate
from zer02llm.model import Transformer
from zer02llm.training.rollout import prompt_seed, rollout

from conftest import randomize

EOS = 3


def small_model(vocab: int = 16) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=64))
    return randomize(model.double())


def naive(model, prompt, group_size, max_new, temperature, eos, seed):
    """group_size rows decoded together, each step recomputing every row's whole sequence."""
    gen = torch.Generator().manual_seed(seed)
    rows = [list(prompt) for _ in range(group_size)]
    finished = [False] * group_size
    for _ in range(max_new):
        logits = torch.stack([model(torch.tensor([row])).logits[0, -1] for row in rows])
        if temperature == 0:
            chosen = logits.argmax(-1)
        else:
            chosen = torch.multinomial(torch.softmax(logits.float() / temperature, -1), 1, generator=gen)[:, 0]
        for row, token in zip(rows, chosen.tolist()):
            row.append(token)
        finished = [f or t == eos for f, t in zip(finished, chosen.tolist())]
        if all(finished):
            break
    out = []
    for row in rows:
        new = row[len(prompt):]
        out.append(new[:new.index(eos) + 1] if eos in new else new)
    return out


@torch.no_grad()
def test_sampled_rollouts_equal_the_naive_sampler_whatever_the_batch():
    model = small_model()
    prompts = [[1, 5, 7], [2, 9], [4, 4, 6], [8, 1, 2, 5, 11], [12, 10]]  # lengths 3, 2, 3, 5, 2
    seeds = [prompt_seed(1337, 0, i) for i in range(len(prompts))]
    got = rollout(model, prompts, 4, 8, 1.0, EOS, seeds)
    expected = [row for p, s in zip(prompts, seeds) for row in naive(model, p, 4, 8, 1.0, EOS, s)]
    assert got == expected
    assert any(row[-1] == EOS and len(row) < 8 for row in got) and any(len(row) == 8 for row in got)
    assert all(EOS not in row[:-1] for row in got)  # cut at the first eos
    # one prompt alone, or in another order, draws what it drew in company
    assert rollout(model, [prompts[3]], 4, 8, 1.0, EOS, [seeds[3]]) == got[12:16]
    shuffled = rollout(model, prompts[::-1], 4, 8, 1.0, EOS, seeds[::-1])
    assert [shuffled[(4 - p) * 4:(5 - p) * 4] for p in range(5)] == [got[p * 4:(p + 1) * 4] for p in range(5)]
    assert model.training  # restored


@torch.no_grad()
def test_greedy_rollouts_equal_batch_one_generate():
    model = small_model(vocab=64)
    prompts = [[1, 5, 7], [2, 9], [4, 4, 6]]
    got = rollout(model, prompts, 2, 10, 0.0, EOS, [0, 1, 2])
    for p, prompt in enumerate(prompts):
        reference = list(generate(model, prompt, 10, SamplingParams(temperature=0.0), eos_id=EOS))
        assert got[2 * p] == got[2 * p + 1] == reference


def test_max_seq_len_bounds_the_completions():
    model = small_model()
    got = rollout(model, [[1 + i % 15 for i in range(60)]], 2, 10, 1.0, None, [5])
    assert [len(row) for row in got] == [4, 4]
    with pytest.raises(ValueError, match="leaves no room"):
        rollout(model, [[1] * 64], 2, 10, 1.0, None, [5])
