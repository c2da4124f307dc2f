"""The static KV cache and the compiled decode step (`compile=true`, sampling.StaticDecoder).

The static cache against a full pass; compiled decoding against eager decoding token for token
(greedy and seeded sampling, dense and MoE) with no recompilation from one token or prompt to the
next; the eager fallback, with a warning, on a graph break or a failing compiler; the refusal of a
device it cannot compile for; the option through the generate and eval commands; on a GPU, CUDA graphs
and their gain. Compiling costs seconds on the CPU, so the compiled tests share one
shape per architecture: torch.compile finds the graph compiled by an earlier test again (it caches by
code and shapes, and weights are inputs), which is also what lets one compile serve many replies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import warnings

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

from zer02llm import eval as eval_cli
from zer02llm import generate as generate_cli
from zer02llm.inference import sampling
from zer02llm.checkpoint import export_model
from zer02llm.config import EvalConfig, GenerateConfig, ModelConfig, MoEConfig
from zer02llm.model import Transformer
from zer02llm.model.transformer import RMSNorm, StaticKVCache
from zer02llm.inference.sampling import SamplingParams, StaticDecoder, generate

from conftest import REPO

GREEDY = SamplingParams(temperature=0.0)
SAMPLED = SamplingParams(temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2)
PROMPT = [3, 41, 7, 88, 15]
# the dense shape every compiled dense test uses (the tokenizer's vocabulary, for the generate command)
DENSE = dict(vocab_size=6400, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=100.0)
MOE = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=100.0,
           num_experts=4, experts_per_token=2, num_shared_experts=1, expert_hidden_dim=48, tie_embeddings=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit_scale(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A model with unit-scale weights: at the 0.02 init greedy decoding repeats the last token, and
    a comparison of two decoders would be nearly vacuous."""
    torch.manual_seed(seed)
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
        for p in model.parameters():
            if p.dim() == 3:  # stacked experts (E, in, out)
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
    return model.eval()


