"""Running tasks on a LanguageModel: per-task metrics, the CORE-style aggregate, the printed table.

acc is every kind's headline figure; multiple choice adds acc_norm (the likeliest choice per UTF-8 byte, so a
long choice is not penalised for its length). CORE, after nanochat: each task's accuracy centred on its chance
level, (acc - chance) / (1 - chance), averaged over the tasks: 0 is guessing, 1 is every item right.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from zer02llm.evals import prompts
from zer02llm.evals.extract import answers_match, extract, reference_answer
from zer02llm.evals.scorer import LanguageModel, encode_pair
from zer02llm.evals.tasks import Item, Task, read_items
from zer02llm.tokenizer import Tokenizer

SHOWN_EXAMPLES = 3  # items per task kept in the results with what the model answered


@dataclass
class TaskResult:
    name: str
    kind: str
    num_items: int
    num_fewshot: int
    metrics: dict[str, float]  # acc (and acc_norm, answered), each in [0, 1]
    chance: float
    centered: float  # (acc - chance) / (1 - chance)
    seconds: float
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def items_per_s(self) -> float:
        return self.num_items / max(self.seconds, 1e-9)


def centered(acc: float, chance: float) -> float:
    return (acc - chance) / (1.0 - chance)


def core_score(results: Sequence[TaskResult]) -> Optional[float]:
    """The mean centred accuracy over the tasks (None without any)."""
    return sum(r.centered for r in results) / len(results) if results else None


class TaskRunner:
    """Scores tasks on one model. `chat`: whether generative tasks of format "auto" ask through the chat
    template (SFT and DPO checkpoints); a task's own "plain" or "chat" wins."""

    def __init__(self, lm: LanguageModel, tokenizer: Tokenizer, seed: int = 1234, chat: bool = False,
                 shown: Optional[int] = SHOWN_EXAMPLES):
        self.lm, self.tokenizer, self.seed, self.chat = lm, tokenizer, seed, chat
        self.shown = shown  # items kept with their answers in a result; None: all of them
        self._template = None

    def run(self, task: Task, limit: Optional[int] = None) -> TaskResult:
        items = task.items[:limit] if limit else task.items
        own = task.fewshot_path is None
        pool = task.items if own else read_items(Path(task.fewshot_path), task.kind)[1]
        shots = [prompts.fewshot_examples(task, i, pool, self.seed, own) for i in range(len(items))]
        started = time.perf_counter()
        if task.kind == "multiple_choice":
            metrics, examples = self.multiple_choice(task, items, shots)
        elif task.kind == "cloze":
            metrics, examples = self.cloze(task, items, shots)
        else:
            metrics, examples = self.generative(task, items, shots)
        seconds = time.perf_counter() - started
        chance = task.chance_accuracy(items)
        return TaskResult(task.name, task.kind, len(items), task.num_fewshot, metrics, chance,
                          centered(metrics["acc"], chance), seconds, examples[:self.shown])

    def multiple_choice(self, task: Task, items: list[Item], shots: list[list[Item]]):
        requests = []
        for item, item_shots in zip(items, shots):
            context = prompts.context_text(task, item, item_shots)
            pairs = [encode_pair(self.tokenizer, context, task.delimiter + choice) for choice in item.choices]
            requests.append((pairs[0][0], [continuation for _, continuation in pairs]))
        scores = self.lm.loglikelihoods(requests)
        right = right_norm = 0
        examples = []
        for item, item_scores in zip(items, scores):
            logprobs = [s.logprob for s in item_scores]
            chosen = argmax(logprobs)
            chosen_norm = argmax([lp / len(choice.encode("utf-8")) for lp, choice in zip(logprobs, item.choices)])
            right += chosen == item.answer
            right_norm += chosen_norm == item.answer
            examples.append({"context": item.context, "answer": item.choices[item.answer],
                             "chosen": item.choices[chosen], "logprobs": logprobs})
        return {"acc": right / len(items), "acc_norm": right_norm / len(items)}, examples

    def cloze(self, task: Task, items: list[Item], shots: list[list[Item]]):
        requests = []
        for item, item_shots in zip(items, shots):
            context_ids, target_ids = encode_pair(self.tokenizer, prompts.context_text(task, item, item_shots),
                                                  task.delimiter + item.target)
            requests.append((context_ids, [target_ids]))
        scores = [s[0] for s in self.lm.loglikelihoods(requests)]
        examples = [{"context": item.context[-200:], "target": item.target, "greedy": s.greedy,
                     "logprob": s.logprob} for item, s in zip(items, scores)]
        return {"acc": sum(s.greedy for s in scores) / len(items)}, examples

    def generative(self, task: Task, items: list[Item], shots: list[list[Item]]):
        chat = task.format == "chat" or (task.format == "auto" and self.chat)
        tokenizer = self.tokenizer
        if chat:
            template = self.template()
            prompt_ids = [template.encode(prompts.chat_messages(item, s), add_generation_prompt=True)[0]
                          for item, s in zip(items, shots)]
            stops: list[str] = []
        else:
            prompt_ids = [[tokenizer.bos_id] + tokenizer.encode(prompts.plain_prompt(task, item, s))
                          for item, s in zip(items, shots)]
            stops = list(task.stop)

        def stopped(new: list[int]) -> bool:
            text = tokenizer.decode(new)
            return any(stop in text for stop in stops)

        replies = self.lm.generate(prompt_ids, task.max_new_tokens, [tokenizer.eos_id],
                                   stopped if stops else None)
        right = answered = 0
        examples = []
        for item, reply in zip(items, replies):
            text = cut_at_stops(tokenizer.decode(reply, skip_special=True), stops)
            found = extract(text, task.extract)
            reference = reference_answer(item.answer, task.extract)
            correct = answers_match(found, reference)
            right += correct
            answered += found is not None
            examples.append({"question": item.question, "reply": text, "extracted": found, "reference": reference,
                             "correct": correct})
        return {"acc": right / len(items), "answered": answered / len(items)}, examples

    def template(self):
        if self._template is None:
            from zer02llm.data.sft import ChatTemplate

            self._template = ChatTemplate(self.tokenizer)
        return self._template


