"""The inference engine (zer02llm/inference/engine/): batched decoding gives each request the tokens it gets
alone (sampling.generate, batch 1, is the reference), whatever its neighbours, arrival step, chunking,
prefix-cache hits, preemption or cancellations; seeded sampling is per request; nothing leaks."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import pytest
import torch

from zer02llm import LLM, SamplingParams
from zer02llm.config import EngineConfig, ModelConfig, MoEConfig
from zer02llm.inference import sampling
from zer02llm.inference.engine import LLMEngine, QueueFull
from zer02llm.model import Transformer

from conftest import randomize

VOCAB = 97
GREEDY = sampling.SamplingParams(temperature=0.0)


def make_model(moe: bool = False, impl: str = "sdpa", dtype=torch.float64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512, rope_theta=100.0,
                  attention=impl)
    cfg = MoEConfig(**common, num_experts=4, experts_per_token=2) if moe else ModelConfig(**common)
    return randomize(Transformer(cfg), seed).to(dtype).eval()


def prompts_of(lengths, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def solo(model, prompt, n: int, eos_id=None) -> list[int]:
    return list(sampling.generate(model, prompt, n, GREEDY, eos_id))


def engine_of(model, **knobs) -> LLMEngine:
    defaults = dict(max_batch=8, block_size=4, prefill_chunk=32, kv_budget_tokens=4096)
    return LLMEngine(model, config=EngineConfig(**{**defaults, **knobs}))


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, **kw)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dense():
    return make_model()


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_mixed_prompt_lengths_equal_solo_decoding(impl):
    model = make_model(impl=impl)
    prompts = prompts_of([1, 2, 7, 16, 33, 60, 5, 120, 3, 9])
    llm = LLM.from_model(model, max_batch=6, block_size=4, prefill_chunk=48, kv_budget_tokens=4096)
    outs = llm.generate(prompts, max_tokens=24, temperature=0)
    expected = [solo(model, p, 24) for p in prompts]
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert len({tuple(e) for e in expected}) == len(expected) and all(len(set(e)) > 3 for e in expected)
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    assert llm.engine.counts["peak_running"] == 6
    assert llm.engine.blocks.check_all_free() == []


def test_requests_arriving_at_different_steps(dense):
    prompts = prompts_of([5, 30, 2, 64, 11, 17, 8])
    engine = engine_of(dense, max_batch=4)
    seqs, arrivals = [], {0: [0, 1], 3: [2], 4: [3, 4], 9: [5], 20: [6]}
    for step in range(1000):
        for i in arrivals.get(step, []):
            seqs.append((i, engine.add_request(prompts[i], greedy(20 + i))))
        if step > max(arrivals) and not engine.has_work():
            break
        engine.step()
    assert all(s.finished for _, s in seqs) and len(seqs) == len(prompts)
    for i, seq in seqs:
        assert seq.output_ids == solo(dense, prompts[i], 20 + i), i


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(dense):
    engine = engine_of(dense, prefill_chunk=16)
    short = [engine.add_request(p, greedy(30)) for p in prompts_of([4, 6], seed=2)]
    for _ in range(3):
        engine.step()
    long_prompt = prompts_of([200], seed=3)[0]
    long_seq = engine.add_request(long_prompt, greedy(10))
    decoded_meanwhile, steps_of_prefill = 0, 0
    while long_seq.num_computed < len(long_prompt):
        before = [s.num_output for s in short]
        engine.step()
        steps_of_prefill += 1
        decoded_meanwhile += sum(s.num_output - b for s, b in zip(short, before))
    assert steps_of_prefill >= 200 // 16  # never more than one chunk of it per step
    assert decoded_meanwhile >= 2 * (steps_of_prefill - 1)  # the short ones did not wait
    engine.run_until_done()
    assert long_seq.output_ids == solo(dense, long_prompt, 10)
    assert [s.output_ids for s in short] == [solo(dense, p, 30) for p in prompts_of([4, 6], seed=2)]


def test_a_neighbour_cancelled_midway_changes_nothing(dense):
    prompts = prompts_of([8, 13, 21, 3])
    engine = engine_of(dense)
    seqs = [engine.add_request(p, greedy(25)) for p in prompts]
    deltas = []
    seqs[1].on_delta = deltas.append
    for _ in range(8):
        engine.step()
    seqs[1].cancel()
    engine.run_until_done()
    assert seqs[1].finish_reason == "cancelled" and deltas[-1].finish_reason == "cancelled"
    full = solo(dense, prompts[1], 25)
    assert 0 < seqs[1].num_output < 25 and seqs[1].output_ids == full[:seqs[1].num_output]
    for i in (0, 2, 3):
        assert seqs[i].output_ids == solo(dense, prompts[i], 25)
    assert engine.blocks.check_all_free() == []


def test_prefix_cache_hit_equals_miss(dense):
    system = prompts_of([37], seed=5)[0]  # a shared "system prompt", not a multiple of the block size
    prompts = [system + tail for tail in prompts_of([3, 9, 1, 14], seed=6)]
    expected = [solo(dense, p, 16) for p in prompts]
    cold = LLM.from_model(dense, prefix_caching=False, block_size=4, kv_budget_tokens=2048)
    assert [o.outputs[0].token_ids for o in cold.generate(prompts, max_tokens=16, temperature=0)] == expected
    assert cold.engine.blocks.hit_tokens == 0
    warm = LLM.from_model(dense, block_size=4, kv_budget_tokens=2048)
    first = warm.generate(prompts[:1], max_tokens=16, temperature=0)  # computes the system prompt
    rest = warm.generate(prompts[1:], max_tokens=16, temperature=0)
    assert [o.outputs[0].token_ids for o in first + rest] == expected
    assert all(o.num_cached_tokens >= 36 for o in rest)  # 9 whole blocks of the system prompt
    again = warm.generate(prompts, max_tokens=16, temperature=0)  # whole prompts cached (but the last token)
    assert [o.outputs[0].token_ids for o in again] == expected
    assert [o.num_cached_tokens for o in again] == [(len(p) - 1) // 4 * 4 for p in prompts]
    assert warm.engine.blocks.check_all_free() == []


def test_n_samples_of_one_prompt_share_its_prefix(dense):
    prompt = prompts_of([50], seed=7)[0]
    llm = LLM.from_model(dense, block_size=4, kv_budget_tokens=2048)
    out = llm.generate([prompt], SamplingParams(n=6, max_tokens=12, temperature=0))[0]
    expected = solo(dense, prompt, 12)
    assert [c.token_ids for c in out.outputs] == [expected] * 6
    # the first computes the prompt, the five others wait a step for its blocks and take them
    assert llm.engine.blocks.hit_tokens == 5 * 48
    seeded = llm.generate([prompt], SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=11))[0]
    assert len({tuple(c.token_ids) for c in seeded.outputs}) == 3  # seeds 11, 12, 13: three different samples


def test_moe_model_equals_solo():
    model = make_model(moe=True)
    prompts = prompts_of([3, 19, 40, 7, 26])
    llm = LLM.from_model(model, max_batch=5, block_size=4, prefill_chunk=24, kv_budget_tokens=2048)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, max_tokens=20, temperature=0)] == \
        [solo(model, p, 20) for p in prompts]


def test_preemption_when_the_cache_runs_out_changes_nothing(dense):
    prompts = prompts_of([10, 12, 9, 14, 11, 8])
    # 6 sequences growing to ~50 tokens each need ~80 blocks of 4: 40 forces preemptions
    llm = LLM.from_model(dense, max_batch=6, block_size=4, kv_budget_tokens=160, prefill_chunk=64)
    outs = llm.generate(prompts, max_tokens=40, temperature=0)
    assert llm.engine.scheduler.preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == [solo(dense, p, 40) for p in prompts]
    assert llm.engine.blocks.check_all_free() == []


def test_a_request_that_fills_the_whole_cache_runs_alone(dense):
    """check_request lets in a request whose longest length is the cache's whole capacity; with nothing else
    running the scheduler must admit it without the spare block it keeps for growth beside others (it once
    waited for that block forever)."""
    prompts = prompts_of([9, 5])
    llm = LLM.from_model(dense, max_batch=2, block_size=16, kv_budget_tokens=16, prefill_chunk=64)
    outs = []  # in a thread, so that the old hang fails the test instead of stopping the suite
    worker = threading.Thread(target=lambda: outs.extend(llm.generate(prompts, max_tokens=7, temperature=0)),
                              daemon=True)  # 9 + 7 = 16 tokens: the one block
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the engine never admitted a request that fills its whole cache"
    assert [o.outputs[0].token_ids for o in outs] == [solo(dense, p, 7) for p in prompts]
    assert llm.engine.blocks.check_all_free() == []


def test_float32_logits_within_1e_4_of_solo():
    model = make_model(dtype=torch.float32)
    prompts = prompts_of([4, 25, 60, 9, 2, 33])
    engine = engine_of(model, prefill_chunk=20)
    seen: dict[int, list[torch.Tensor]] = {}
    real = engine.sampler.sample

    def recording(logits, seqs):
        for row, seq in zip(logits, seqs):
            seen.setdefault(seq.seq_id, []).append(row.clone())
        return real(logits, seqs)

    engine.sampler.sample = recording
    seqs = [engine.add_request(p, greedy(15)) for p in prompts]
    engine.run_until_done()
    worst = 0.0
    for seq in seqs:
        cache = model.new_cache(1, len(seq))
        with torch.no_grad():
            reference = [model(torch.tensor([seq.tokens[:seq.num_prompt]]), cache=cache).logits[0, -1]]
            for t in seq.output_ids[:-1]:
                reference.append(model(torch.tensor([[t]]), cache=cache).logits[0, -1])
        got = seen[seq.seq_id]
        assert len(got) == len(reference) == 15
        worst = max(worst, max(float((a - b).abs().max()) for a, b in zip(got, reference)))
    assert worst < 1e-4, worst


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_seeded_request_samples_the_same_alone_and_among_eight_others(dtype):
    model = make_model(dtype=dtype)
    prompt = prompts_of([12], seed=9)[0]
    params = SamplingParams(max_tokens=30, temperature=1.2, top_p=0.9, top_k=40, seed=1234)
    alone = LLM.from_model(model, block_size=4).generate([prompt], params)[0].outputs[0].token_ids
    others = prompts_of([5, 17, 3, 30, 8, 22, 1, 14], seed=10)
    settings = [SamplingParams(max_tokens=30, temperature=t, seed=s) for t, s in
                zip([0.7, 1.0, 0, 1.5, 0.9, 1.0, 0, 2.0], [None, 7, None, 8, None, 9, None, None])]
    llm = LLM.from_model(model, block_size=4, max_batch=9)
    together = llm.generate(others[:4] + [prompt] + others[4:], settings[:4] + [params] + settings[4:])
    assert together[4].outputs[0].token_ids == alone
    # and the same draws as batch-1 generation with a generator seeded alike
    reference = sampling.generate(model, prompt, 30, sampling.SamplingParams(1.2, 40, 0.9, 1.0), None,
                                  torch.Generator().manual_seed(1234))
    assert alone == list(reference)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_temperature_only_requests_drawn_together_equal_batch_one_draws(dtype):
    """Rows with a temperature alone share a softmax per temperature (the sampler's batched path, RL's
    rollouts): each still draws what batch-1 generation draws from a generator seeded alike."""
    model = make_model(dtype=dtype)
    prompts = prompts_of([7, 12, 3, 20, 9, 15], seed=21)
    temperatures = [1.0, 0.6, 1.0, 1.4, 0.6, 1.0]
    llm = LLM.from_model(model, block_size=4, max_batch=6)
    outs = llm.generate(prompts, [SamplingParams(max_tokens=20, temperature=t, seed=40 + i)
                                  for i, t in enumerate(temperatures)])
    for i, (prompt, t) in enumerate(zip(prompts, temperatures)):
        reference = sampling.generate(model, prompt, 20, sampling.SamplingParams(t, 0, 1.0, 1.0), None,
                                      torch.Generator().manual_seed(40 + i))
        assert outs[i].outputs[0].token_ids == list(reference), i


def test_penalties_stop_tokens_and_logprobs(dense):
    prompt = prompts_of([20], seed=12)[0]
    llm = LLM.from_model(dense, block_size=4)
    # repetition penalty: the same rule as batch-1 generation
    rep = llm.generate([prompt], max_tokens=20, temperature=0, repetition_penalty=1.5)[0].outputs[0].token_ids
    assert rep == list(sampling.generate(dense, prompt, 20, sampling.SamplingParams(0.0, 0, 1.0, 1.5), None))
    # presence/frequency penalties change a greedy reply that repeats itself
    plain = llm.generate([prompt], max_tokens=40, temperature=0)[0].outputs[0].token_ids
    penalised = llm.generate([prompt], max_tokens=40, temperature=0, frequency_penalty=2.0)[0].outputs[0].token_ids
    assert len(set(penalised)) >= len(set(plain)) and penalised != plain
    # a stop token ends the reply (and is its last token)
    stop_at = plain[5]
    out = llm.generate([prompt], max_tokens=40, temperature=0, stop_token_ids=[stop_at])[0].outputs[0]
    assert out.token_ids == plain[:plain.index(stop_at) + 1] and out.finish_reason == "stop"
    # logprobs: the model's own log-softmax at each step, top-k sorted
    out = llm.generate([prompt], max_tokens=5, temperature=0, logprobs=3)[0].outputs[0]
    assert [lp.token_id for lp in out.logprobs] == out.token_ids
    with torch.no_grad():
        full = torch.log_softmax(dense(torch.tensor([prompt + out.token_ids])).logits[0].float(), -1)
    for i, lp in enumerate(out.logprobs):
        row = full[len(prompt) - 1 + i]
        assert abs(lp.logprob - float(row[lp.token_id])) < 1e-6
        assert [t for t, _ in lp.top] == row.topk(3).indices.tolist() and lp.top[0][0] == lp.token_id


def test_score_equals_a_full_forward(dense):
    contexts = prompts_of([10, 10, 25, 3], seed=13)
    contexts[1] = contexts[0]  # two continuations of one context: the second shares its prefix
    continuations = prompts_of([4, 6, 1, 9], seed=14)
    continuations[2] = [solo(dense, contexts[2], 1)[0]]  # the greedy token: is_greedy
    llm = LLM.from_model(dense, block_size=4)
    scores = llm.score(contexts, continuations)
    for ctx, cont, score in zip(contexts, continuations, scores):
        with torch.no_grad():
            logp = torch.log_softmax(dense(torch.tensor([ctx + cont])).logits[0].double(), -1)
        rows = logp[len(ctx) - 1:len(ctx) + len(cont) - 1]
        expected = float(rows.gather(1, torch.tensor(cont).unsqueeze(1)).sum())
        assert abs(score.logprob - expected) < 1e-9 and score.num_tokens == len(cont)
        assert score.is_greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())
    assert scores[2].is_greedy and not scores[0].is_greedy
    assert llm.engine.blocks.check_all_free() == []


def test_streaming_form_gives_the_same_tokens(dense):
    prompts = prompts_of([6, 15, 2])
    llm = LLM.from_model(dense, block_size=4)
    pieces: dict[int, list[int]] = {0: [], 1: [], 2: []}
    finished = set()
    for index, delta in llm.stream(prompts, max_tokens=10, temperature=0):
        pieces[index] += delta.token_ids
        if delta.finished:
            finished.add(index)
    assert finished == {0, 1, 2}
    assert [pieces[i] for i in range(3)] == [solo(dense, p, 10) for p in prompts]


def test_the_queue_refuses_cleanly_when_full(dense):
    engine = engine_of(dense, max_queue=3, max_batch=1)
    seqs = [engine.add_request(p, greedy(4)) for p in prompts_of([3, 4, 5])]
    with pytest.raises(QueueFull, match="max_queue"):
        engine.add_request([1, 2], greedy(4))
    engine.step()  # one joins the batch: room for one more in the queue
    seqs.append(engine.add_request([1, 2], greedy(4)))
    with pytest.raises(QueueFull):
        engine.add_request([1, 2], greedy(4))
    engine.run_until_done()
    assert all(s.finish_reason == "length" for s in seqs)
    small = engine_of(dense, kv_budget_tokens=64)
    with pytest.raises(ValueError, match="kv_budget_tokens"):
        small.add_request([1] * 10, greedy(60))


def test_no_cache_leak_after_1000_requests_with_random_cancellations(dense):
    """The background thread, requests from several client threads, a third cancelled at a random moment
    (a client gone), shared prefixes, a small cache (preemptions): at the end every block is free."""
    engine = engine_of(dense, max_batch=16, kv_budget_tokens=512, max_queue=10_000, prefill_chunk=64).start()
    system = prompts_of([9], seed=15)[0]
    done = threading.Semaphore(0)
    outcomes: list[str] = []
    lock = threading.Lock()

    def on_delta(delta):
        if delta.finished:
            with lock:
                outcomes.append(delta.finish_reason)
            done.release()

    def client(k: int) -> None:
        local = random.Random(k)
        for i in range(250):
            tail = [local.randrange(VOCAB) for _ in range(local.randint(1, 20))]
            prompt = (system if local.random() < 0.5 else []) + tail
            seq = engine.add_request(prompt, greedy(local.randint(1, 12)), on_delta=on_delta)
            if local.random() < 0.33:
                time.sleep(local.random() * 0.002)
                seq.cancel()

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for _ in range(1000):
            assert done.acquire(timeout=60), f"only {len(outcomes)} of 1000 requests finished"
    finally:
        engine.stop()
    assert len(outcomes) == 1000 and set(outcomes) <= {"length", "cancelled"} and "cancelled" in outcomes
    assert engine.blocks.check_all_free() == []
    assert engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(dense, monkeypatch):
    engine = engine_of(dense)
    seqs = [engine.add_request(p, greedy(5)) for p in prompts_of([3, 8])]
    real = engine.runner.run

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(engine.runner, "run", broken)
    engine.step()
    assert [s.finish_reason for s in seqs] == ["error", "error"] and "simulated" in str(seqs[0].error)
    monkeypatch.setattr(engine.runner, "run", real)
    seq = engine.add_request([1, 2, 3], greedy(5))
    engine.run_until_done()
    assert seq.output_ids == solo(dense, [1, 2, 3], 5)
    assert engine.blocks.check_all_free() == []


def test_llm_is_imported_lazily():
    """`import zer02llm` and `import zer02llm.config` load neither torch nor the engine; `from zer02llm import LLM` does."""
    code = ("import sys, zer02llm, zer02llm.config; light = 'torch' not in sys.modules; "
            "from zer02llm import LLM, SamplingParams; print(light, LLM.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "zer02llm.inference.engine.llm"]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_decoding_equals_eager():
    for moe in (False, True):
        model = make_model(moe=moe, dtype=torch.float32).cuda()
        prompts = prompts_of([3, 19, 40, 7, 26, 1, 11, 5, 60])
        eager = LLM.from_model(model, cuda_graphs=False, max_batch=9, block_size=16)
        graphs = LLM.from_model(model, cuda_graphs=True, max_batch=9, block_size=16, cuda_graph_max_len=256)
        a = eager.generate(prompts, max_tokens=30, temperature=0, logprobs=0)
        b = graphs.generate(prompts, max_tokens=30, temperature=0, logprobs=0)
        runner_graphs = graphs.engine.runner.graphs
        if moe and runner_graphs.disabled:
            continue  # an MoE forward that needs the host cannot be captured: eager, and said so
        assert runner_graphs.replays > 0 and not runner_graphs.disabled
        for x, y in zip(a, b):
            lx = [lp.logprob for lp in x.outputs[0].logprobs]
            ly = [lp.logprob for lp in y.outputs[0].logprobs]
            n = next((i for i, (s, t) in enumerate(zip(x.outputs[0].token_ids, y.outputs[0].token_ids)) if s != t),
                     len(lx))
            assert n >= 10 and max(abs(p - q) for p, q in zip(lx[:n], ly[:n])) < 1e-3


@pytest.mark.gpu
@needs_cuda
def test_decode_throughput_on_the_16gb_shape():
    """Decode tokens/s at batch 1, 16 and 64 for the 16gb preset's model shape (dim 512, 8 layers; bf16), eager
    and with CUDA graphs: printed into gpu_check's pytest.log. Asserts only that graphs were used and are not slower."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=512, n_layers=8, n_heads=8, max_seq_len=2048)).cuda().to(torch.bfloat16).eval()
    prompts = prompts_of([32] * 64, seed=20)
    rows, new = [], 128
    for batch in (1, 16, 64):
        speeds = {}
        for graphs in (False, True):
            llm = LLM.from_model(model, max_batch=batch, cuda_graphs=graphs, kv_budget_tokens=batch * 256,
                                 cuda_graph_max_len=256)
            llm.generate(prompts[:batch], max_tokens=8, temperature=0, ignore_eos=True)  # warm-up, graphs captured
            torch.cuda.synchronize()
            started = time.perf_counter()
            outs = llm.generate(prompts[:batch], max_tokens=new, temperature=0, ignore_eos=True)
            torch.cuda.synchronize()
            speeds[graphs] = sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - started)
            if graphs:
                assert llm.engine.runner.graphs.replays > 0 and not llm.engine.runner.graphs.disabled
        rows.append((batch, speeds[False], speeds[True]))
    print("\nengine decode, 16gb shape (dim 512, 8 layers, bf16), 32-token prompts, 128 new tokens")
    print(f"{'batch':>5} | {'eager tokens/s':>14} | {'CUDA graphs tokens/s':>20}")
    for batch, eager, graphs in rows:
        print(f"{batch:>5} | {eager:>14.0f} | {graphs:>20.0f}")
    assert all(g >= 0.8 * e for _, e, g in rows)