def dense(seed: int = 0, **overrides) -> Transformer:
    return unit_scale(ModelConfig(**{**DENSE, **overrides}), seed)


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def compiled_graphs() -> int:
    """Graphs torch.compile holds for the decode step (0: it ran eagerly, whatever the decoder thinks)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(sampling._decode_step))


@pytest.fixture
def no_recompiles_later():
    """A context manager: inside it any recompilation raises, and no new graph may be compiled."""

    @contextlib.contextmanager
    def guard():
        before = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            yield
        assert counters["stats"]["unique_graphs"] == before

    return guard


# --------------------------------------------------------------------------------------------------
# 1. the static cache itself (eager)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_static_cache_matches_a_full_pass_token_by_token_and_in_chunks(impl):
    model = dense(attention=impl, vocab_size=97)
    tokens = torch.randint(97, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens).logits
        cache = model.new_static_cache(2, 32)
        pieces = [model(tokens[:, :6], cache=cache).logits]
        pieces += [model(tokens[:, t:t + 1], cache=cache).logits for t in range(6, 15)]
        pieces.append(model(tokens[:, 15:], cache=cache).logits)  # a chunk after cached tokens
    assert isinstance(cache, StaticKVCache) and cache.position.tolist() == [20]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_reset_static_cache_never_reads_the_previous_sequence():
    model = dense(vocab_size=97)
    first, second = torch.randint(97, (2, 1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_static_cache(1, 16)
        model(first, cache=cache)
        cache.reset()  # the first sequence's keys stay in the buffer, masked out
        got = torch.cat([model(second[:, :4], cache=cache).logits]
                        + [model(second[:, t:t + 1], cache=cache).logits for t in range(4, 12)], dim=1)
        torch.testing.assert_close(got, model(second).logits, rtol=1e-5, atol=1e-5)


def test_static_cache_length_is_checked():
    model = dense(vocab_size=97)
    for bad in (0, 65):
        with pytest.raises(ValueError, match=rf"{bad} tokens: must be in 1..model.max_seq_len=64"):
            model.new_static_cache(1, bad)


def test_buckets_are_powers_of_two_from_256_within_max_seq_len():
    decoder = StaticDecoder(dense(vocab_size=97, max_seq_len=4096), compile=False)
    assert [decoder.bucket(n) for n in (1, 200, 256, 257, 1000, 4096)] == [256, 256, 256, 512, 1024, 4096]
    assert StaticDecoder(dense(vocab_size=97), compile=False).bucket(10) == 64  # max_seq_len below 256


def test_uncompiled_static_decoder_gives_the_eager_tokens():
    model = dense(vocab_size=97)
    decoder = StaticDecoder(model, compile=False)
    expected = list(generate(model, PROMPT, 30, GREEDY))
    assert len(set(expected)) > 5  # a varied continuation, not one repeated token
    assert list(generate(decoder, PROMPT, 30, GREEDY)) == expected
    assert list(generate(decoder, PROMPT, 30, SAMPLED, generator=seeded())) == \
        list(generate(model, PROMPT, 30, SAMPLED, generator=seeded()))
    assert len(decoder.caches) == 1  # one buffer, reused by every sequence of its bucket


# --------------------------------------------------------------------------------------------------
# 2. the compiled step: the same tokens as eager decoding, one compile for every token and prompt


def test_compiled_decoding_matches_eager_token_for_token_without_recompiling(no_recompiles_later):
    model = dense()
    decoder = StaticDecoder(model)
    expected = list(generate(model, PROMPT, 40, GREEDY))
    assert len(set(expected)) > 5
    assert list(generate(decoder, PROMPT, 40, GREEDY)) == expected  # compiles here (unless an earlier test did)
    assert decoder.compiled and compiled_graphs() > 0
    with no_recompiles_later():
        # another prompt length, a one-token prompt, seeded sampling, eos: the same graph throughout
        assert list(generate(decoder, PROMPT[:2], 50, GREEDY)) == list(generate(model, PROMPT[:2], 50, GREEDY))
        assert list(generate(decoder, [9], 20, GREEDY)) == list(generate(model, [9], 20, GREEDY))
        assert list(generate(decoder, PROMPT, 40, SAMPLED, generator=seeded())) == \
            list(generate(model, PROMPT, 40, SAMPLED, generator=seeded()))
        assert list(generate(decoder, PROMPT, 40, GREEDY, eos_id=expected[7])) == expected[:8]
        # another model of the same shape: its weights are the graph's inputs, so still no recompile
        other = dense(seed=1)
        assert list(generate(StaticDecoder(other), PROMPT, 20, GREEDY)) == list(generate(other, PROMPT, 20, GREEDY))


@pytest.mark.parametrize("capacity_factor", [0.0, 1.0], ids=["dropless", "capacity"])
def test_compiled_moe_decoding_matches_eager(capacity_factor, no_recompiles_later):
    # dropless float32 on the CPU traces its expert loop with data-dependent sizes (no graph break,
    # no recompilation); capacity mode has static shapes throughout
    model = unit_scale(MoEConfig(**MOE, capacity_factor=capacity_factor))
    decoder = StaticDecoder(model)
    expected = list(generate(model, PROMPT, 30, GREEDY))
    assert len(set(expected)) > 5
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=true")  # no fallback
        assert list(generate(decoder, PROMPT, 30, GREEDY)) == expected
    assert decoder.compiled and compiled_graphs() > 0
    with no_recompiles_later():
        assert list(generate(decoder, PROMPT[:3], 30, SAMPLED, generator=seeded())) == \
            list(generate(model, PROMPT[:3], 30, SAMPLED, generator=seeded()))


def _breaks_the_graph(model, cache, token):
    torch._dynamo.graph_break()  # what a host-side loop in a layer would do
    return model(token, cache=cache).logits[0, -1]


def _plain_step(model, cache, token):  # not sampling._decode_step: a failed compile leaves its cache alone
    return model(token, cache=cache).logits[0, -1]


def _failing_backend(graph, example_inputs):
    raise RuntimeError("no compiler on this machine")


@pytest.mark.parametrize("step", [torch.compile(_breaks_the_graph, fullgraph=True),
                                  torch.compile(_plain_step, backend=_failing_backend, fullgraph=True)],
                         ids=["graph-break", "compiler-fails"])
def test_a_step_that_does_not_compile_falls_back_to_eager_with_a_warning(step):
    model = dense(vocab_size=97)
    decoder = StaticDecoder(model)
    decoder._step = step
    with pytest.warns(UserWarning, match="does not compile into one graph.*decoding eagerly"):
        got = list(generate(decoder, PROMPT, 15, GREEDY))
    assert got == list(generate(model, PROMPT, 15, GREEDY)) and not decoder.compiled


def test_compile_refuses_a_device_it_cannot_compile_for():
    with torch.device("meta"):
        model = Transformer(ModelConfig(**{**DENSE, "vocab_size": 97}))
    with pytest.raises(ValueError, match="compile=true .* on 'meta': use compile=false"):
        StaticDecoder(model)
    StaticDecoder(model, compile=False)  # the static cache alone runs anywhere


# --------------------------------------------------------------------------------------------------
# 3. the option, through the generate command


def test_generate_and_eval_commands_with_compile_give_the_eager_text(tmp_path, monkeypatch):
    model = dense(seed=2)
    checkpoint = export_model(tmp_path / "model", model, {"model": dataclasses.asdict(model.cfg)}, REPO / "tokenizer")
    monkeypatch.setattr("sys.stdout", io.StringIO())
    starts, start = [], StaticDecoder.start  # to see that compile=true reaches the decoder
    monkeypatch.setattr(StaticDecoder, "start", lambda self, max_len: starts.append(max_len) or start(self, max_len))
    options = dict(checkpoint=str(checkpoint), max_new_tokens=24, device="cpu", stream=False)
    for how in (dict(temperature=0.0), dict(temperature=0.9, top_p=0.9, seed=5)):
        eager = generate_cli.run(GenerateConfig(**options, **how, prompt="Once upon a time"))
        assert eager and generate_cli.run(GenerateConfig(**options, **how, prompt="Once upon a time",
                                                         compile=True)) == eager
    # eval: one decoder for the whole session, each reply the eager one
    prompts = ["Once upon a time", "The cat", "A very long time ago, in a garden"]
    replies = {}
    for compile in (False, True):
        cfg = EvalConfig(**options, temperature=0.0, prompts=prompts, chat=False, compile=compile)
        replies[compile] = [r["response"] for r in eval_cli.run(cfg, stdin=io.StringIO(), stdout=io.StringIO(),
                                                                stderr=io.StringIO())]
    assert replies[True] == replies[False] and len(set(replies[False])) == 3
    assert len(starts) == 2 + 3  # the compiled runs only: two generate commands, three eval replies


# --------------------------------------------------------------------------------------------------
# 4. on a GPU: CUDA graphs, and what they gain

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def time_decoding(runner, expected: list[int]) -> float:
    """ms per token of a greedy generation that must give `expected`."""
    import time

    torch.cuda.synchronize()
    start = time.perf_counter()
    assert list(generate(runner, PROMPT, len(expected), GREEDY)) == expected
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(expected) * 1e3


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe-capacity"])
def test_cuda_graph_decoding_matches_eager_and_is_faster(moe, no_recompiles_later):
    cfg = (MoEConfig(**{**MOE, "vocab_size": 6400}, capacity_factor=1.0) if moe
           else ModelConfig(**{**DENSE, "max_seq_len": 512}))
    model = unit_scale(cfg).cuda()
    decoder = StaticDecoder(model)
    expected = list(generate(model, PROMPT, 100, GREEDY))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=true")  # a skipped CUDA graph or a fallback fails
        assert list(generate(decoder, PROMPT, 100, GREEDY)) == expected
        assert list(generate(decoder, PROMPT, 100, SAMPLED, generator=torch.Generator("cuda").manual_seed(0))) == \
            list(generate(model, PROMPT, 100, SAMPLED, generator=torch.Generator("cuda").manual_seed(0)))
        assert decoder.cuda_graphs and not decoder.graph_skipped
        with no_recompiles_later():
            eager, graphed = time_decoding(model, expected), time_decoding(decoder, expected)
    print(f"\nbatch-1 decode ms/token, {'MoE' if moe else 'dense'}: eager {eager:.3f}, CUDA graph {graphed:.3f}")
    assert graphed < eager


@pytest.mark.gpu
@needs_cuda
def test_cuda_dropless_moe_in_float32_gives_the_eager_tokens_and_says_if_it_runs_without_a_graph():
    model = unit_scale(MoEConfig(**{**MOE, "vocab_size": 6400})).cuda()
    decoder = StaticDecoder(model)
    expected = list(generate(model, PROMPT, 50, GREEDY))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(generate(decoder, PROMPT, 50, GREEDY)) == expected
    said = [str(w.message) for w in caught if "compile=true" in str(w.message)]
    assert bool(said) == decoder.graph_skipped
    print(f"\ndropless float32 MoE: CUDA graph {'skipped: ' + said[0] if said else 'captured'}; "
          f"eager {time_decoding(model, expected):.3f} ms/token, compiled {time_decoding(decoder, expected):.3f}")
