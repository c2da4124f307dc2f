"""Tests of generation (zer02llm.inference.sampling): greedy decoding with the KV cache, next-token sampling
rules (temperature, top-k, top-p, repetition penalty), parameter and prompt checks."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn as nn

from zer02llm.config import ModelConfig
from zer02llm.model import Transformer
from zer02llm.model.transformer import RMSNorm
from zer02llm.inference.sampling import SamplingParams, generate, next_token

IMPLS = ("sdpa", "math")
VOCAB = 97
GREEDY = SamplingParams(temperature=0.0)


def make_model(impl: str = "sdpa", max_seq_len: int = 64, dropout: float = 0.0, seed: int = 0) -> Transformer:
    """A small model with unit-scale weights: at the 0.02 init, greedy decoding with a tied head
    just repeats the last token, which would make the comparisons below nearly vacuous."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len,
                      attention=impl, dropout=dropout, rope_theta=100.0)
    model = Transformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(module.weight.shape[1]))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
            elif isinstance(module, RMSNorm):
                module.weight.copy_(1.0 + 0.3 * torch.randn(module.weight.shape, generator=gen))
    return model.eval()


def greedy_by_recomputation(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """No cache: run the whole sequence every step and take the argmax of the last logits."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


PROMPT = [3, 41, 7, 88, 15]


# --------------------------------------------------------------------------------------------------
# 1. greedy generation with the cache == greedy by full recomputation


@pytest.mark.parametrize("impl", IMPLS)
def test_greedy_generate_matches_full_recomputation(impl):
    model = make_model(impl)
    expected = greedy_by_recomputation(model, PROMPT, 20)
    assert len(set(expected)) > 3  # a varied continuation, not one repeated token
    got = list(generate(model, PROMPT, 20, GREEDY))
    assert got == expected


def test_generate_restores_training_mode_and_disables_dropout():
    model = make_model(dropout=0.5)
    expected = greedy_by_recomputation(model, PROMPT, 10)  # eval mode: no dropout
    model.train()
    assert list(generate(model, PROMPT, 10, GREEDY)) == expected
    assert model.training


# --------------------------------------------------------------------------------------------------
# 2. eos and max_new_tokens


def test_generation_stops_after_eos():
    model = make_model()
    sequence = greedy_by_recomputation(model, PROMPT, 20)
    # eos := the token greedy decoding produces at step k, chosen where it appears for the first time
    k = next(i for i in range(3, 20) if sequence[i] not in sequence[:i])
    eos = sequence[k]
    assert list(generate(model, PROMPT, 20, GREEDY, eos_id=eos)) == sequence[:k + 1]
    # eos as the very first token
    assert list(generate(model, PROMPT, 20, GREEDY, eos_id=sequence[0])) == [sequence[0]]


@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_yields_exactly_max_new_tokens_without_eos(n):
    model = make_model()
    sequence = greedy_by_recomputation(model, PROMPT, 20)
    absent = next(t for t in range(VOCAB) if t not in sequence)
    got = list(generate(model, PROMPT, n, GREEDY, eos_id=absent))
    assert got == sequence[:n]  # new tokens only: the prompt is not repeated
    sampled = list(generate(model, PROMPT, n, SamplingParams(temperature=1.0), eos_id=None,
                            generator=torch.Generator().manual_seed(0)))
    assert len(sampled) == n and all(0 <= t < VOCAB for t in sampled)


def test_max_new_tokens_is_capped_by_max_seq_len():
    model = make_model(max_seq_len=12)
    got = list(generate(model, PROMPT, 50, GREEDY))
    assert len(got) == 12 - len(PROMPT)
    assert got == greedy_by_recomputation(model, PROMPT, 12 - len(PROMPT))
    # a prompt of max_seq_len - 1 tokens leaves room for exactly one
    assert len(list(generate(model, list(range(11)), 5, GREEDY))) == 1


def test_zero_new_tokens_yields_nothing():
    assert list(generate(make_model(), PROMPT, 0, GREEDY)) == []


# --------------------------------------------------------------------------------------------------
# 3. next_token


def _logits(seed: int, n: int = 50) -> torch.Tensor:
    return 2.0 * torch.randn(n, generator=torch.Generator().manual_seed(seed))


NOTHING_SEEN = torch.zeros(50, dtype=torch.bool)


def test_top_k_1_and_tiny_top_p_are_argmax():
    gen = torch.Generator().manual_seed(0)
    for seed in range(20):
        logits = _logits(seed)
        best = int(logits.argmax())
        assert next_token(logits, SamplingParams(temperature=1.5, top_k=1), NOTHING_SEEN, gen) == best
        assert next_token(logits, SamplingParams(temperature=1.5, top_p=1e-6), NOTHING_SEEN, gen) == best
        assert next_token(logits, SamplingParams(temperature=0.0, top_k=10, top_p=0.5), NOTHING_SEEN, gen) == best


def test_top_k_never_samples_outside_the_k_largest():
    logits = _logits(1)
    k = 5
    allowed = set(torch.topk(logits, k).indices.tolist())
    gen = torch.Generator().manual_seed(0)
    # a high temperature flattens the distribution, so tokens outside the top k would show up often
    params = SamplingParams(temperature=5.0, top_k=k)
    draws = Counter(next_token(logits, params, NOTHING_SEEN, gen) for _ in range(2000))
    assert set(draws) <= allowed
    assert set(draws) == allowed  # and every one of the k is reachable


def test_top_p_keeps_the_smallest_prefix_covering_p():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3], dtype=torch.float64)
    logits = probs.log().float()
    gen = torch.Generator().manual_seed(0)
    n = 4000
    # sorted: 0.5, 0.3 (cumulative 0.8 >= 0.7), so tokens 1 and 3 stay, renormalised to 0.625 / 0.375
    draws = Counter(next_token(logits, SamplingParams(temperature=1.0, top_p=0.7), torch.zeros(4, dtype=torch.bool),
                               gen) for _ in range(n))
    assert set(draws) == {1, 3}
    assert draws[1] / n == pytest.approx(0.625, abs=0.03)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_frequencies_match_softmax_over_temperature(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    expected = torch.softmax(logits.double() / temperature, dim=-1)
    gen = torch.Generator().manual_seed(1234)
    n = 10000
    params = SamplingParams(temperature=temperature)
    seen = torch.zeros(5, dtype=torch.bool)
    counts = Counter(next_token(logits, params, seen, gen) for _ in range(n))
    freqs = torch.tensor([counts[i] / n for i in range(5)], dtype=torch.float64)
    # 4.5 standard errors of a frequency (at most 0.005 for n = 10000)
    tolerance = 4.5 * torch.sqrt(expected * (1 - expected) / n)
    assert ((freqs - expected).abs() <= tolerance).all(), (freqs, expected)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    def greedy(logits, seen_ids, penalty):
        seen = torch.zeros(len(logits), dtype=torch.bool)
        seen[list(seen_ids)] = True
        return next_token(torch.tensor(logits), SamplingParams(temperature=0.0, repetition_penalty=penalty), seen)

    positive = [2.0, 1.8, -3.0]
    assert greedy(positive, [], 1.5) == 0
    assert greedy(positive, [0], 1.5) == 1  # 2 / 1.5 = 1.33 < 1.8
    assert greedy(positive, [0], 1.1) == 0  # 2 / 1.1 = 1.82 > 1.8: divided, not subtracted or worse
    assert greedy(positive, [1], 1.5) == 0  # penalising another token leaves the leader
    negative = [-1.0, -1.2, -5.0]
    assert greedy(negative, [], 1.5) == 0
    assert greedy(negative, [0], 1.25) == 1  # -1 * 1.25 = -1.25 < -1.2 (dividing would raise it to -0.8)
    assert greedy(negative, [0], 1.1) == 0  # -1.1 > -1.2
    assert greedy(negative, [0], 1.0) == 0  # 1 turns it off


def test_repetition_penalty_in_generate_counts_prompt_and_output():
    """With a huge penalty a greedy continuation never repeats a prompt token or an earlier output."""
    model = make_model()
    got = list(generate(model, PROMPT, 30, SamplingParams(temperature=0.0, repetition_penalty=1e6)))
    assert len(got) == 30
    assert len(set(got)) == 30 and not set(got) & set(PROMPT)


# --------------------------------------------------------------------------------------------------
# 4. SamplingParams validation


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1),
    ("temperature", -1.0),
    ("top_p", 0.0),
    ("top_p", -0.5),
    ("top_p", 1.01),
    ("top_k", -1),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
])
def test_sampling_params_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value}"):
        SamplingParams(**{field: value})


def test_sampling_params_list_every_problem_and_accept_edges():
    with pytest.raises(ValueError) as info:
        SamplingParams(temperature=-1, top_k=-2, top_p=2.0, repetition_penalty=0)
    for field in ("temperature", "top_k", "top_p", "repetition_penalty"):
        assert field in str(info.value)
    SamplingParams(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    SamplingParams(temperature=3.0, top_k=1, top_p=1e-9, repetition_penalty=0.5)


# --------------------------------------------------------------------------------------------------
# 5. prompt checks


def test_prompt_too_long_or_empty_raises():
    model = make_model(max_seq_len=12)
    for prompt in (list(range(12)), list(range(13))):
        with pytest.raises(ValueError, match="max_seq_len"):
            list(generate(model, prompt, 5, GREEDY))
    with pytest.raises(ValueError, match="empty"):
        list(generate(model, [], 5, GREEDY))


@pytest.mark.parametrize("entry_point", ["generate", "eval", "serve"])
def test_temperature_0_with_each_entry_points_defaults_is_greedy(entry_point):
    """No repetition penalty by default (as OpenAI's API and transformers): temperature=0 then picks the
    argmax of the model's logits, also where that repeats a prompt token, and matches other tools' greedy."""
    from omegaconf import OmegaConf

    from zer02llm.inference.loading import check_sampling

    from conftest import compose

    options = OmegaConf.to_object(compose(["checkpoint=x", "temperature=0"], config_name=entry_point))
    assert options.repetition_penalty == 1.0  # the option stays, off
    model = make_model(seed=1)  # one whose greedy tokens a penalty of 1.1 (the former default) changes
    got = list(generate(model, PROMPT, 24, check_sampling(options)))
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(24):  # the reference: argmax of a whole forward pass, no cache, no sampling code
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert got == ids[len(PROMPT):]
    assert got != list(generate(model, PROMPT, 24, SamplingParams(temperature=0.0, repetition_penalty=1.1)))
