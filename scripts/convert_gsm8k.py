#!/usr/bin/env python3
"""Convert GSM8K records into mode=grpo's prompts: one `{"prompt": question, "answer": "72"}` per line.

Two input forms are read, line by line, told apart by their keys:

- GSM8K's own JSONL (`{"question": ..., "answer": "... worked solution ...\\n#### 72"}`, as published);
- SFT conversations (`{"conversations": [..., {"role": "user", ...}, {"role": "assistant", ...}]}`) whose
  last assistant turn ends in a `#### n` line, as GSM8K appears in SFT mixtures. Only those are GSM8K: a
  conversation whose answer has no final `#### n` line is skipped (and counted), so a mixed SFT file
  gives its GSM8K part. The prompt is the turns before that answer (a single user turn becomes "prompt",
  several turns stay "conversations").

The answer written is the number after the last `####`, with thousands separators removed (the numeric
reward reads it either way). A line that looks like GSM8K but cannot be converted (not JSON, no number
after `####`, a question that is not text) stops the conversion with its file, line number and reason;
`--skip-bad` skips and counts such lines instead. Standard library only.

    python scripts/convert_gsm8k.py gsm8k_train.jsonl --out grpo_gsm8k.jsonl
    python scripts/convert_gsm8k.py sft_val.jsonl --out grpo_gsm8k_val.jsonl     # its GSM8K conversations
    python -m zer02llm.train mode=grpo reward=gsm8k data.train_path=grpo_gsm8k.jsonl ...   (docs/rl.md)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

# the final answer line of a GSM8K solution: "#### 72" (a sign, thousands separators and decimals allowed)
FINAL_LINE = re.compile(r"^\s*####\s*(?P<number>[-+]?\d[\d,]*(?:\.\d+)?)\s*$")


class BadRecord(ValueError):
    """A line that looks like GSM8K but cannot be converted."""


@dataclass
class Counts:
    written: int = 0
    not_gsm8k: int = 0  # conversations whose last answer has no final "#### n" line
    bad: list[str] = field(default_factory=list)  # "file:line: reason" of lines skipped with --skip-bad


def final_number(solution: str) -> Optional[str]:
    """The number on a solution's last line when that line is `#### n`, separators removed; else None."""
    lines = solution.rstrip().splitlines()
    match = FINAL_LINE.match(lines[-1]) if lines else None
    return match.group("number").replace(",", "") if match else None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"{what} is {json.dumps(value, ensure_ascii=False)[:60]}, not a non-empty string")
    return value


def convert(record: Any) -> Optional[dict]:
    """A GRPO prompt record from one input record; None for a conversation that is not GSM8K."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if "question" in record:
        question = _text(record["question"], '"question"')
        solution = _text(record.get("answer"), '"answer"')
        number = final_number(solution)
        if number is None:
            raise BadRecord('"answer" does not end in a "#### n" line (GSM8K\'s final answer)')
        return {"prompt": question, "answer": number}
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
            raise BadRecord('"conversations" must be a non-empty list of {"role", "content"} turns')
        last = turns[-1]
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            return None  # no answer to read a reference from: not an SFT GSM8K conversation
        number = final_number(last["content"])
        if number is None:
            return None
        before = turns[:-1]
        if not before or before[-1].get("role") != "user":
            raise BadRecord("the GSM8K answer does not follow a user turn: there is no question to ask")
        for i, turn in enumerate(before):
            _text(turn.get("content"), f"turn {i}'s content")
        if len(before) == 1:
            return {"prompt": before[0]["content"], "answer": number}
        return {"conversations": [{"role": t["role"], "content": t["content"]} for t in before], "answer": number}
    raise BadRecord('neither "question" (GSM8K\'s form) nor "conversations" (SFT\'s form) is present; '
                    f'keys: {sorted(record)[:8]}')


def convert_files(inputs: Sequence[Path], out, skip_bad: bool) -> Counts:
    """Write the converted records of every input to the open file `out`; BadRecord names file and line."""
    counts = Counts()
    for path in inputs:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise BadRecord(f"not JSON ({e.msg} at column {e.colno})") from None
                    converted = convert(record)
                except BadRecord as e:
                    where = f"{path}:{number}: {e}"
                    if not skip_bad:
                        raise BadRecord(where) from None
                    counts.bad.append(where)
                    continue
                if converted is None:
                    counts.not_gsm8k += 1
                    continue
                out.write(json.dumps(converted, ensure_ascii=False) + "\n")
                counts.written += 1
    return counts


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="GSM8K JSONL or SFT conversations JSONL files")
    parser.add_argument("--out", type=Path, required=True, help="the GRPO prompts JSONL to write")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip (and count) lines that cannot be converted instead of stopping at the first")
    args = parser.parse_args(argv)
    for path in args.inputs:
        if not path.is_file():
            fail(f"input {path} is not a file: give GSM8K JSONL files (or SFT conversations JSONL)")
        if path.resolve() == args.out.resolve():
            fail(f"--out {args.out} is also an input: write the prompts to another file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8") as out:
            counts = convert_files(args.inputs, out, args.skip_bad)
    except BadRecord as e:
        partial.unlink(missing_ok=True)
        fail(f"{e}\n(a GSM8K line is {{\"question\": ..., \"answer\": \"...\\n#### 72\"}}, or SFT "
             f"{{\"conversations\": [..., user, assistant ending in \"#### 72\"]}}; --skip-bad skips such lines)")
    if counts.written == 0:
        partial.unlink(missing_ok=True)
        fail(f"no GSM8K record in {', '.join(map(str, args.inputs))} ({counts.not_gsm8k} conversations without a "
             f"final \"#### n\" line, {len(counts.bad)} bad lines): nothing written to {args.out}")
    partial.replace(args.out)
    for where in counts.bad[:5]:
        print(f"skipped {where}", file=sys.stderr)
    print(f"wrote {counts.written} prompts to {args.out} ({counts.not_gsm8k} conversations without a final "
          f"\"#### n\" answer left out, {len(counts.bad)} bad lines skipped)")


if __name__ == "__main__":
    main()
