"""The reward terms of mode=grpo (zer02llm/training/rewards.py) on edge cases, their weighted sum, the
accuracy rule, and a user's function that raises (reported with the sample, never fatal)."""

from __future__ import annotations

import logging
import sys
import textwrap

import pytest

from zer02llm.config import ConfigError, FunctionReward, RewardConfig, reward_problems
from zer02llm.training.rewards import (Rewards, closeness, exact_match, extract_number, format_match,
                                       length_penalty, numeric_match, regex_match)


@pytest.mark.parametrize("text,rule,expected", [
    ("7 plus 5 is 12.", "last", 12.0),  # a full stop is not a decimal point
    ("It costs $1,234.50 in all", "last", 1234.5),
    ("5-3=2", "last", 2.0),  # a minus between digits is no sign
    ("5 - 3 is -2", "last", -2.0),
    ("the lists 3,4 and 10", "last", 10.0),  # "3,4" is two numbers, not 34
    ("no number here", "last", None),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "gsm8k", 72.0),
    ("#### 72 then 5 more", "gsm8k", 72.0),  # the first number after the last ####
    ("The answer is 72", "gsm8k", None),  # no ####: nothing under the gsm8k rule
    ("#### ", "gsm8k", None),
    ("48 then #### 1,000", "auto", 1000.0),
    ("48 then 49", "auto", 49.0),
    ("", "auto", None),
])
def test_extract_number(text, rule, expected):
    assert extract_number(text, rule) == expected


def test_numeric_match_compares_numbers_and_reads_gsm8k_answers():
    assert numeric_match("7 plus 5 is 12.", "12") == 1.0
    assert numeric_match("12.0", "12") == 1.0
    assert numeric_match("7 plus 5 is 13.", "12") == 0.0
    assert numeric_match("12 apples and then 3", "12") == 0.0  # the last number decides
    assert numeric_match("so #### 72", "She sold 48 + 24 = 72 clips.\n#### 72") == 1.0
    assert numeric_match("so 72", "#### 72", rule="gsm8k") == 0.0  # gsm8k rule wants ####
    assert numeric_match("anything 3", "no number in the answer") == 0.0
    assert numeric_match("", "5") == 0.0


def test_exact_regex_format_and_length_terms():
    assert exact_match("  Paris\n", "Paris") == 1.0 and exact_match("paris", "Paris") == 0.0
    # {answer} is escaped: "3.5" must not match "3x5"
    assert regex_match("it is 3.5 m", "3.5", r"(?<![\w.]){answer}(?![\w])") == 1.0
    assert regex_match("it is 3x5 m", "3.5", r"{answer}") == 0.0
    assert regex_match("it is 13", "3", r"(?<![\w.]){answer}(?![\w])") == 0.0
    assert format_match("work\n#### 12", r"####\s*\d+\s*$") == 1.0
    assert format_match("#### 12 and more", r"####\s*\d+\s*$") == 0.0
    assert length_penalty("x" * 10, 10) == 0.0
    assert length_penalty("x" * 15, 10) == -0.5
    assert length_penalty("x" * 100, 10) == -1.0


def test_closeness_gives_partial_credit_falling_to_zero_at_the_scale():
    assert closeness("7 plus 5 is 12.", "12") == 1.0
    assert closeness("7 plus 5 is 9.", "12") == pytest.approx(0.7)  # 3 away of 10
    assert closeness("7 plus 5 is 15.", "12", scale=6.0) == pytest.approx(0.5)  # above or below alike
    assert closeness("7 plus 5 is 22.", "12") == 0.0 and closeness("it is 40", "12") == 0.0  # never negative
    assert closeness("-3", "3") == 0.4  # signs are read
    assert closeness("no number", "12") == 0.0 and closeness("12", "no number") == 0.0
    assert closeness("so 11\n#### 13", "#### 12", rule="gsm8k") == 0.9  # the numeric rule's number
    assert closeness("so 11\n#### 13", "#### 12", rule="last") == 0.9 and closeness("#### 13 then 2", "12", "last") == 0.0
    # a shape term: it adds to the reward, but accuracy still counts the answer terms alone
    rewards = Rewards(RewardConfig(numeric=1.0, closeness=0.5))
    near = rewards.score("7 plus 5 is 10.", "12", "What is 7 plus 5?")
    assert near.reward == pytest.approx(0.4) and not near.correct
    assert rewards.score("12", "12", "q").reward == pytest.approx(1.5)


