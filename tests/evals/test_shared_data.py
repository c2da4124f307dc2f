"""Tasks built from the project's shared real data: GSM8K test questions (sft_val.jsonl) and a last-word cloze
(val_en.jsonl, val_zh.jsonl). Skipped where ../shared/data is absent."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SHARED_DATA, randomize, write_jsonl
from zer02llm.config import ModelConfig
from zer02llm.data.sft import ChatTemplate
from zer02llm.evals.extract import normalize_number, reference_answer
from zer02llm.evals.generation import GREEDY
from zer02llm.evals.runner import TaskRunner
from zer02llm.evals.scorer import ModelScorer, encode_pair
from zer02llm.evals.tasks import load_tasks
from zer02llm.inference.sampling import generate
from zer02llm.model import Transformer
from zer02llm.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "sft_val.jsonl").is_file(),
                                reason=f"the shared test data is absent ({SHARED_DATA})")


def gsm8k_items() -> list[dict]:
    items = []
    for line in (SHARED_DATA / "sft_val.jsonl").read_text(encoding="utf-8").splitlines():
        turns = json.loads(line)["conversations"]
        if len(turns) == 2 and "####" in turns[1]["content"]:
            items.append({"question": turns[0]["content"], "answer": turns[1]["content"]})
    return items


class Recorder:
    """A LanguageModel that records the prompts it is given and replies with set texts."""

    max_len = 4096

    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def loglikelihoods(self, requests):
        raise AssertionError("a generative task asks for no log-likelihoods")

    def generate(self, prompts, max_new_tokens, stop_ids, stop=None):
        self.prompts += list(prompts)
        return self.replies[:len(prompts)]


def test_gsm8k_questions_become_a_generative_task_asked_in_chat(tmp_path):
    items = gsm8k_items()
    assert len(items) >= 90
    references = [reference_answer(item["answer"], "gsm8k") for item in items]
    assert all(normalize_number(r) is not None for r in references), references  # every solution ends "#### n"
    (tmp_path / "gsm8k.yaml").write_text("path: gsm8k.jsonl\nnum_fewshot: 2\nextract: gsm8k\nformat: chat\n")
    write_jsonl(tmp_path / "gsm8k.jsonl", items)
    (task,) = load_tasks(str(tmp_path / "gsm8k.yaml"))
    tokenizer = Tokenizer.load()
    replies = [tokenizer.encode(f"Some working.\n#### {references[0]}"), tokenizer.encode("I think it is 7."),
               tokenizer.encode(f"#### {references[2]}0")]
    model = Recorder(replies)
    result = TaskRunner(model, tokenizer, seed=0).run(task, limit=3)
    # the first reply's answer is right, the second has no "####" (strict), the third is ten times too big
    assert [e["correct"] for e in result.examples] == [True, False, False]
    assert result.metrics == {"acc": pytest.approx(1 / 3), "answered": pytest.approx(2 / 3)}
    # each prompt: two other GSM8K conversations, then the question, through the tokenizer's chat template
    template = ChatTemplate(tokenizer)
    for index, prompt in enumerate(model.prompts):
        text = tokenizer.decode(prompt)
        assert text.endswith(template.render([{"role": "user", "content": items[index]["question"]}],
                                             add_generation_prompt=True))
        assert text.count("<|im_start|>assistant\n") == 3 and text.count("#### ") == 2
        assert items[index]["answer"] not in text


@pytest.mark.parametrize("source", ["val_en.jsonl", "val_zh.jsonl"])
def test_a_cloze_of_real_text_matches_greedy_generation(source, tmp_path):
    """Each item is right exactly when greedy decoding from the context writes the target's tokens."""
    texts = [json.loads(line)["text"].strip() for line in
             (SHARED_DATA / source).read_text(encoding="utf-8").splitlines()[:12]]
    if source == "val_en.jsonl":
        items = [{"context": t.rsplit(None, 1)[0][-600:], "target": t.rsplit(None, 1)[1]} for t in texts]
    else:
        items = [{"context": t[:-3][-300:], "target": t[-3:]} for t in texts]
    write_jsonl(tmp_path / "cloze.jsonl", items)
    (task,) = load_tasks(str(tmp_path / "cloze.jsonl"))
    task.delimiter = " " if source == "val_en.jsonl" else ""
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=1024)
    model = randomize(Transformer(cfg), seed=2).eval()
    tokenizer = Tokenizer.load()
    # a random model that repeats itself: make some targets its own greedy continuation, so both outcomes occur
    for item in task.items[::2]:
        context_ids, _ = encode_pair(tokenizer, item.context, " x")
        new = list(generate(model, context_ids, 3, GREEDY))
        item.target = tokenizer.decode(new).lstrip()
    result = TaskRunner(ModelScorer(model), tokenizer, shown=None).run(task)
    expected = []
    for item in task.items:
        context_ids, target_ids = encode_pair(tokenizer, item.context, task.delimiter + item.target)
        with torch.no_grad():
            written = list(generate(model, context_ids, len(target_ids), GREEDY))
        expected.append(written == target_ids)
    assert any(expected) and not all(expected), expected  # both outcomes checked
    assert [e["greedy"] for e in result.examples] == expected
    assert result.metrics["acc"] == pytest.approx(sum(expected) / len(expected))
