"""Few-shot prompts: which examples an item gets (a fixed seed), and the text or conversation they make.

The layout follows lm-evaluation-harness's, so that a task converted from it reads the same:
examples joined by `fewshot_delimiter`, each a context, `delimiter` and its answer; then the item's context.
"""

from __future__ import annotations

import random
from typing import Sequence

from zer02llm.evals.tasks import Item, Task


def fewshot_examples(task: Task, index: int, pool: Sequence[Item], seed: int, own_items: bool) -> list[Item]:
    """task.num_fewshot examples for item `index`, drawn without replacement from `pool` by a generator
    seeded with (seed, index): the same prompt in every run. The item itself is never one of its examples
    (`own_items`: the pool is the task's own items)."""
    k = task.num_fewshot
    if k == 0:
        return []
    candidates = [i for i in range(len(pool)) if not (own_items and i == index)]
    if len(candidates) < k:
        raise ValueError(f"task {task.name}: num_fewshot={k} but only {len(candidates)} examples to draw from; "
                         f"lower num_fewshot or give fewshot_path=<a file with more items>")
    rng = random.Random(seed * 1_000_003 + index)
    return [pool[i] for i in rng.sample(candidates, k)]


def answer_text(task: Task, item: Item) -> str:
    """What follows an example's context: its right choice, its target, its answer."""
    if task.kind == "multiple_choice":
        return item.choices[item.answer]
    if task.kind == "cloze":
        return item.target
    return item.answer


def context_text(task: Task, item: Item, shots: Sequence[Item]) -> str:
    """The text a multiple-choice or cloze item's continuations follow: the examples, then its context."""
    examples = [shot.context + task.delimiter + answer_text(task, shot) for shot in shots]
    return "".join(example + task.fewshot_delimiter for example in examples) + item.context


def plain_prompt(task: Task, item: Item, shots: Sequence[Item]) -> str:
    """A generative item as a document to continue: each example its question's template and answer."""
    examples = [task.template.format(question=shot.question) + " " + shot.answer for shot in shots]
    return "".join(example + task.fewshot_delimiter for example in examples) + task.template.format(question=item.question)


def chat_messages(item: Item, shots: Sequence[Item]) -> list[dict[str, str]]:
    """A generative item as a conversation: each example a user turn and the assistant's answer."""
    messages = []
    for shot in shots:
        messages += [{"role": "user", "content": shot.question}, {"role": "assistant", "content": shot.answer}]
    return messages + [{"role": "user", "content": item.question}]
