"""Reading an answer out of a reply (generative tasks), and deciding whether two answers agree.

The same extractor reads the item's reference answer and the model's reply, so a GSM8K solution
("... #### 1,234") and a bare "1234" are both the answer 1234. Numbers compare as numbers: "1,234",
"1234.0" and "$1234" agree; "-5" and "5" do not.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Optional

# a number as people write it: a sign, thousands commas, a decimal part ("-1,234.5", "$12", ".5"); not the
# tail of a Latin word or of another number ("x2", "5-3" reads 5 and 3); Chinese text may touch it ("等于17")
_NUMBER_RE = re.compile(r"(?<![0-9A-Za-z_.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![0-9A-Za-z_.])-?\.\d+")
_GSM8K_RE = re.compile(r"####\s*(-?\$?\s?[\d,]*\.?\d+)")


def extract(text: str, how: str) -> Optional[str]:
    """The answer in `text` by `how` (gsm8k, last_number, exact, regex:<pattern>), or None when there is none."""
    if how == "gsm8k":
        found = _GSM8K_RE.findall(text)
        return found[-1] if found else None
    if how == "last_number":
        found = _NUMBER_RE.findall(text)
        return found[-1] if found else None
    if how == "exact":
        return text.strip() or None
    if how.startswith("regex:"):
        match = re.search(how[len("regex:"):], text)
        if match is None:
            return None
        return match.group(1) if match.groups() else match.group(0)
    raise ValueError(f"extract={how!r}: must be gsm8k, last_number, exact or regex:<pattern>")


def normalize_number(text: str) -> Optional[Decimal]:
    """`text` as a number when it is one ("1,234", "$5", "-3.50", "7."), else None."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def reference_answer(answer: str, how: str) -> str:
    """The item's answer as the extractor reads it; the whole answer when it holds no match (a bare "72")."""
    found = extract(answer, how)
    return found if found is not None else answer.strip()


def answers_match(predicted: Optional[str], reference: str) -> bool:
    """Equal as numbers when both are numbers, else equal as stripped text."""
    if predicted is None:
        return False
    a, b = normalize_number(predicted), normalize_number(reference)
    if a is not None and b is not None:
        return a == b
    return predicted.strip() == reference.strip()
