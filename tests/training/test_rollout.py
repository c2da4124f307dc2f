"""GRPO's rollouts (zer02llm/training/rollout.py, through the inference engine) against naive samplers that
recompute every sequence with a plain forward over all its tokens (no KV cache, no batching, no prefix
sharing): greedy; sampled, each sample with its own generator; whatever other prompts share the rollout;
after an optimizer step (no keys and values of the old weights read); eos and length cuts; bf16 autocast."""

from __future__ import annotations

import contextlib

import pytest
import torch

from zer02llm.config import ModelConfig, MoEConfig
from zer02llm.inference.engine import LLMEngine
from zer02llm.model import Transformer
from zer02llm.model.lora import apply_lora, lora_parameters
from zer02llm.training.rollout import Rollouts, prompt_seed, rollout

from conftest import randomize

EOS = 3
BLOCK = 4  # small blocks: the test prompts span whole blocks, so a group shares its prompt's cache


def small_model(vocab: int = 16, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=vocab, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=64))
    return randomize(model.double(), seed)


def prompts_of(lengths: list[int], vocab: int = 16, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    # no eos inside a prompt (any other token may be)
    return [[t if t != EOS else EOS + 1 for t in torch.randint(0, vocab, (n,), generator=gen).tolist()]
            for n in lengths]


@torch.no_grad()
def naive(model, prompt, max_new, temperature, eos, seed=None) -> list[int]:
    """One completion: every step a forward over the whole sequence; greedy, or a draw from softmax(logits / t)
    with a generator of its own seeded `seed`."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    row = list(prompt)
    for _ in range(min(max_new, model.cfg.max_seq_len - len(prompt))):
        logits = model(torch.tensor([row])).logits[0, -1].float()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        row.append(token)
        if token == eos:
            break
    return row[len(prompt):]


def naive_group(model, prompts, group_size, max_new, temperature, eos, seeds) -> list[list[int]]:
    """Prompt-major: sample g of prompt p draws from a generator seeded seeds[p] + g."""
    return [naive(model, p, max_new, temperature, eos, s + g)
            for p, s in zip(prompts, seeds) for g in range(group_size)]


def test_greedy_rollouts_equal_naive_batch_one_decoding():
    model = small_model(vocab=64)
    prompts = prompts_of([3, 9, 5, 13], vocab=64)
    got = Rollouts(model, block_size=BLOCK).sample(prompts, 2, 10, 0.0, EOS, [0, 1, 2, 3])
    expected = [naive(model, p, 10, 0.0, EOS) for p in prompts for _ in range(2)]
    assert got == expected
    assert model.training  # restored


def test_sampled_rollouts_equal_a_naive_sampler_whatever_the_batch():
    model = small_model()
    prompts = prompts_of([3, 2, 9, 5, 14, 2])
    seeds = [prompt_seed(1337, 0, i) for i in range(len(prompts))]
    sampler = Rollouts(model, block_size=BLOCK)
    got = sampler.sample(prompts, 4, 8, 1.0, EOS, seeds)
    assert got == naive_group(model, prompts, 4, 8, 1.0, EOS, seeds)
    assert any(row[-1] == EOS and len(row) < 8 for row in got) and any(len(row) == 8 for row in got)
    assert all(EOS not in row[:-1] for row in got)  # cut at the first eos, which is kept
    assert len({tuple(row) for row in got[16:20]}) > 1  # a group's samples differ
    # the group shared its prompt's whole blocks: 3 of the 4 samples of each prompt found them cached
    assert sampler.engine.blocks.hit_tokens == 3 * sum((len(p) - 1) // BLOCK * BLOCK for p in prompts)
    # one prompt alone, or the prompts in another order, draw what they drew together
    assert sampler.sample([prompts[4]], 4, 8, 1.0, EOS, [seeds[4]]) == got[16:20]
    reverse = sampler.sample(prompts[::-1], 4, 8, 1.0, EOS, seeds[::-1])
    assert [reverse[(5 - p) * 4:(6 - p) * 4] for p in range(6)] == [got[p * 4:(p + 1) * 4] for p in range(6)]
    assert sampler.engines_built == 1  # one engine for every rollout that fits it
    assert model.training and sampler.engine.blocks.check_all_free() == []


def test_the_temperature_scales_the_logits_before_the_draw():
    model = small_model()
    prompts, seeds = prompts_of([6, 10]), [11, 12]
    cold = rollout(model, prompts, 3, 8, 0.5, EOS, seeds)
    assert cold == naive_group(model, prompts, 3, 8, 0.5, EOS, seeds)
    assert cold != rollout(model, prompts, 3, 8, 1.0, EOS, seeds)


def test_after_an_optimizer_step_no_cached_prompt_of_the_old_weights_is_read(monkeypatch):
    model = small_model()
    prompts, seeds = prompts_of([13, 9, 17]), [5, 6, 7]
    sampler = Rollouts(model, block_size=BLOCK)
    before = sampler.sample(prompts, 3, 8, 1.0, EOS, seeds)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.2)
    model(torch.tensor([prompts[0] + before[0]])).logits.logsumexp(-1).mean().backward()
    optimizer.step()
    after = sampler.sample(prompts, 3, 8, 1.0, EOS, seeds)
    assert after != before  # the weights moved enough to change the draws
    assert after == naive_group(model, prompts, 3, 8, 1.0, EOS, seeds)
    assert after == Rollouts(model, block_size=BLOCK).sample(prompts, 3, 8, 1.0, EOS, seeds)
    assert sampler.engines_built == 1
    # the check has teeth: an engine that kept its prefix cache would sample from the old weights' prompts
    optimizer.step()
    fresh = Rollouts(model, block_size=BLOCK).sample(prompts, 3, 8, 1.0, EOS, seeds)
    monkeypatch.setattr(LLMEngine, "reset_prefix_cache", lambda self: None)
    assert sampler.sample(prompts, 3, 8, 1.0, EOS, seeds) != fresh


def test_eos_ends_a_completion_and_lengths_cut_it():
    model = small_model(vocab=64)
    prompts = prompts_of([4, 7, 12], vocab=64)
    # eos = each prompt's first greedy token: its completion is that eos alone; others run to max_new_tokens
    first = naive(model, prompts[0], 1, 0.0, None)[0]
    got = rollout(model, prompts, 2, 6, 0.0, first, [0, 0, 0])
    assert got[:2] == [[first], [first]]
    assert got == [naive(model, p, 6, 0.0, first) for p in prompts for _ in range(2)]
    assert all(len(row) == 6 or row[-1] == first for row in got)
    # without an eos every completion runs to max_new_tokens, or to model.max_seq_len
    assert [len(row) for row in rollout(model, prompts, 2, 6, 1.0, None, [1, 2, 3])] == [6] * 6
    long = prompts_of([60], vocab=64)
    assert [len(row) for row in rollout(model, long, 2, 10, 1.0, None, [5])] == [4, 4]


def test_prompts_the_model_cannot_continue_are_refused():
    model = small_model()
    with pytest.raises(ValueError, match="prompt 1 has 64 tokens; model.max_seq_len=64 leaves no room"):
        rollout(model, [[1, 2], [1] * 64], 2, 10, 1.0, None, [5, 6])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        rollout(model, [[]], 2, 10, 1.0, None, [5])
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        rollout(model, [[1]], 2, 10, 1.0, None, [5, 6])
    assert rollout(model, [], 2, 10, 1.0, None, []) == []  # a rank with no prompts to validate
    assert model.training


def test_a_larger_rollout_gets_a_larger_engine_and_the_same_samples():
    model = small_model()
    small, large = prompts_of([5, 6]), prompts_of([5, 6, 30, 33, 20], seed=2)
    sampler = Rollouts(model, block_size=BLOCK)
    sampler.sample(small, 2, 4, 1.0, EOS, [1, 2])
    got = sampler.sample(large, 4, 12, 1.0, EOS, [3, 4, 5, 6, 7])
    assert sampler.engines_built == 2 and sampler.engine.config.max_batch >= 20
    assert got == naive_group(model, large, 4, 12, 1.0, EOS, [3, 4, 5, 6, 7])


@pytest.mark.parametrize("kind", ["lora", "moe"])
def test_lora_and_moe_models_roll_out_as_the_naive_sampler(kind):
    torch.manual_seed(0)
    if kind == "moe":
        model = randomize(Transformer(MoEConfig(vocab_size=16, dim=16, n_layers=2, n_heads=2, n_kv_heads=1,
                                                max_seq_len=64, num_experts=4, experts_per_token=2)).double())
    else:
        model = small_model()
        apply_lora(model, rank=4, alpha=8.0, dropout=0.1)  # dropout: off while rolling out
        with torch.no_grad():
            for p in lora_parameters(model):
                p.normal_(0, 0.3)  # adapters that change the outputs
    prompts, seeds = prompts_of([6, 13, 9]), [1, 2, 3]
    got = Rollouts(model, block_size=BLOCK).sample(prompts, 3, 8, 1.0, EOS, seeds)
    model.eval()
    assert got == naive_group(model, prompts, 3, 8, 1.0, EOS, seeds)


def test_under_bf16_autocast_the_engine_computes_and_caches_in_bf16():
    """The trainer's autocast is the rollouts' precision: the KV cache is bf16 and each greedy token is the
    top one of a plain bf16-autocast forward over the sequence, to bf16's rounding."""
    torch.manual_seed(0)
    model = randomize(Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                              max_seq_len=64)))
    prompts = prompts_of([5, 19, 11], vocab=64)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    sampler = Rollouts(model, autocast, block_size=BLOCK)
    got = sampler.sample(prompts, 2, 8, 0.0, None, [0, 0, 0])
    assert sampler.engine.runner.cache.keys[0].dtype == torch.bfloat16
    assert model.tok_embeddings.weight.dtype == torch.float32
    worst = 0.0
    with torch.no_grad(), autocast():
        for p, row in zip([p for p in prompts for _ in range(2)], got):
            logits = model(torch.tensor([p + row])).logits[0, len(p) - 1:-1].float()
            chosen = logits.gather(1, torch.tensor(row).unsqueeze(1)).squeeze(1)
            worst = max(worst, float((logits.max(-1).values - chosen).max()))
    # logits of std ~1 whose top two are 0.1-0.8 apart: a token from wrong keys, values or weights falls short
    assert worst < 0.05, worst


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_cuda_graphs_replay_the_weights_an_optimizer_step_left(dtype):
    """A kept engine's CUDA graphs, captured at the first rollout, sample after an optimizer step what a new
    engine captured on the new weights samples: the graphs read the parameters in place and, under autocast,
    cast them at every replay (no autocast weight cache kept inside a graph)."""
    torch.manual_seed(0)
    model = randomize(Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                              max_seq_len=128))).cuda()

    def autocast():
        return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    prompts, seeds = prompts_of([5, 19, 11, 30], vocab=64), [1, 2, 3, 4]
    kept = Rollouts(model, autocast)
    before = kept.sample(prompts, 4, 16, 1.0, None, seeds)
    graphs = kept.engine.runner.graphs
    assert graphs is not None and graphs.replays > 0 and not graphs.disabled
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.2)
    with autocast():
        model(torch.tensor([prompts[0] + before[0]], device="cuda")).logits.logsumexp(-1).mean().backward()
    optimizer.step()
    replays = graphs.replays
    after = kept.sample(prompts, 4, 16, 1.0, None, seeds)
    assert kept.engine.runner.graphs is graphs and graphs.replays > replays  # the same graphs, replayed
    assert after != before
    assert after == Rollouts(model, autocast).sample(prompts, 4, 16, 1.0, None, seeds)
