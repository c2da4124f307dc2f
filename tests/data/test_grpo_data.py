"""GRPO's prompt data (zer02llm/data/grpo.py): the two record forms, bad lines skipped and counted or fatal
with strict, prompts too long for seq_len left out, and the shipped sample held out from the corpus."""

from __future__ import annotations

import json
import logging
import re

import pytest

from zer02llm.data.grpo import prompt_dataset
from zer02llm.data.jsonl import DataError
from zer02llm.data.sft import ChatTemplate
from zer02llm.resources import sample_data_path
from zer02llm.tokenizer import Tokenizer

from conftest import write_jsonl

GOOD = [{"prompt": "What is 2 plus 3?", "answer": "5"},
        {"conversations": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "4 times 2?"}],
         "answer": 8}]
BAD = {"expected a JSON object": ["not an object"],
       'missing "answer"': {"prompt": "What is 2 plus 3?"},
       'empty "answer"': {"prompt": "What is 2 plus 3?", "answer": ""},
       '"answer" is a bool': {"prompt": "What is 2 plus 3?", "answer": True},
       "not both": {"prompt": "Hi", "conversations": [{"role": "user", "content": "Hi"}], "answer": "1"},
       "must end in a user turn": {"conversations": [{"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello"}], "answer": "1"},
       "system turn 2 is not the first turn": {"conversations": [{"role": "user", "content": "Hi"},
                                                                 {"role": "system", "content": "late"},
                                                                 {"role": "user", "content": "x"}], "answer": "1"},
       "empty content in turn 1": {"prompt": "   ", "answer": "1"},
       "DPO pairs": {"chosen": [], "rejected": []}}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


def test_both_forms_render_as_generation_prompts(tokenizer, tmp_path):
    data = prompt_dataset([write_jsonl(tmp_path / "p.jsonl", GOOD)], tokenizer, 200)
    template = ChatTemplate(tokenizer)
    assert len(data) == 2
    assert data.ids[0] == template.encode([{"role": "user", "content": "What is 2 plus 3?"}],
                                          add_generation_prompt=True)[0]
    assert tokenizer.decode(data.ids[1]).endswith(template.render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "4 times 2?"}],
        add_generation_prompt=True)[-20:])
    assert [p.answer for p in data.prompts] == ["5", "8"]  # numbers become text
    assert data.prompts[1].text == "4 times 2?"
    assert data.batch([1, 0])[0].tolist() == [1, 0]


def test_bad_lines_are_skipped_and_counted(tokenizer, tmp_path, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD[0], *BAD.values(), GOOD[1]])
    with caplog.at_level(logging.WARNING):
        data = prompt_dataset([path], tokenizer, 200)
    assert len(data) == 2
    assert f"skipped {len(BAD)} malformed line(s): line 2: expected a JSON object" in caplog.text


@pytest.mark.parametrize("reason", list(BAD))
def test_each_bad_line_is_fatal_with_its_reason_when_strict(tokenizer, tmp_path, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], BAD[reason]])
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{re.escape(reason)}") as e:
        prompt_dataset([path], tokenizer, 200, strict=True)
    assert "data.strict=true" in str(e.value)


def test_prompts_too_long_are_left_out_and_none_left_is_an_error(tokenizer, tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD[0], {"prompt": "word " * 200, "answer": "1"}])
    with caplog.at_level(logging.WARNING):
        data = prompt_dataset([path], tokenizer, 40)
    assert len(data) == 1 and "left out 1 prompt(s) longer than 40 tokens" in caplog.text
    with pytest.raises(DataError, match="no usable prompt"):
        prompt_dataset([path], tokenizer, 5)


def test_shipped_sums_are_held_out_from_the_corpus_and_answered_right():
    def sums(path):
        text = path.read_text(encoding="utf-8")
        found = set(re.findall(r"(\d+) (plus|minus|times) (\d+)", text))
        return found | {(a, {"加": "plus", "减": "minus", "乘以": "times"}[op], b)
                        for a, op, b in re.findall(r"(\d+)(加|减|乘以)(\d+)", text)}

    seen = set().union(*(sums(sample_data_path(n)) for n in ("pretrain.jsonl", "val.jsonl", "sft.jsonl",
                                                             "sft_val.jsonl")))
    train, val = (sample_data_path(n) for n in ("grpo.jsonl", "grpo_val.jsonl"))
    train_sums, val_sums = sums(train), sums(val)
    assert len(val_sums) == 100 and len(train_sums) > 400
    assert not (train_sums | val_sums) & seen and not train_sums & val_sums
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    for path in (train, val):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            ((a, op, b),) = sums_of(record["prompt"])
            assert int(record["answer"]) == ops[op](int(a), int(b))


def sums_of(text: str) -> list[tuple[str, str, str]]:
    en = re.findall(r"(\d+) (plus|minus|times) (\d+)", text)
    zh = [(a, {"加": "plus", "减": "minus", "乘以": "times"}[op], b) for a, op, b in re.findall(r"(\d+)(加|减|乘以)(\d+)", text)]
    return en + zh
