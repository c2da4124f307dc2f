"""Metrics: acc and acc_norm against their formulas, cloze by greedy match, generative by extraction, CORE."""

from __future__ import annotations

import pytest

from zer02llm.evals.runner import TaskResult, TaskRunner, core_score, cut_at_stops
from zer02llm.evals.scorer import Score
from zer02llm.evals.tasks import Item, Task
from zer02llm.tokenizer import Tokenizer


class FixedModel:
    """A LanguageModel whose answers are given: log-likelihoods per request, replies per prompt."""

    max_len = 512

    def __init__(self, logprobs=(), replies=(), greedy=()):
        self.logprobs, self.replies, self.greedy = list(logprobs), list(replies), list(greedy)
        self.requests = []

    def loglikelihoods(self, requests):
        self.requests += list(requests)
        if self.greedy:
            return [[Score(0.0, g, 1)] for g in self.greedy[:len(requests)]]
        return [[Score(lp, False, 1) for lp in lps] for lps in self.logprobs[:len(requests)]]

    def generate(self, prompts, max_new_tokens, stop_ids, stop=None):
        return self.replies[:len(prompts)]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.load()


def test_acc_takes_the_likeliest_choice_and_acc_norm_the_likeliest_per_byte(tokenizer):
    items = [Item(context="c", choices=["a", "bbbb"], answer=1),  # -2 vs -4: acc picks a; per byte -2 vs -1: bbbb
             Item(context="c", choices=["猫", "dog"], answer=0),  # 猫 is 3 bytes: -3/3 = -1 beats -4/3
             Item(context="c", choices=["x", "y", "z"], answer=2)]  # a tie (-1, -1, -5) goes to the first
    logprobs = [[-2.0, -4.0], [-3.0, -4.0], [-1.0, -1.0, -5.0]]
    task = Task(name="mc", kind="multiple_choice", path="mc.jsonl", items=items)
    result = TaskRunner(FixedModel(logprobs), tokenizer).run(task)
    # by the formulas: acc = mean[argmax lp == answer], acc_norm = mean[argmax lp / bytes == answer]
    chosen = [max(range(len(lp)), key=lambda i: (lp[i], -i)) for lp in logprobs]
    chosen_norm = [max(range(len(lp)), key=lambda i: (lp[i] / len(it.choices[i].encode()), -i))
                   for lp, it in zip(logprobs, items)]
    assert chosen == [0, 0, 0] and chosen_norm == [1, 0, 0]
    assert result.metrics["acc"] == pytest.approx(1 / 3)
    assert result.metrics["acc_norm"] == pytest.approx(2 / 3)
    assert result.chance == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
    assert result.centered == pytest.approx((1 / 3 - result.chance) / (1 - result.chance))


def test_each_choice_is_scored_after_the_same_context(tokenizer):
    items = [Item(context="Today is", choices=["Monday", "Tuesday"], answer=0)]
    model = FixedModel([[-1.0, -2.0]])
    TaskRunner(model, tokenizer).run(Task(name="d", kind="multiple_choice", path="d.jsonl", items=items))
    ((context, continuations),) = model.requests
    assert context == [tokenizer.bos_id] + tokenizer.encode("Today is")
    assert [tokenizer.decode(c) for c in continuations] == [" Monday", " Tuesday"]


def test_cloze_is_right_when_the_greedy_continuation_is_the_target(tokenizer):
    items = [Item(context="c", target="t")] * 4
    result = TaskRunner(FixedModel(greedy=[True, False, True, True]), tokenizer).run(
        Task(name="cl", kind="cloze", path="cl.jsonl", items=items))
    assert result.metrics["acc"] == 0.75 and result.chance == 0.0


def test_generative_replies_are_cut_at_stops_and_answers_extracted(tokenizer):
    items = [Item(question="q1", answer="work\n#### 1,000"), Item(question="q2", answer="#### -4"),
             Item(question="q3", answer="#### 5")]
    replies = [tokenizer.encode(" it is 1000.\n\nQuestion: 7"), tokenizer.encode(" -4"), tokenizer.encode(" none")]
    task = Task(name="g", kind="generative", path="g.jsonl", items=items, extract="last_number")
    result = TaskRunner(FixedModel(replies=replies), tokenizer).run(task)
    # the 7 after the stop string is not the answer; the reference's "1,000" is the number 1000
    assert [e["extracted"] for e in result.examples] == ["1000", "-4", None]
    assert result.metrics == {"acc": pytest.approx(2 / 3), "answered": pytest.approx(2 / 3)}
    assert cut_at_stops("a\n\nb", ["\n\n"]) == "a"


def test_core_is_the_mean_centred_accuracy():
    def result(acc, chance):
        return TaskResult("t", "multiple_choice", 10, 0, {"acc": acc}, chance, (acc - chance) / (1 - chance), 1.0)

    assert core_score([result(0.25, 0.25), result(1.0, 0.5), result(0.4, 0.0)]) == pytest.approx((0 + 1 + 0.4) / 3)
    assert core_score([]) is None
