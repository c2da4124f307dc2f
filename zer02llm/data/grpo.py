"""Prompts with reference answers: the data of mode=grpo.

A line is `{"prompt": "...", "answer": ...}` or `{"conversations": [..., {"role": "user", ...}],
"answer": ...}`: a plain prompt is one user turn, and a conversation must end in a user turn (what
the model answers). The answer is a string or a number; rewards compare completions with it
(zer02llm/training/rewards.py). Prompts are rendered by the tokenizer's chat template with the
assistant's header added, as generation sees them. Malformed lines are skipped and counted (or the
first is fatal with data.strict=true), as in SFT and DPO; so are prompts too long to leave
max_new_tokens of room in data.seq_len.

Prompts are few and short, so they are tokenized in memory, with no cache. A batch is the prompts'
indices: the objective looks the prompts up and rolls out completions for them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from zer02llm.data.jsonl import BadLine, BadLines, DataError
from zer02llm.data.sft import ChatTemplate, Message, TemplateRenderError, parse_sft
from zer02llm.data.sources import iter_records
from zer02llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    messages: list[Message]
    answer: str

    @property
    def text(self) -> str:
        """The question: the last user turn (what a reward function is given as `prompt`)."""
        return self.messages[-1]["content"]


def parse_prompt(obj: Any) -> Prompt:
    """A GRPO record: {"prompt": str, "answer": str | number} or {"conversations": [... user turn], "answer": ...}."""
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    if "answer" not in obj:
        hint = ('Lines with "chosen"/"rejected" are DPO pairs: train on them with mode=dpo' if "chosen" in obj else
                "a GRPO line needs the reference answer its completions are scored against")
        raise BadLine('missing "answer"', hint)
    answer = obj["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise BadLine(f'"answer" is a {type(answer).__name__}, not a string or a number')
    answer = str(answer)
    if not answer.strip():
        raise BadLine('empty "answer"')
    if ("prompt" in obj) == ("conversations" in obj):
        raise BadLine('give either "prompt" or "conversations" (ending in a user turn), not '
                      + ("both" if "prompt" in obj else "neither"))
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            raise BadLine(f'"prompt" is a {type(prompt).__name__}, not a string')
        turns = [{"role": "user", "content": prompt}]
    else:
        turns = obj["conversations"]
        if not isinstance(turns, list) or not turns:
            raise BadLine('"conversations" must be a non-empty list of turns ending in a user turn')
        last = turns[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            raise BadLine('"conversations" must end in a user turn: the turn the model answers')
    # SFT's checks of every turn (roles, a system turn only first, non-empty content), which also want
    # an assistant turn to learn from: one is added for the check and dropped
    messages = parse_sft({"conversations": [*turns, {"role": "assistant", "content": "-"}]})[:-1]
    return Prompt(messages, answer)


class PromptDataset:
    """Tokenized prompts (chat template, assistant header added) and their answers."""

    fixed_targets = False  # completions differ in length: the trainer all-reduces the counts

    def __init__(self, prompts: Sequence[Prompt], ids: Sequence[list[int]]):
        self.prompts, self.ids = list(prompts), list(ids)

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, indices: Any) -> tuple[torch.Tensor]:
        """The prompts' indices (the objective rolls them out)."""
        return (torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices,
                                dtype=torch.long),)


def prompt_dataset(paths: Sequence[str | os.PathLike], tokenizer: Tokenizer, max_prompt_tokens: int,
                   strict: bool = False) -> PromptDataset:
    """The prompts of every file of `paths` that fit in max_prompt_tokens tokens."""
    template = ChatTemplate(tokenizer)

    def parse(obj: Any) -> tuple[Prompt, list[int]]:
        prompt = parse_prompt(obj)
        try:
            return prompt, template.encode(prompt.messages, add_generation_prompt=True)[0]
        except TemplateRenderError as e:  # the template refuses this conversation: a bad line like any other
            raise BadLine(e.reason) from None

    prompts, ids = [], []
    for path in paths:
        bad = BadLines()
        too_long = 0
        for prompt, tokens in iter_records(path, parse, bad, strict):
            if len(tokens) > max_prompt_tokens:
                too_long += 1
                continue
            prompts.append(prompt)
            ids.append(tokens)
        if bad.count or bad.damaged:
            log.warning("%s", bad.summary(path))
        if too_long:
            log.warning("%s: left out %d prompt(s) longer than %d tokens (data.seq_len - mode.max_new_tokens)",
                        path, too_long, max_prompt_tokens)
    if not prompts:
        raise DataError(f"{', '.join(map(str, paths))}: no usable prompt (each line: {{\"prompt\": ..., "
                        f"\"answer\": ...}} or {{\"conversations\": [... a user turn], \"answer\": ...}}, of at most "
                        f"{max_prompt_tokens} tokens)")
    return PromptDataset(prompts, ids)


__all__ = ["Prompt", "PromptDataset", "parse_prompt", "prompt_dataset"]