def test_weighted_sum_and_accuracy():
    cfg = RewardConfig(numeric=1.0, format=0.5, format_pattern=r"is \d+\.$", length=0.25, length_target=10)
    rewards = Rewards(cfg)
    right = rewards.score("7 plus 5 is 12.", "12", "What is 7 plus 5?")  # 15 chars: length -0.5
    assert right.reward == pytest.approx(1.0 + 0.5 - 0.25 * 0.5) and right.correct and right.errors == 0
    wrong = rewards.score("It is 13.", "12", "q")
    assert wrong.reward == pytest.approx(0.5) and not wrong.correct
    # with no answer term, a completion is right when its reward is positive
    shape_only = Rewards(RewardConfig(numeric=0.0, format=1.0, format_pattern="yes"))
    assert shape_only.score("yes", "12", "q").correct and not shape_only.score("no", "12", "q").correct
    # every answer term must give 1
    both = Rewards(RewardConfig(numeric=1.0, exact=1.0))
    assert both.score("12", "12", "q").correct and not both.score("it is 12", "12", "q").correct


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def score(completion, answer, prompt):
            if "boom" in completion:
                raise ValueError("cannot score this")
            if "text" in completion:
                return "high"
            return float(len(completion) == len(answer))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards.score"
    sys.modules.pop("my_rewards", None)


def test_a_users_function_is_weighted_and_a_raising_one_is_reported_not_fatal(user_module, caplog):
    rewards = Rewards(RewardConfig(numeric=1.0, function=FunctionReward(user_module, weight=2.0)))
    assert rewards.score("12", "12", "q").reward == 3.0
    with caplog.at_level(logging.WARNING, logger="zer02llm.training.rewards"):
        boom = rewards.score("boom 12", "12", "What is 7 plus 5?")
        text = rewards.score("text 12", "12", "q")
    assert boom.reward == 1.0 and boom.errors == 1 and boom.correct  # the numeric term still counts
    assert text.reward == 1.0 and text.errors == 1
    assert rewards.errors == 2
    logged = caplog.text
    assert "ValueError: cannot score this" in logged and "'boom 12'" in logged and "What is 7 plus 5?" in logged
    assert "returned 'high', not a finite number" in logged


def test_a_function_that_cannot_be_imported_names_its_key(tmp_path):
    with pytest.raises(ConfigError, match=r"reward.function._target_=no_such_module_here.score: cannot import"):
        Rewards(RewardConfig(function=FunctionReward("no_such_module_here.score")))
    with pytest.raises(ConfigError, match=r"reward.function._target_=math.no_such: math has no function 'no_such'"):
        Rewards(RewardConfig(function=FunctionReward("math.no_such")))


def test_bad_reward_settings_are_refused_each_with_its_key():
    problems = "\n".join(reward_problems(RewardConfig(numeric=0.0)))
    assert "every reward weight is 0" in problems
    problems = "\n".join(reward_problems(RewardConfig(numeric_rule="first", regex=1.0, pattern="(",
                                                      format=1.0, length=1.0, length_target=0,
                                                      closeness=1.0, closeness_scale=0.0,
                                                      function=FunctionReward("score"))))
    for expected in ("reward.numeric_rule='first'", "reward.closeness_scale=0.0: must be > 0", "reward.pattern='(' is not a regular expression",
                     "reward.format_pattern is empty", "reward.length_target=0", "reward.function._target_='score'"):
        assert expected in problems
    assert reward_problems(RewardConfig()) == []


def test_prompt_numbers_counts_the_questions_numbers_restated_at_the_start():
    from zer02llm.training.rewards import prompt_numbers

    assert prompt_numbers("7 plus 5 is 12.", "12", "What is 7 plus 5?") == 1.0
    assert prompt_numbers("7 plus 4 is 11.", "12", "What is 7 plus 5?") == 0.5
    assert prompt_numbers("4 plus 5 is 9.", "12", "What is 7 plus 5?") == 0.0  # in order, from the start
    assert prompt_numbers("3 7 5 9", "12", "What is 7 plus 5?") == 0.0  # listing numbers earns nothing
    assert prompt_numbers("7减7等于0。", "0", "7减7等于多少？") == 1.0
    assert prompt_numbers("12", "12", "no numbers here") == 0.0
    shipped = Rewards(RewardConfig(numeric_rule="last",
                                   function=FunctionReward("zer02llm.training.rewards.prompt_numbers", 0.5)))
    assert shipped.score("7 plus 5 is 12.", "12", "What is 7 plus 5?").reward == 1.5
    assert shipped.score("7 plus 4 is 12.", "12", "What is 7 plus 5?").reward == 1.25
