"""Rewards a program checks: what a GRPO completion scores (the `reward` config group, conf/reward/).

Each term is a function (completion, answer, prompt) -> float; the reward is the weighted sum of the
terms with a non-zero weight (RewardConfig in zer02llm/config.py):

- numeric: 1 when the completion's number equals the answer's. Rules: "gsm8k", the first number after
  the last "####" (none: no credit); "last", the last number; "auto", gsm8k when the text holds "####",
  else last. The reference answer is read by "auto" too, so a GSM8K solution ("... #### 72") works as
  the answer as it stands. Numbers may carry a sign, thousands commas ("1,000") and decimals; they are
  compared as numbers (12 equals 12.0).
- closeness: partial credit for a near number, max(0, 1 - |error| / closeness_scale) of the number the
  numeric rule reads: 1 when right, 0 from closeness_scale away. A shape term, not an answer term: a
  model that cannot yet compute an answer can still learn its size.
- exact: 1 when the completion, stripped, equals the answer, stripped.
- regex: 1 when reward.pattern is found in the completion; "{answer}" in it stands for the answer, escaped.
- format: 1 when reward.format_pattern is found in the completion.
- length: 0 up to length_target characters, falling linearly to -1 at twice that.
- function: a user's function named by its import path (reward.function._target_).

Answer terms (numeric, exact, regex) decide `correct`, the accuracy figure: all of them give 1 (with
none on: the reward is > 0). A term that raises, or returns something that is not a finite number,
gives 0 for that completion; the error is counted and the first few are logged with the sample, so one
bad completion never ends a run.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from dataclasses import dataclass
from typing import Callable, Optional

from zer02llm.config import ConfigError, RewardConfig

log = logging.getLogger(__name__)
RewardFunction = Callable[[str, str, str], float]
# a sign only when no digit precedes it ("5-3" is five and three); thousands commas only in groups of 3
NUMBER = re.compile(r"(?<![\d])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
REPORTED_ERRORS = 5  # errors logged with their sample; the rest are counted


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def extract_number(text: str, rule: str = "auto") -> Optional[float]:
    """The number `text` gives as its answer under `rule` (see the module docstring), or None."""
    if rule == "auto":
        rule = "gsm8k" if "####" in text else "last"
    if rule == "gsm8k":
        at = text.rfind("####")
        if at < 0:
            return None
        found = NUMBER.search(text, at + 4)
        return _number(found.group()) if found else None
    if rule == "last":
        found = NUMBER.findall(text)
        return _number(found[-1]) if found else None
    raise ValueError(f"reward.numeric_rule={rule!r}: must be auto, gsm8k or last")


def numeric_match(completion: str, answer: str, rule: str = "auto") -> float:
    expected = extract_number(answer, "auto")
    got = extract_number(completion, rule)
    if expected is None or got is None:
        return 0.0
    return 1.0 if math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9) else 0.0


def closeness(completion: str, answer: str, rule: str = "auto", scale: float = 10.0) -> float:
    """max(0, 1 - |got - expected| / scale); 0 when either number is missing."""
    expected = extract_number(answer, "auto")
    got = extract_number(completion, rule)
    if expected is None or got is None:
        return 0.0
    return max(0.0, 1.0 - abs(got - expected) / scale)


def exact_match(completion: str, answer: str) -> float:
    return 1.0 if completion.strip() == answer.strip() else 0.0


def regex_match(completion: str, answer: str, pattern: str) -> float:
    return 1.0 if re.search(pattern.replace("{answer}", re.escape(answer.strip())), completion) else 0.0


def format_match(completion: str, pattern: str) -> float:
    return 1.0 if re.search(pattern, completion) else 0.0


def length_penalty(completion: str, target: int) -> float:
    """0 up to `target` characters, then down linearly to -1 at 2 * target (and no lower)."""
    over = len(completion) - target
    return -min(1.0, over / target) if over > 0 else 0.0


def prompt_numbers(completion: str, answer: str, prompt: str) -> float:
    """How far the completion opens by restating the prompt's numbers in order ("7 plus 5 is ..." for
    "What is 7 plus 5?"): the share of the prompt's numbers matched before the first mismatch. A process
    term for arithmetic that a small model learns long before the sums themselves; only the opening
    counts, so listing numbers earns nothing. For reward.function._target_ (conf/reward/sums.yaml)."""
    wanted = [_number(n) for n in NUMBER.findall(prompt)]
    if not wanted:
        return 0.0
    given = [_number(n) for n in NUMBER.findall(completion)]
    matched = 0
    for want, got in zip(wanted, given):
        if want != got:
            break
        matched += 1
    return matched / len(wanted)


def import_function(path: str, key: str = "reward.function._target_") -> RewardFunction:
    """The callable at `path` ("package.module.name"); a ConfigError naming `key` when it cannot be had."""
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}={path}: cannot import {module_name!r} ({e}); put the module on PYTHONPATH "
                          f"(e.g. a file {module_name.replace('.', '/')}.py in the working directory)") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{key}={path}: {module_name} has no function {name!r}; give "
                          f"module.function, a function (completion, answer, prompt) -> float")
    return function


@dataclass
class Term:
    name: str
    weight: float
    function: RewardFunction
    checks_answer: bool  # an answer term: it decides `correct`


@dataclass
class Scored:
    reward: float
    correct: bool
    errors: int  # terms that raised or returned no number (each counted as 0)


def build_terms(cfg: RewardConfig) -> list[Term]:
    """The terms of `cfg` with a non-zero weight."""
    terms = [
        Term("numeric", cfg.numeric, lambda c, a, p: numeric_match(c, a, cfg.numeric_rule), True),
        Term("closeness", cfg.closeness, lambda c, a, p: closeness(c, a, cfg.numeric_rule, cfg.closeness_scale), False),
        Term("exact", cfg.exact, lambda c, a, p: exact_match(c, a), True),
        Term("regex", cfg.regex, lambda c, a, p: regex_match(c, a, cfg.pattern or ""), True),
        Term("format", cfg.format, lambda c, a, p: format_match(c, cfg.format_pattern or ""), False),
        Term("length", cfg.length, lambda c, a, p: length_penalty(c, cfg.length_target), False),
    ]
    if cfg.function._target_ is not None:
        terms.append(Term(cfg.function._target_, cfg.function.weight, import_function(cfg.function._target_), False))
    return [term for term in terms if term.weight != 0]


class Rewards:
    """The reward of a completion: the weighted sum of the configured terms, errors contained."""

    def __init__(self, cfg: RewardConfig):
        self.terms = build_terms(cfg)
        self.errors = 0  # over the run so far, on this rank

    def score(self, completion: str, answer: str, prompt: str) -> Scored:
        total, correct, errors = 0.0, True, 0
        any_answer_term = False
        for term in self.terms:
            try:
                value = term.function(completion, answer, prompt)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise TypeError(f"returned {value!r}, not a finite number")
                value = float(value)
            except Exception as e:  # a user's function may raise anything: the sample is reported, not fatal
                errors += 1
                self.errors += 1
                if self.errors <= REPORTED_ERRORS:
                    log.warning("reward term %s failed (%s: %s), scored 0, on prompt %r, completion %r, answer %r%s",
                                term.name, type(e).__name__, e, prompt[:200], completion[:200], answer[:200],
                                "; further failures are counted in reward_errors only"
                                if self.errors == REPORTED_ERRORS else "")
                value = 0.0
            total += term.weight * value
            if term.checks_answer:
                any_answer_term = True
                correct = correct and value == 1.0
        return Scored(total, correct if any_answer_term else total > 0, errors)


__all__ = ["Rewards", "Scored", "build_terms", "closeness", "exact_match", "extract_number", "format_match",
           "import_function", "length_penalty", "numeric_match", "prompt_numbers", "regex_match"]
