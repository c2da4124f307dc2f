"""Answer extraction: GSM8K's `#### n`, the last number, regexes, exact text; numbers compared as numbers."""

from __future__ import annotations

import pytest

from zer02llm.evals.extract import answers_match, extract, normalize_number, reference_answer


@pytest.mark.parametrize("text, how, expected", [
    ("He runs 5*12=60 miles\nThat is 6 hours\n#### 6", "gsm8k", "6"),
    ("The loss is 3 dollars.\n#### -3", "gsm8k", "-3"),
    ("#### 1,234", "gsm8k", "1,234"),
    ("so #### $18.50", "gsm8k", "$18.50"),
    ("no marker here, just 42", "gsm8k", None),
    ("#### ", "gsm8k", None),
    ("first 3, then 4, finally 10.", "last_number", "10"),
    ("It fell to -7 degrees.", "last_number", "-7"),
    ("Between 5-3 there is 2", "last_number", "2"),
    ("5-3", "last_number", "3"),  # a minus between numbers is not a sign
    ("a total of 1,234,567 grains", "last_number", "1,234,567"),
    ("It costs $0.75.", "last_number", "$0.75"),
    ("4加13等于17。", "last_number", "17"),  # Chinese characters touching the number
    ("model x2 has no number", "last_number", None),
    ("I do not know.", "last_number", None),
    ("", "last_number", None),
    ("  Paris \n", "exact", "Paris"),
    ("   ", "exact", None),
    ("The answer is (B).", r"regex:\(([A-D])\)", "B"),
    ("answer: C", "regex:[A-D]$", "C"),
    ("nothing", r"regex:\(([A-D])\)", None),
])
def test_extract(text, how, expected):
    assert extract(text, how) == expected


@pytest.mark.parametrize("predicted, reference, same", [
    ("1,234", "1234", True), ("$5", "5", True), ("7.0", "7", True), ("7.", "7", True),
    ("-5", "5", False), ("12", "21", False), ("Paris", "Paris", True), ("paris", "Paris", False),
    (None, "3", False),
])
def test_answers_compare_as_numbers_when_both_are(predicted, reference, same):
    assert answers_match(predicted, reference) is same


def test_a_reference_without_a_match_is_the_whole_answer():
    assert reference_answer("72", "gsm8k") == "72"
    assert reference_answer("work...\n#### 72", "gsm8k") == "72"
    assert normalize_number("seventy") is None
