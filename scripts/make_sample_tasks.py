#!/usr/bin/env python3
"""Generate the evaluation tasks shipped for the sample corpus, `zer02llm/sample_data/tasks/`.

Each task asks what the corpus states again and again (days, months, colours, animals: multiple choice;
sums: generative), in English and Chinese, in the corpus's own phrasing, so that the one-minute CPU run's
model scores above chance where it has learnt something. The facts come from the word lists of
make_sample_corpus.py (imported, one source of truth), and every item is checked against them before
writing: the right choice completes a sentence the corpus generator writes, and no distractor is right too.

    python scripts/make_sample_tasks.py          # the shipped files (seed 0)

Standard library only; the same seed always gives the same files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE.parent / "zer02llm" / "sample_data" / "tasks"
NUM_CHOICES = 4


def corpus_module():
    spec = importlib.util.spec_from_file_location("make_sample_corpus", HERE / "make_sample_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def choice_item(rng: random.Random, context: str, right: str, pool: list[str], space: str) -> dict:
    """A multiple-choice item: `right` and NUM_CHOICES - 1 other answers of `pool`, in a seeded order; the
    choices carry their own leading space (`space`), so one task holds English and Chinese items."""
    others = rng.sample([p for p in dict.fromkeys(pool) if p != right], NUM_CHOICES - 1)
    choices = others + [right]
    rng.shuffle(choices)
    return {"context": context, "choices": [space + c for c in choices], "answer": choices.index(right)}


def days(c, rng: random.Random) -> list[dict]:
    items = []
    for i in range(7):
        en = lambda k: c.EN_DAYS[(i + k) % 7]  # noqa: E731
        zh = lambda k: c.ZH_DAYS[(i + k) % 7]  # noqa: E731
        for context, right in ((f"Today is {en(0)}. Yesterday was {en(-1)}, and tomorrow will be", en(1)),
                               (f"{en(0)} comes after {en(-1)} and before", en(1)),
                               (f"Today is {en(0)}. The day after tomorrow will be", en(2))):
            items.append(choice_item(rng, context, right, c.EN_DAYS, " "))
        for context, right in ((f"今天是{zh(0)}。昨天是{zh(-1)}，明天是", zh(1)),
                               (f"{zh(-1)}过后是{zh(0)}，{zh(0)}过后是", zh(1)),
                               (f"今天是{zh(0)}。后天是", zh(2))):
            items.append(choice_item(rng, context, right, c.ZH_DAYS, ""))
    return items


def months(c, rng: random.Random) -> list[dict]:
    items = []
    zh_months = [f"{c.zh_num(m + 1)}月" for m in range(12)]
    for m in range(12):
        items.append(choice_item(rng, f"There are twelve months in a year, and {c.EN_MONTHS[m]} comes after",
                                 c.EN_MONTHS[m - 1], c.EN_MONTHS, " "))
        items.append(choice_item(rng, f"一年有十二个月，{zh_months[m - 1]}过后是", zh_months[m], zh_months, ""))
    return items


# (English context, answer, Chinese context, answer): each a sentence of COLOUR_FACTS or COLOUR_MIXES cut
# before its colour; checked against them below
COLOUR_QUESTIONS = [
    ("On a clear day, the sky is", "blue", "晴天的时候，天空是", "蓝色"),
    ("Grass is", "green", "草是", "绿色"), ("Snow is", "white", "雪是", "白色"),
    ("Ripe bananas are", "yellow", "熟了的香蕉是", "黄色"), ("Strawberries are", "red", "草莓是", "红色"),
    ("Coal is", "black", "煤是", "黑色"), ("Carrots are", "orange", "胡萝卜是", "橙色"),
    ("Chocolate is", "brown", "巧克力是", "棕色"), ("Lemons are", "yellow", "柠檬是", "黄色"),
    ("Blue and yellow make", "green", "蓝色和黄色混在一起会变成", "绿色"),
    ("Red and yellow make", "orange", "红色和黄色混在一起会变成", "橙色"),
    ("Red and blue make", "purple", "红色和蓝色混在一起会变成", "紫色"),
    ("Red and white make", "pink", "红色和白色混在一起会变成", "粉色"),
    ("Black and white make", "grey", "黑色和白色混在一起会变成", "灰色"),
]


def colours(c, rng: random.Random) -> list[dict]:
    facts = {en for en, _ in c.COLOUR_FACTS + c.COLOUR_MIXES} | {zh for _, zh in c.COLOUR_FACTS + c.COLOUR_MIXES}
    en_pool = [en for en, _ in c.COLOURS.values()]
    zh_pool = [zh for _, zh in c.COLOURS.values()]
    items = []
    for en_context, en_right, zh_context, zh_right in COLOUR_QUESTIONS:
        assert f"{en_context} {en_right}." in facts, en_context
        assert f"{zh_context}{zh_right}的。" in facts or f"{zh_context}{zh_right}。" in facts, zh_context
        items.append(choice_item(rng, en_context, en_right, en_pool, " "))
        items.append(choice_item(rng, zh_context, zh_right, zh_pool, ""))
    return items


def animals(c, rng: random.Random) -> list[dict]:
    items = []
    en_legs = [f"{c.en_num(n)} legs" for n in (2, 4, 6, 8)]
    zh_legs = [f"{c.zh_count(n)}条腿" for n in (2, 4, 6, 8)]
    sounds = [(en, zh) for en, zh in c.ANIMAL_FACTS if " says " in en]
    en_sounds = [en.split(" says ")[1].rstrip(".") for en, _ in sounds]
    zh_sounds = [zh[-4:-1] for _, zh in sounds]  # 小狗汪汪叫。 -> 汪汪叫
    for (en, zh), en_sound, zh_sound in zip(sounds, en_sounds, zh_sounds):
        assert zh.endswith(zh_sound + "。"), zh
        items.append(choice_item(rng, en.split(" says ")[0] + " says", en_sound, en_sounds, " "))
        items.append(choice_item(rng, zh[:-4], zh_sound, zh_sounds, ""))
    for animal in c.ANIMALS.values():
        if animal["legs"] is None:
            continue
        # as en_legs and zh_legs write it: "Each dog has four legs", "每只狗有四条腿"
        items.append(choice_item(rng, f"Each {animal['en']} has", f"{c.en_num(animal['legs'])} legs", en_legs, " "))
        items.append(choice_item(rng, f"每{animal['mw']}{animal['zh']}有", f"{c.zh_count(animal['legs'])}条腿",
                                 zh_legs, ""))
    for en, zh, legs in (("A spider has", "蜘蛛有", 8), ("An insect has", "昆虫有", 6)):
        assert any(fact.startswith(f"{en} {c.en_num(legs)} legs") for fact, _ in c.ANIMAL_FACTS), en
        items.append(choice_item(rng, en, f"{c.en_num(legs)} legs", en_legs, " "))
        items.append(choice_item(rng, zh, f"{c.zh_count(legs)}条腿", zh_legs, ""))
    return items


def sums(c, rng: random.Random) -> list[dict]:
    """Questions as the SFT data asks them, answers as it gives them ("3 plus 4 is 7."): read by the last number."""
    items = []
    for _ in range(20):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        items.append({"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}."})
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        items.append({"question": f"{a}加{b}等于多少？", "answer": f"{a}加{b}等于{a + b}。"})
    return items


SUITE = """\
# The suite `tasks=sample`: what the sample corpus teaches, asked back (scripts/make_sample_tasks.py).
# Multiple choice among 4 (chance 0.25); sums are generative, read by the last number (chance 0).
tasks:
  - {path: days.jsonl, delimiter: ""}
  - {path: months.jsonl, delimiter: ""}
  - {path: colours.jsonl, delimiter: ""}
  - {path: animals.jsonl, delimiter: ""}
  # a pretrained model continues "What is 3 plus 4? 3 plus 4 is 7. What is ..."; an SFT model is asked in chat
  - {path: sums.jsonl, num_fewshot: 3, template: "{question}", fewshot_delimiter: " ",
     stop: ["\\n", "What is", "等于多少"], max_new_tokens: 24, extract: last_number}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    c = corpus_module()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for index, make in enumerate((days, months, colours, animals, sums)):
        items = make(c, random.Random(args.seed * 100 + index))
        for item in items:
            if "choices" in item:  # exactly one right choice, and it is the one marked
                assert len(set(item["choices"])) == NUM_CHOICES, item
        path = args.out_dir / f"{make.__name__}.jsonl"
        path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
        print(f"{path}: {len(items)} items")
    (args.out_dir / "sample.yaml").write_text(SUITE, encoding="utf-8")


if __name__ == "__main__":
    main()