def argmax(values: Sequence[float]) -> int:
    """The index of the largest value, the first one on a tie."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first of `stops` it holds."""
    cut = min((text.index(s) for s in stops if s in text), default=len(text))
    return text[:cut]


def run_tasks(lm: LanguageModel, tokenizer: Tokenizer, tasks: Sequence[Task], seed: int = 1234, chat: bool = False,
              limit: Optional[int] = None, num_fewshot: Optional[int] = None) -> list[TaskResult]:
    """Every task's result; `num_fewshot` (not None) replaces every task's own."""
    runner = TaskRunner(lm, tokenizer, seed, chat)
    results = []
    for task in tasks:
        if num_fewshot is not None:
            task.num_fewshot = num_fewshot
        results.append(runner.run(task, limit))
    return results


def task_scores(model: Any, tokenizer: Tokenizer, tasks: Sequence[Task], chat: bool = False,
                limit: Optional[int] = None) -> dict[str, float]:
    """The flat task figures of a model being trained (left in the mode it was in): the trainer's eval steps."""
    from zer02llm.evals.scorer import make_scorer

    was_training = model.training
    try:
        return flat_scores(run_tasks(make_scorer(model), tokenizer, tasks, chat=chat, limit=limit))
    finally:
        model.train(was_training)


def results_dict(results: Sequence[TaskResult]) -> dict[str, Any]:
    """The results as JSON-ready data: each task's figures, and CORE."""
    return {"core": core_score(results),
            "tasks": {r.name: {**asdict(r), "items_per_s": r.items_per_s} for r in results}}


def flat_scores(results: Sequence[TaskResult]) -> dict[str, float]:
    """`task/<name>/<metric>` figures and `task/core`: a metrics row's and summary.json's form."""
    values = {f"task/{r.name}/{metric}": value for r in results for metric, value in r.metrics.items()}
    core = core_score(results)
    if core is not None:
        values["task/core"] = core
    return values


def format_table(results: Sequence[TaskResult]) -> str:
    """A Markdown table of the results and the CORE line under it."""
    lines = ["| task | kind | items | shots | acc | acc_norm | chance | centred | items/s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        norm = f"{r.metrics['acc_norm']:.4f}" if "acc_norm" in r.metrics else "-"
        lines.append(f"| {r.name} | {r.kind} | {r.num_items} | {r.num_fewshot} | {r.metrics['acc']:.4f} | {norm} | "
                     f"{r.chance:.4f} | {r.centered:+.4f} | {r.items_per_s:.1f} |")
    core = core_score(results)
    if core is not None:
        lines.append(f"\nCORE (centred accuracy, mean over {len(results)} tasks): {core:+.4f}")
    return "\n".join(lines)
