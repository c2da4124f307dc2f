"""scripts/convert_gsm8k.py: GSM8K's own records and SFT conversations ending in "#### n" become mode=grpo
prompts that the GRPO data loader reads and the numeric reward scores; other conversations are left out;
bad lines stop it with file, line and reason (exit 2), or are skipped with --skip-bad; the shared SFT
validation file's GSM8K part (skipped where ../shared is absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zer02llm.data.grpo import prompt_dataset
from zer02llm.tokenizer import Tokenizer
from zer02llm.training.rewards import numeric_match

from conftest import SHARED_DATA, write_jsonl

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_gsm8k.py"

SOLUTION = "He runs 5*12=60 miles a week\nThat means he runs 60/10=6 hours a week\n#### 6"
RECORDS = [
    {"question": "James runs 12 miles a day for 5 days. How many hours a week?", "answer": SOLUTION},
    {"question": "A farm sells 1200 eggs twice. How many?", "answer": "1200 * 2 = 2400\n#### 2,400"},
    {"conversations": [{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "Snow."}]},
    {"conversations": [{"role": "user", "content": "Tom has 3 apples and eats 5. What is left?"},
                       {"role": "assistant", "content": "3 - 5 = -2\n#### -2"}]},
    {"conversations": [{"role": "system", "content": "Think step by step."},
                       {"role": "user", "content": "Half of 7?"},
                       {"role": "assistant", "content": "7 / 2 = 3.5\n####  3.5 "}]},
    # a markdown heading is not a final answer line
    {"conversations": [{"role": "user", "content": "Explain."}, {"role": "assistant", "content": "#### Intro\ntext"}]},
]
# by hand, from the records above
EXPECTED = [
    {"prompt": RECORDS[0]["question"], "answer": "6"},
    {"prompt": RECORDS[1]["question"], "answer": "2400"},
    {"prompt": "Tom has 3 apples and eats 5. What is left?", "answer": "-2"},
    {"conversations": [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": "Half of 7?"}],
     "answer": "3.5"},
]


def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_both_forms_become_grpo_prompts_the_loader_and_reward_read(tmp_path):
    source = write_jsonl(tmp_path / "mixed.jsonl", RECORDS)
    proc = convert(str(source), "--out", "out/grpo.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(tmp_path / "out" / "grpo.jsonl") == EXPECTED
    assert "wrote 4 prompts" in proc.stdout and "2 conversations" in proc.stdout
    dataset = prompt_dataset([str(tmp_path / "out" / "grpo.jsonl")], Tokenizer.load(), 512, strict=True)
    assert len(dataset) == 4 and [p.answer for p in dataset.prompts] == ["6", "2400", "-2", "3.5"]
    # the numeric reward credits the model's own "#### n" against the converted answer
    assert numeric_match("so 60/10 = 6 hours\n#### 6", dataset.prompts[0].answer) == 1.0
    assert numeric_match("#### 2,400", dataset.prompts[1].answer) == 1.0
    assert numeric_match("#### 2", dataset.prompts[2].answer) == 0.0


@pytest.mark.parametrize("line,reason", [
    ('{"question": "How many?", "answer": "about ten"}', '"answer" does not end in a "#### n" line'),
    ('{"question": "", "answer": "#### 1"}', '"question" is ""'),
    ('{"question": "x", "answer": 1', "not JSON"),
    ('{"text": "a document"}', 'neither "question"'),
    ('{"conversations": [{"role": "assistant", "content": "#### 4"}]}', "does not follow a user turn"),
])
def test_a_bad_line_stops_it_with_file_line_and_reason(tmp_path, line, reason):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(RECORDS[0]) + "\n" + line + "\n", encoding="utf-8")
    proc = convert(str(source), "--out", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{source}:2: " in proc.stderr and reason in proc.stderr and "--skip-bad" in proc.stderr
    assert not (tmp_path / "out.jsonl").exists() and not list(tmp_path.glob("out.jsonl*"))
    skipped = convert(str(source), "--out", "out.jsonl", "--skip-bad", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == EXPECTED[:1] and "1 bad lines skipped" in skipped.stdout


def test_inputs_without_gsm8k_or_missing_are_refused(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [RECORDS[2]])
    proc = convert(str(chat), "--out", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "no GSM8K record" in proc.stderr and not (tmp_path / "out.jsonl").exists()
    proc = convert(str(tmp_path / "absent.jsonl"), "--out", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "absent.jsonl is not a file" in proc.stderr
    proc = convert(str(chat), "--out", str(chat), cwd=tmp_path)
    assert proc.returncode == 2 and "is also an input" in proc.stderr


def test_the_shared_sft_validation_file_gives_its_gsm8k_part(tmp_path):
    source = SHARED_DATA / "sft_val.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} is absent (the shared data set is not part of the repository)")
    proc = convert(str(source), "--out", "gsm8k.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = read_jsonl(tmp_path / "gsm8k.jsonl")
    # independently: the conversations whose last line is "#### <digits>", question and number read by hand
    expected = []
    for line in source.read_text(encoding="utf-8").splitlines():
        turns = json.loads(line)["conversations"]
        last_line = turns[-1]["content"].strip().splitlines()[-1]
        if last_line.startswith("#### "):
            expected.append({"prompt": turns[-2]["content"], "answer": last_line[5:].strip().replace(",", "")})
    assert got == expected and len(got) > 50
    assert all(r["answer"].lstrip("-").replace(".", "", 1).isdigit() for r in got)
    assert prompt_dataset([str(tmp_path / "gsm8k.jsonl")], Tokenizer.load(), 4096, strict=True).prompts
