#!/usr/bin/env python3
"""Build the shipped DPO sample, `zer02llm/sample_data/dpo.jsonl` and `dpo_val.jsonl`, from the SFT sample.

Each SFT conversation becomes one preference pair in minimind's DPO format,
`{"chosen": [messages...], "rejected": [messages...]}`: both sides hold the conversation up to its
final assistant turn; "chosen" ends with the conversation's own answer, "rejected" with a worse one:

- an answer that states a number gets a wrong final number: the last number written in digits, or
  the last English number (zero to ninety-nine) after "is", "are", "equals", "has", "after"..., or
  the Chinese numeral after the last 等于/是 ("equals", "is"), moved by 1 to 3, the rest unchanged;
- any other answer (colours, days, stories, greetings) is swapped for another conversation's final
  answer in the same language.

So `dpo.jsonl` comes from `sft.jsonl` and `dpo_val.jsonl` from `sft_val.jsonl` (which share no
conversation; a validation pair whose prompt is also a training prompt is left out), and the output
depends only on `--seed`. Standard library only.

    python scripts/make_dpo_data.py                  # the shipped files (seed 0, at most 400 training pairs)
    python scripts/make_dpo_data.py --sft path/to/sft.jsonl --out /tmp/pairs.jsonl --max-pairs 2000
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Optional

REPO_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_DIR / "zer02llm" / "sample_data"
EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
# a number word stating a result ("is twelve", "has four", "comes after ten"), not "One rainy day"
EN_RESULT = re.compile(r"\b(?:is|are|equals|has|have|needs?|after|before|makes|gets?)\s+([a-z]+(?:-[a-z]+)?)\b")
ZH_DIGITS = "零一二三四五六七八九"
ZH_AFTER_EQUALS = re.compile(r"(等于|是)([零一二两三四五六七八九十百]+)")
DIGITS = re.compile(r"\d+")


def en_number(n: int) -> str:
    """0..99 in English words (seven, twenty, twenty-seven)."""
    if n < 20:
        return EN_ONES[n]
    tens, ones = divmod(n, 10)
    return EN_TENS[tens] + (f"-{EN_ONES[ones]}" if ones else "")


EN_VALUES = {en_number(n): n for n in range(100)}


def zh_number(n: int) -> str:
    """0..99 in Chinese numerals (十二, 二十, 二十五)."""
    if n < 10:
        return ZH_DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else ZH_DIGITS[tens]) + "十" + (ZH_DIGITS[ones] if ones else "")


def zh_value(text: str) -> Optional[int]:
    """The value of a Chinese numeral of 0..99, or None."""
    for n in range(100):
        if zh_number(n) == text or (n == 2 and text == "两"):
            return n
    return None


def wrong(n: int, rng: random.Random, top: int) -> int:
    """A number near n, never n, in [0, top]."""
    choices = [m for m in range(max(0, n - 3), min(top, n + 3) + 1) if m != n]
    return rng.choice(choices)


def wrong_number(answer: str, rng: random.Random) -> Optional[str]:
    """`answer` with its final number made wrong, or None when it states no number."""
    digits = list(DIGITS.finditer(answer))
    if digits:
        last = digits[-1]
        n = int(last.group())
        return answer[:last.start()] + str(wrong(n, rng, max(n + 3, 10))) + answer[last.end():]
    words = [m for m in EN_RESULT.finditer(answer) if m.group(1) in EN_VALUES]
    if words:
        last = words[-1]
        return answer[:last.start(1)] + en_number(wrong(EN_VALUES[last.group(1)], rng, 99)) + answer[last.end(1):]
    zh = [m for m in ZH_AFTER_EQUALS.finditer(answer) if zh_value(m.group(2)) is not None]
    if zh:
        last = zh[-1]
        return answer[:last.start(2)] + zh_number(wrong(zh_value(last.group(2)), rng, 99)) + answer[last.end(2):]
    return None


def is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def make_pairs(conversations: list[list[dict]], rng: random.Random) -> tuple[list[dict], list[str]]:
    """One pair per conversation that ends with an assistant turn (in order), and how each rejected answer
    was made ("number" or "swap")."""
    usable = [c for c in conversations if c and c[-1]["role"] == "assistant" and len(c) >= 2]
    answers = {lang: sorted({c[-1]["content"] for c in usable if is_chinese(c[-1]["content"]) == lang})
               for lang in (False, True)}
    pairs, kinds = [], []
    for turns in usable:
        answer = turns[-1]["content"]
        rejected = wrong_number(answer, rng)
        kinds.append("number")
        if rejected is None or rejected == answer:
            kinds[-1] = "swap"
            pool = [a for a in answers[is_chinese(answer)] if a != answer]
            rejected = rng.choice(pool)
        prompt = [{"role": t["role"], "content": t["content"]} for t in turns[:-1]]
        pairs.append({"chosen": prompt + [{"role": "assistant", "content": answer}],
                      "rejected": prompt + [{"role": "assistant", "content": rejected}]})
    return pairs, kinds


def check(pairs: list[dict]) -> list[str]:
    """What is wrong with the pairs (empty when every one is a valid DPO pair), checked from the JSON alone."""
    problems = []
    for n, pair in enumerate(pairs, start=1):
        chosen, rejected = pair["chosen"], pair["rejected"]
        if chosen[:-1] != rejected[:-1] or not chosen[:-1]:
            problems.append(f"pair {n}: the prompts differ or are empty")
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            problems.append(f"pair {n}: a side does not end with an assistant turn")
        if chosen[-1]["content"] == rejected[-1]["content"]:
            problems.append(f"pair {n}: chosen and rejected give the same answer")
    return problems


def read_conversations(path: Path) -> list[list[dict]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["conversations"] for line in f if line.strip()]


def write(path: Path, pairs: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")


def prompt_key(pair: dict) -> str:
    return json.dumps(pair["chosen"][:-1], ensure_ascii=False)


def build(sft: Path, out: Path, seed: int, max_pairs: int, avoid: frozenset[str] = frozenset()
          ) -> tuple[list[dict], list[str]]:
    """Pairs of the SFT file `sft` written to `out` (the first `max_pairs`; <= 0: all), and their kinds;
    pairs whose prompt is in `avoid` (the training file's, for the validation file) are left out."""
    conversations = read_conversations(sft)
    pairs, kinds = make_pairs(conversations, random.Random(seed))
    kept = [k for k, pair in enumerate(pairs) if prompt_key(pair) not in avoid]
    pairs, kinds = [pairs[k] for k in kept], [kinds[k] for k in kept]
    if max_pairs > 0:
        pairs, kinds = pairs[:max_pairs], kinds[:max_pairs]
    problems = check(pairs)
    if problems:
        sys.exit(f"{out}: {len(problems)} bad pair(s): " + "; ".join(problems[:5]))
    write(out, pairs)
    return pairs, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft", type=Path, help="build one file from this SFT JSONL instead of the shipped sample")
    parser.add_argument("--out", type=Path, help="with --sft: the DPO JSONL to write")
    parser.add_argument("--max-pairs", type=int, default=400, help="pairs kept of the training file (<= 0: all)")
    parser.add_argument("--out-dir", type=Path, default=SAMPLE_DIR)
    args = parser.parse_args()
    if args.sft is not None:
        if args.out is None:
            parser.error("--sft needs --out")
        jobs = [(args.sft, args.out, args.seed, args.max_pairs)]
    else:
        jobs = [(SAMPLE_DIR / "sft.jsonl", args.out_dir / "dpo.jsonl", args.seed, args.max_pairs),
                (SAMPLE_DIR / "sft_val.jsonl", args.out_dir / "dpo_val.jsonl", args.seed + 1, 0)]
    avoid: frozenset[str] = frozenset()
    for sft, out, seed, max_pairs in jobs:
        pairs, kinds = build(sft, out, seed, max_pairs, avoid)
        avoid = frozenset(prompt_key(pair) for pair in pairs)  # the validation file shares no prompt with it
        print(f"{out}: {len(pairs)} pairs ({out.stat().st_size / 1024:.0f} KiB), {kinds.count('number')} with a "
              f"wrong number, {kinds.count('swap')} with another conversation's answer")


if __name__ == "__main__":
    main()
