"""Greedy replies for tasks: the batched engine path gives the token ids that greedy decoding of each prompt
alone gives (a full forward per token, no cache: the reference), with stop ids, stop checks, a prompt cut to
fit, more prompts than one batch and a KV cache too small for all of them at once."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize
from zer02llm.config import ModelConfig
from zer02llm.evals import generation
from zer02llm.evals.generation import greedy_batched, greedy_one_by_one
from zer02llm.evals.scorer import ModelScorer
from zer02llm.model import Transformer

VOCAB = 97


@pytest.fixture(scope="module")
def model() -> Transformer:
    cfg = ModelConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=100.0)
    torch.manual_seed(0)
    return randomize(Transformer(cfg), seed=5).eval()  # float32, as evaluation runs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def naive_greedy(model: Transformer, prompt: list[int], max_new: int, stop_ids=(), stop=None) -> list[int]:
    """Whole sequence through forward for every new token, argmax of the last logits."""
    tokens, new = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([tokens])).logits[0, -1].argmax())
            tokens.append(token)
            new.append(token)
            if token in stop_ids or (stop is not None and stop(new)):
                break
    return new


def prompts_of(lengths, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths]


LENGTHS = (1, 5, 17, 3, 30, 8, 12, 2, 21, 9, 4, 16)


def test_batched_replies_equal_greedy_decoding_of_each_prompt_alone(model):
    prompts = prompts_of(LENGTHS)
    expected = [naive_greedy(model, p, 10) for p in prompts]
    assert greedy_batched(model, prompts, 10, stop_ids=[]) == expected
    assert greedy_one_by_one(model, prompts, 10, stop_ids=[]) == expected
    assert len({tuple(e) for e in expected}) > 1  # the prompts lead to different replies: order matters


@pytest.mark.parametrize("max_batch, kv_budget_tokens", [(3, 32768), (12, 64)])
def test_batched_replies_hold_with_queued_prompts_and_a_small_cache(model, max_batch, kv_budget_tokens):
    """More prompts than one batch (they wait their turn) or a cache of 64 tokens (requests wait, or are
    preempted and recomputed): the same ids."""
    prompts = prompts_of(LENGTHS, seed=2)
    expected = [naive_greedy(model, p, 8) for p in prompts]
    assert greedy_batched(model, prompts, 8, [], max_batch=max_batch, kv_budget_tokens=kv_budget_tokens) == expected


def test_one_short_prompt_gets_a_cache_the_engine_admits_it_to(model):
    """One prompt whose reply fits one cache block: the engine still needs a block to spare to admit it."""
    prompt = prompts_of((3,), seed=7)[0]
    assert greedy_batched(model, [prompt], 6, []) == [naive_greedy(model, prompt, 6)]


def test_stop_ids_and_the_stop_check_end_each_reply_where_the_reference_does(model):
    prompts = prompts_of(LENGTHS, seed=3)
    free = [naive_greedy(model, p, 12) for p in prompts]
    stop_ids = [free[0][3], free[4][1]]  # ends those two replies early, and maybe others

    def stop(new: list[int]) -> bool:  # a stop string's role: the reply so far ends in a pair seen in another
        return len(new) >= 2 and (new[-1] + new[-2]) % 7 == 0

    expected = [naive_greedy(model, p, 12, stop_ids, stop) for p in prompts]
    assert any(len(e) < 12 for e in expected) and any(len(e) == 12 for e in expected)
    assert greedy_batched(model, prompts, 12, stop_ids, stop) == expected
    assert greedy_one_by_one(model, prompts, 12, stop_ids, stop) == expected


def test_scorer_cuts_a_long_prompt_from_the_left_and_runs_the_engine(model, monkeypatch):
    long = prompts_of([80], seed=4)[0]  # longer than the model's 64 tokens
    expected = naive_greedy(model, long[-(64 - 6):], 6)
    calls = []
    batched = generation.greedy_batched
    monkeypatch.setattr("zer02llm.evals.scorer.greedy_batched",
                        lambda *a, **k: calls.append(len(a[1])) or batched(*a, **k))
    assert ModelScorer(model).generate([long, long[:7]], 6, []) == [expected, naive_greedy(model, long[:7], 6)]
    assert calls == [2]  # every prompt in one call of the engine path
    with pytest.raises(ValueError, match="max_new_tokens=64"):
        ModelScorer(model).generate([long], 64, [])


def test_a_sharded_model_decodes_one_prompt_at_a_time(model, monkeypatch):
    """FSDP2's unshard/reshard present: the engine (whose forward skips the blocks' hooks) is not used."""
    scorer = ModelScorer(model)
    scorer.sharded = True
    monkeypatch.setattr("zer02llm.evals.scorer.greedy_batched", lambda *a, **k: pytest.fail("engine used"))
    prompts = prompts_of((4, 9), seed=6)
    assert scorer.generate(prompts, 5, []) == [naive_greedy(model, p, 5) for p in prompts]


def test_task_scores_leave_a_training_model_in_training_mode():
    """train.eval_tasks scores tasks inside training: the engine puts the model in eval mode, and task_scores
    puts it back; the generative task's replies are the batch-1 path's."""
    from zer02llm.evals.runner import run_tasks, task_scores
    from zer02llm.evals.tasks import load_all
    from zer02llm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load()
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=256)
    torch.manual_seed(0)
    model = randomize(Transformer(cfg), seed=8)
    tasks = [t for t in load_all(["sample"]) if t.kind == "generative"]
    model.train()
    scores = task_scores(model, tokenizer, tasks, limit=3)
    assert model.training and set(scores) >= {"task/sums/acc", "task/sums/answered", "task/core"}
    batched = run_tasks(ModelScorer(model), tokenizer, tasks, limit=3)[0].examples
    alone = run_tasks(ModelScorer(model, batched_replies=False), tokenizer, tasks, limit=3)[0].examples
    assert [e["reply"] for e in batched] == [e["reply"] for e in alone]
