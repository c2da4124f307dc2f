"""DPO data: pair validation, the final-answer mask token by token, the cache, truncation, the shipped sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zer02llm.data.dpo import PairDataset, dpo_dataset, encode_side, parse_pair, tokenize_dpo_to_cache
from zer02llm.data.jsonl import BadLine, DataError
from zer02llm.data.sft import ChatTemplate
from zer02llm.model import IGNORE_INDEX
from zer02llm.tokenizer import Tokenizer

from conftest import REPO, write_jsonl, load_script as load_script_named

SAMPLE = REPO / "zer02llm" / "sample_data"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


PROMPT = [user("What is 2 plus 3?"), assistant("2 plus 3 is 5."), user("And 4 plus 4?")]
GOOD = {"chosen": [*PROMPT, assistant("4 plus 4 is 8.")], "rejected": [*PROMPT, assistant("4 plus 4 is 9.")]}

# (record or raw line, a piece of the reason it is refused with)
MALFORMED = {
    "bad JSON": ('{"chosen": [', None),
    "not an object": ([1, 2], "expected a JSON object"),
    "missing rejected": ({"chosen": GOOD["chosen"]}, 'missing "rejected"'),
    "empty side": ({"chosen": [], "rejected": GOOD["rejected"]}, 'empty "chosen"'),
    "last turn not assistant": ({"chosen": PROMPT, "rejected": PROMPT}, "ends with a user turn"),
    "no shared prompt": ({"chosen": GOOD["chosen"], "rejected": [user("Hi"), assistant("4 plus 4 is 9.")]},
                         "no shared prompt"),
    "no prompt": ({"chosen": [assistant("8")], "rejected": [assistant("9")]}, "no prompt"),
    "chosen equals rejected": ({"chosen": GOOD["chosen"], "rejected": GOOD["chosen"]}, "the same answer"),
    "unknown role": ({"chosen": [{"role": "robot", "content": "x"}, assistant("8")], "rejected": GOOD["rejected"]},
                     'unknown role "robot"'),
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


def test_final_answer_is_supervised_token_by_token(tokenizer, tmp_path):
    """Only the final assistant turn (its content and <|im_end|>) is a target; the first answer is prompt."""
    template = ChatTemplate(tokenizer)
    ids, flags = encode_side(template, GOOD["chosen"])
    # the same tokens as SFT, whose mask also covers the first answer
    sft_ids, sft_flags = template.encode(GOOD["chosen"])
    assert ids == sft_ids
    assert tokenizer.decode([i for i, f in zip(sft_ids, sft_flags) if f]) == "2 plus 3 is 5.<|im_end|>4 plus 4 is 8.<|im_end|>"
    # the supervised run, found from the renders the template gives for generation
    prompt_text = template.render(GOOD["chosen"][:-1], add_generation_prompt=True)
    start = len(tokenizer.encode(prompt_text))
    answer = tokenizer.encode("4 plus 4 is 8.") + [tokenizer.eos_id]
    expected = [False] * start + [True] * len(answer) + [False] * (len(ids) - start - len(answer))
    assert flags == expected
    assert ids[start:start + len(answer)] == answer and tokenizer.decode(ids[:start]) == prompt_text
    assert tokenizer.decode(ids[start + len(answer):]) == "\n"

    # the batch: inputs are ids[:-1], targets the next token where it is supervised
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD])
    data = dpo_dataset([str(path)], tokenizer, seq_len=256, cache_dir=str(tmp_path / "cache"))
    inputs, targets = data.batch([0])
    rejected_ids, _ = encode_side(template, GOOD["rejected"])
    width = max(len(ids), len(rejected_ids)) - 1
    assert inputs.shape == targets.shape == (2, width)
    assert inputs[0, :len(ids) - 1].tolist() == ids[:-1]
    assert targets[0].tolist()[:len(ids) - 1] == [t if f else IGNORE_INDEX for t, f in zip(ids[1:], flags[1:])]
    assert tokenizer.decode(targets[1][targets[1] != IGNORE_INDEX].tolist()) == "4 plus 4 is 9.<|im_end|>"
    assert inputs[1, :len(rejected_ids) - 1].tolist() == rejected_ids[:-1]


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_pairs_are_skipped_and_counted_or_fatal_when_strict(tokenizer, tmp_path, case):
    record, reason = MALFORMED[case]
    if reason is not None:
        with pytest.raises(BadLine, match=reason.replace("(", r"\(")):
            parse_pair(record)
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, record, GOOD])
    token_file = tokenize_dpo_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert (token_file.num_pairs, token_file.bad_lines) == (2, 1)
    summary = json.loads(Path(str(token_file.tokens_path).replace(".tokens.bin", ".json")).read_text())["bad_summary"]
    assert "line 2:" in summary and (reason is None or reason in summary)
    with pytest.raises(DataError, match=r"pairs\.jsonl:2"):
        tokenize_dpo_to_cache(path, tokenizer, tmp_path / "strict", strict=True, progress=False)


def test_a_file_without_a_usable_pair_is_an_error(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": GOOD["chosen"]}])
    with pytest.raises(DataError, match="no usable preference pair.*mode=sft"):
        tokenize_dpo_to_cache(path, tokenizer, tmp_path / "cache", progress=False)


def test_tokenized_once_then_read_from_the_cache(tokenizer, tmp_path, caplog):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, GOOD])
    first = tokenize_dpo_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    stamp = first.tokens_path.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = tokenize_dpo_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert "from cache" in caplog.text and again == first and first.tokens_path.stat().st_mtime_ns == stamp
    write_jsonl(path, [GOOD])  # another file content: another key
    assert tokenize_dpo_to_cache(path, tokenizer, tmp_path / "cache", progress=False).key != first.key


def test_long_pairs_are_cut_like_sft_and_uninformative_ones_skipped(tokenizer, tmp_path):
    long_prompt = [user("Count the sheep: " + "one sheep, " * 20)]
    early = {"chosen": [user("Hi"), assistant("Red. " + "And so on. " * 20)],
             "rejected": [user("Hi"), assistant("Blue. " + "And so on. " * 20)]}  # differ at once
    late = {"chosen": [user("Hi"), assistant("And so on. " * 20 + "Red.")],
            "rejected": [user("Hi"), assistant("And so on. " * 20 + "Blue.")]}  # differ after the cut
    no_answer = {"chosen": [*long_prompt, assistant("Twenty.")], "rejected": [*long_prompt, assistant("Two.")]}
    short = {"chosen": [user("Hi"), assistant("Red.")], "rejected": [user("Hi"), assistant("Blue.")]}
    path = write_jsonl(tmp_path / "pairs.jsonl", [short, early, late, no_answer])
    data = dpo_dataset([str(path)], tokenizer, seq_len=24, cache_dir=str(tmp_path / "cache"))
    assert (len(data), data.skipped, data.truncated) == (2, 2, 1)
    inputs, targets = data.batch([0, 1])
    assert inputs.shape[1] == 24  # early's sides: 25 tokens of 99
    assert (targets != IGNORE_INDEX).sum(dim=1).min() > 0
    assert tokenizer.decode(targets[1][targets[1] != IGNORE_INDEX].tolist()).startswith("Red. And so on.")
    with pytest.raises(DataError, match="use a longer data.seq_len"):
        PairDataset([tokenize_dpo_to_cache(write_jsonl(tmp_path / "late.jsonl", [late]), tokenizer,
                                           tmp_path / "cache", progress=False)], 24, tokenizer.pad_id)


def test_reference_rides_along_in_the_batch(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, GOOD])
    data = dpo_dataset([str(path)], tokenizer, seq_len=64, cache_dir=str(tmp_path / "cache"))
    data.reference = np.array([[-1.0, -2.0], [-3.0, -4.0]], dtype=np.float32)
    assert data.batch([1, 0])[2].tolist() == [-3.0, -1.0, -4.0, -2.0]  # chosen of each pair, then rejected


def load_script():
    return load_script_named("make_dpo_data")


def test_shipped_sample_is_what_the_script_builds_and_every_pair_is_valid(tokenizer, tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_dpo_data.py"), "--out-dir", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("dpo.jsonl", "dpo_val.jsonl"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name
        assert (SAMPLE / name).stat().st_size < 300_000
        token_file = tokenize_dpo_to_cache(SAMPLE / name, tokenizer, tmp_path / "cache", progress=False)
        assert token_file.bad_lines == 0 and token_file.num_pairs >= 50
    # no validation prompt is a training prompt
    def prompts(name):
        return {json.dumps(json.loads(line)["chosen"][:-1]) for line in (SAMPLE / name).read_text().splitlines()}
    assert not prompts("dpo.jsonl") & prompts("dpo_val.jsonl")


@pytest.mark.parametrize("answer, changed", [
    ("22 minus 1 is 21.", r"22 minus 1 is (\d+)\.$"),
    ("Seven plus twenty is twenty-seven.", r"Seven plus twenty is ([a-z-]+)\.$"),
    ("A duck has two legs.", r"A duck has ([a-z-]+) legs\.$"),
    ("十一减四等于七。", r"十一减四等于(.+)。$"),
])
def test_the_script_makes_the_final_number_wrong_and_keeps_the_rest(answer, changed):
    import random
    import re

    script = load_script()
    worse = script.wrong_number(answer, random.Random(0))
    match = re.fullmatch(changed, worse)
    assert match and match.group(1) != re.fullmatch(changed, answer).group(1)
    assert script.wrong_number("One rainy day, Tom saw a fox.", random.Random(0)) is None  # no stated result
