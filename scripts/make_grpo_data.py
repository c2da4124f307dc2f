#!/usr/bin/env python3
"""Build the shipped GRPO sample, `zer02llm/sample_data/grpo.jsonl` and `grpo_val.jsonl`: arithmetic prompts.

The sums are those of the sample corpus (scripts/make_sample_corpus.py: a + b with a, b in 1..20;
a - b with 1 <= b <= a <= 30; a * b with a, b in 2..10), asked as the SFT sample asks them ("What is 7
plus 5?", "7加5等于多少？", digits only), with the result as the answer: `{"prompt": ..., "answer": "12"}`.
The held-out split: every sum that the pretraining or SFT sample already states (in digits, in either
language) is left out, so rewards measure sums the model never saw; the rest is shuffled and cut into a
validation file (--val sums) and a training file (the rest, at most --train). 60% English, 40% Chinese.
The output depends only on --seed. Standard library only.

    python scripts/make_grpo_data.py             # the shipped files (seed 0, 100 validation prompts)
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_DIR / "zer02llm" / "sample_data"
OPS = {"+": ("plus", "加"), "-": ("minus", "减"), "*": ("times", "乘以")}
SEEN = [re.compile(r"(\d+) (plus|minus|times) (\d+)"), re.compile(r"(\d+)(加|减|乘以)(\d+)")]
WORD_OP = {"plus": "+", "minus": "-", "times": "*", "加": "+", "减": "-", "乘以": "*"}
EN_QUESTIONS = ["What is {a} {op} {b}?", "How much is {a} {op} {b}?", "What does {a} {op} {b} equal?",
                "Can you tell me what {a} {op} {b} is?"]
ZH_QUESTIONS = ["{a}{op}{b}等于多少？", "{a}{op}{b}等于几？", "{a}{op}{b}是多少？", "请问{a}{op}{b}等于多少？"]


def all_sums() -> list[tuple[int, str, int]]:
    """Every sum in the sample corpus's ranges."""
    sums = [(a, "+", b) for a in range(1, 21) for b in range(1, 21)]
    sums += [(a, "-", b) for a in range(2, 31) for b in range(1, a + 1)]
    sums += [(a, "*", b) for a in range(2, 11) for b in range(2, 11)]
    return sums


def seen_sums(paths: list[Path]) -> set[tuple[int, str, int]]:
    """Sums written in digits anywhere in these JSONL files."""
    seen = set()
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for pattern in SEEN:
            seen.update((int(a), WORD_OP[op], int(b)) for a, op, b in pattern.findall(text))
    return seen


def result(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def record(rng: random.Random, a: int, op: str, b: int) -> dict:
    if rng.random() < 0.6:
        prompt = rng.choice(EN_QUESTIONS).format(a=a, op=OPS[op][0], b=b)
    else:
        prompt = rng.choice(ZH_QUESTIONS).format(a=a, op=OPS[op][1], b=b)
    return {"prompt": prompt, "answer": str(result(a, op, b))}


def write(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=int, default=100, help="validation prompts")
    parser.add_argument("--train", type=int, default=600, help="at most this many training prompts")
    parser.add_argument("--out-dir", type=Path, default=SAMPLE_DIR)
    args = parser.parse_args()
    seen = seen_sums([SAMPLE_DIR / name for name in ("pretrain.jsonl", "val.jsonl", "sft.jsonl", "sft_val.jsonl")])
    rng = random.Random(args.seed)
    fresh = [s for s in all_sums() if s not in seen]
    rng.shuffle(fresh)
    val, train = fresh[:args.val], fresh[args.val:args.val + args.train]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write(args.out_dir / "grpo_val.jsonl", [record(rng, *s) for s in val])
    write(args.out_dir / "grpo.jsonl", [record(rng, *s) for s in train])
    print(f"{len(all_sums())} sums in range, {len(seen & set(all_sums()))} already in the corpus: "
          f"{len(train)} training and {len(val)} validation prompts in {args.out_dir}")


if __name__ == "__main__":
    main()
