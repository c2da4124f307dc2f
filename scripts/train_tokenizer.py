#!/usr/bin/env python3
"""Train the project's byte-level BPE tokenizer on JSONL corpora.

Reads pretraining files (one `{"text": ...}` per line) and SFT files (one
`{"conversations": [{"role": ..., "content": ...}, ...]}` per line), streaming them line
by line, and trains a byte-level BPE with the Hugging Face `tokenizers` library.

Special tokens get the first ids, in this order:
    0 <|endoftext|>  (pad / unk)
    1 <|im_start|>   (bos)
    2 <|im_end|>     (eos)

The output directory receives `tokenizer.json`, `vocab.json`, `merges.txt` and a
Hugging Face `tokenizer_config.json` (PreTrainedTokenizerFast, with a ChatML chat
template), so it loads both with `zer02llm.tokenizer.Tokenizer.load(dir)` and with
`transformers.PreTrainedTokenizerFast.from_pretrained(dir)`. The same input gives
byte-identical files.

Example (from the repository root):
    python scripts/train_tokenizer.py --vocab-size 6400 --out tokenizer
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_INPUTS = [
    REPO_DIR.parent / "shared" / "data" / name
    for name in ("pretrain_en.jsonl", "pretrain_zh.jsonl", "sft.jsonl")
]
DEFAULT_OUT = REPO_DIR / "tokenizer"

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]  # ids 0, 1, 2 in this order

MODEL_MAX_LENGTH = 32768

# ChatML: <|im_start|>{role}\n{content}<|im_end|>\n per message, then the assistant prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class CorpusStats:
    """Counts what the training iterator hands to the trainer."""

    def __init__(self) -> None:
        self.docs = 0  # pretraining documents + SFT conversations
        self.texts = 0  # strings yielded (one per document / per message)
        self.chars = 0

    def add(self, text: str) -> None:
        self.texts += 1
        self.chars += len(text)


def iter_texts(paths: list[Path], stats: CorpusStats) -> Iterator[str]:
    """Yield the text of every document / message of the JSONL files, one line at a time."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{lineno}: invalid JSON ({e})") from None
                if isinstance(record.get("text"), str):
                    stats.docs += 1
                    stats.add(record["text"])
                    yield record["text"]
                elif isinstance(record.get("conversations"), list):
                    stats.docs += 1
                    for message in record["conversations"]:
                        content = message.get("content") if isinstance(message, dict) else None
                        if isinstance(content, str) and content:
                            stats.add(content)
                            yield content
                else:
                    raise SystemExit(
                        f"{path}:{lineno}: expected a 'text' string or a 'conversations' list"
                    )


def build_tokenizer_config() -> dict:
    """The Hugging Face tokenizer_config.json contents."""
    added_tokens_decoder = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": [],
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": PAD_TOKEN,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    }


def train(paths: list[Path], vocab_size: int, show_progress: bool) -> tuple[Tokenizer, CorpusStats]:
    """Train the byte-level BPE on the given files."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    stats = CorpusStats()
    tokenizer.train_from_iterator(iter_texts(paths, stats), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        got = tokenizer.token_to_id(token)
        if got != i:
            raise RuntimeError(f"special token {token!r} got id {got}, expected {i}")
    return tokenizer, stats


def save(tokenizer: Tokenizer, out: Path) -> None:
    """Write tokenizer.json, vocab.json, merges.txt and tokenizer_config.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer.model.save(str(out))  # vocab.json + merges.txt
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(build_tokenizer_config(), f, ensure_ascii=False, indent=2)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Train a byte-level BPE tokenizer (special tokens <|endoftext|>=0, <|im_start|>=1, "
            "<|im_end|>=2) on JSONL corpora: pretraining lines {\"text\": ...} and SFT lines "
            "{\"conversations\": [{\"role\", \"content\"}, ...]} (message contents are used)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help="JSONL files to train on (default: "
        + " ".join(str(p) for p in DEFAULT_INPUTS)
        + ")",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=6400,
        help="final vocabulary size, special tokens and the 256 byte symbols included",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory for tokenizer.json, vocab.json, merges.txt, tokenizer_config.json",
    )
    parser.add_argument(
        "--progress", action="store_true", help="show the trainer's progress bars"
    )
    args = parser.parse_args(argv)
    if not args.inputs:
        args.inputs = DEFAULT_INPUTS

    min_size = len(SPECIAL_TOKENS) + 256
    if args.vocab_size < min_size:
        parser.error(f"--vocab-size must be at least {min_size} (3 special tokens + 256 bytes)")
    missing = [str(p) for p in args.inputs if not Path(p).is_file()]
    if missing:
        parser.error("input file(s) not found: " + ", ".join(missing))

    start = time.perf_counter()
    tokenizer, stats = train(list(args.inputs), args.vocab_size, args.progress)
    save(tokenizer, args.out)
    elapsed = time.perf_counter() - start

    print(f"vocab size: {tokenizer.get_vocab_size(with_added_tokens=True)}")
    print(
        f"trained on {stats.docs} docs ({stats.texts} texts), {stats.chars} characters "
        f"from {len(args.inputs)} file(s)"
    )
    print(f"time: {elapsed:.1f} s")
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
