"""Few-shot prompts: lm-evaluation-harness's layout, examples drawn with a fixed seed, never the item itself."""

from __future__ import annotations

import pytest

from zer02llm.evals import prompts
from zer02llm.evals.tasks import Item, Task


def mc_task(n: int = 6, k: int = 2) -> Task:
    items = [Item(context=f"Q{i}:", choices=[f"a{i}", f"b{i}"], answer=i % 2) for i in range(n)]
    return Task(name="t", kind="multiple_choice", path="t.jsonl", items=items, num_fewshot=k)


def test_the_context_is_the_examples_with_their_right_choices_then_the_item():
    task = mc_task()
    shots = [task.items[1], task.items[4]]
    assert prompts.context_text(task, task.items[0], shots) == "Q1: b1\n\nQ4: a4\n\nQ0:"
    task.delimiter, task.fewshot_delimiter = "", "\n"
    assert prompts.context_text(task, task.items[0], shots) == "Q1:b1\nQ4:a4\nQ0:"
    assert prompts.context_text(task, task.items[0], []) == "Q0:"


def test_examples_are_fixed_by_the_seed_and_never_the_item_itself():
    task = mc_task(n=6, k=3)
    drawn = [prompts.fewshot_examples(task, i, task.items, seed=1, own_items=True) for i in range(6)]
    assert drawn == [prompts.fewshot_examples(task, i, task.items, seed=1, own_items=True) for i in range(6)]
    for i, shots in enumerate(drawn):
        assert len(shots) == 3 and len({id(s) for s in shots}) == 3
        assert task.items[i] not in shots
    other_seed = [prompts.fewshot_examples(task, i, task.items, seed=2, own_items=True) for i in range(6)]
    assert other_seed != drawn


def test_examples_from_another_pool_may_be_any_of_it():
    task = mc_task(n=2, k=3)
    pool = mc_task(n=3).items
    assert sorted(s.context for s in prompts.fewshot_examples(task, 0, pool, 0, own_items=False)) == \
        ["Q0:", "Q1:", "Q2:"]


def test_too_few_examples_is_a_clear_error():
    task = mc_task(n=3, k=3)
    with pytest.raises(ValueError, match="num_fewshot=3 but only 2 examples"):
        prompts.fewshot_examples(task, 0, task.items, 0, own_items=True)


def test_generative_prompts_plain_and_chat():
    items = [Item(question="What is 1 plus 1?", answer="2"), Item(question="What is 2 plus 2?", answer="4")]
    task = Task(name="g", kind="generative", path="g.jsonl", items=items, num_fewshot=1)
    assert prompts.plain_prompt(task, items[1], [items[0]]) == \
        "Question: What is 1 plus 1?\nAnswer: 2\n\nQuestion: What is 2 plus 2?\nAnswer:"
    assert prompts.chat_messages(items[1], [items[0]]) == [
        {"role": "user", "content": "What is 1 plus 1?"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "What is 2 plus 2?"}]
