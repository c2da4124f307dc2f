"""Preference pairs for DPO: minimind's JSONL, the token cache, and the pair dataset.

A line is `{"chosen": [messages...], "rejected": [messages...]}` with SFT's role/content messages: the
two conversations share the prompt (every turn but the last) and differ in the final assistant turn.
Each side is rendered and tokenized exactly as SFT renders a conversation (zer02llm.data.sft's
ChatTemplate), and SFT's supervision flags are kept on the final assistant turn only (its answer and
end-of-turn token): earlier assistant turns are part of the prompt. The log-probabilities DPO compares
are summed over those tokens.

The corpus is tokenized once into the cache, like SFT's (flat tokens, a flat uint8 mask, int64
offsets; sequence 2j is pair j's chosen side, 2j + 1 its rejected side), keyed by the data file, the
tokenizer, the template and a format version. A pair longer than data.seq_len is cut as SFT cuts a
conversation (each side to its first seq_len + 1 tokens, so the ends of long answers are not
compared); a pair left with no supervised token on a side, or with both sides the same after the
cut, says nothing about the preference and is skipped and counted (logged) instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from zer02llm.data.cache import build, cache_key, entry_files, from_cache, token_dtype
from zer02llm.data.jsonl import BadLine, BadLines, DataError, check_readable
from zer02llm.data.sft import (ChatTemplate, ConversationEncoder, Message, TemplateError, TemplateRenderError,
                               join_pieces, next_token_targets, parse_sft)
from zer02llm.model.transformer import IGNORE_INDEX
from zer02llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DPO_CACHE_FORMAT = 1  # bump when the layout of the DPO cache files or the masking rule changes
SIDES = ("chosen", "rejected")
Pieces = list[tuple[str, bool]]


def parse_pair(obj: Any) -> tuple[list[Message], list[Message]]:
    """A DPO record -> (chosen messages, rejected messages); BadLine says what is wrong with it.

    Each side is checked as an SFT conversation (roles, contents); then both must end with an
    assistant turn, share a non-empty prompt (all earlier turns, equal), and differ in that last turn.
    """
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    sides = []
    for side in SIDES:
        if side not in obj:
            hint = ('Lines with "conversations" are SFT data: train on them with mode=sft' if "conversations" in obj
                    else 'Lines with "text" are pretraining documents: train on them with mode=pretrain'
                    if "text" in obj else None)
            raise BadLine(f'missing "{side}"', hint)
        turns = obj[side]
        if not isinstance(turns, list):
            raise BadLine(f'"{side}" is a {type(turns).__name__}, not a list of messages')
        if not turns:
            raise BadLine(f'empty "{side}"')
        try:
            messages = parse_sft({"conversations": turns})  # SFT's checks of roles and contents
        except BadLine as e:
            raise BadLine(f'"{side}": {e}') from None
        if messages[-1]["role"] != "assistant":
            raise BadLine(f'"{side}" ends with a {messages[-1]["role"]} turn: the last turn must be the '
                          f"assistant's answer that the pair compares")
        sides.append(messages)
    chosen, rejected = sides
    if len(chosen) < 2:
        raise BadLine('no prompt: "chosen" and "rejected" need at least one turn (the user\'s question) before '
                      "the answers they compare")
    if chosen[:-1] != rejected[:-1]:
        at = next((i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1])) if a != b),
                  min(len(chosen), len(rejected)) - 1)
        raise BadLine(f'no shared prompt: "chosen" and "rejected" differ at turn {at + 1}; they must hold the same '
                      f"turns and differ only in the final assistant turn")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise BadLine('"chosen" and "rejected" give the same answer: the pair prefers nothing')
    return chosen, rejected


def final_turn_only(pieces: Pieces) -> Pieces:
    """SFT's pieces of a conversation with only the last supervised piece (the final answer) still supervised."""
    last = max((i for i, (_, supervised) in enumerate(pieces) if supervised), default=-1)
    return [(text, supervised and i == last) for i, (text, supervised) in enumerate(pieces)]


def encode_side(template: ChatTemplate, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
    """Token ids and supervision flags of one side as the cache holds them (SFT's, final answer only)."""
    pieces = final_turn_only(template.segments(messages))
    ids, flags = join_pieces(pieces, template.tokenizer.encode_batch([text for text, _ in pieces]))
    template.check(ids, pieces)
    return ids, flags


@dataclass
class PairTokenFile:
    """A tokenized DPO corpus on disk: flat tokens and 0/1 mask, 2 * num_pairs + 1 int64 offsets."""

    tokens_path: Path
    mask_path: Path
    offsets_path: Path
    dtype: np.dtype
    num_tokens: int
    num_pairs: int
    bad_lines: int
    source: str = ""

    @property
    def key(self) -> str:
        """The cache entry's name (data file, tokenizer, template, format): the reference's key builds on it."""
        return self.tokens_path.name.removesuffix(".tokens.bin")

    def load(self) -> tuple[np.memmap, np.memmap, np.memmap]:
        return (np.memmap(self.tokens_path, dtype=self.dtype, mode="r", shape=(self.num_tokens,)),
                np.memmap(self.mask_path, dtype=np.uint8, mode="r", shape=(self.num_tokens,)),
                np.memmap(self.offsets_path, dtype=np.int64, mode="r", shape=(2 * self.num_pairs + 1,)))


class PairEncoder(ConversationEncoder):
    """DPO records -> tokens, mask and offsets (cache.Encoder): both sides' pieces of a whole chunk in one
    encode_batch call, each side checked to decode to its render (SFT's encoder, two sides a record)."""

    def parse(self, record: Any) -> tuple[Pieces, Pieces]:
        chosen, rejected = parse_pair(record)
        try:
            return (final_turn_only(self.template.segments(chosen)),
                    final_turn_only(self.template.segments(rejected)))
        except TemplateRenderError as e:
            raise BadLine(e.reason) from None

    def encode(self, items: list[tuple[int, tuple[Pieces, Pieces]]]) -> tuple[list, list[list[int]]]:
        texts = [text for _, pair in items for pieces in pair for text, _ in pieces]
        return items, self.template.tokenizer.encode_batch(texts)

    def arrays(self, encoded: tuple[list, list[list[int]]], counts: dict[str, int],
               bad: BadLines) -> dict[str, np.ndarray]:
        items, ids_of_pieces = encoded
        ids: list[int] = []
        mask: list[bool] = []
        offsets: list[int] = []
        k = 0
        for line_no, pair in items:
            sides = []
            for pieces in pair:
                sides.append((*join_pieces(pieces, ids_of_pieces[k:k + len(pieces)]), pieces))
                k += len(pieces)
            try:
                for side_ids, _, pieces in sides:
                    self.template.check(side_ids, pieces)
            except TemplateError as e:
                self.skip(line_no, e, bad)
                continue
            for side_ids, side_mask, _ in sides:
                ids += side_ids
                mask += side_mask
                counts["num_tokens"] += len(side_ids)
                offsets.append(counts["num_tokens"])
            counts["num_pairs"] += 1
        return {"tokens": np.asarray(ids, dtype=self.dtype), "mask": np.asarray(mask, dtype=np.uint8),
                "offsets": np.asarray(offsets, dtype=np.int64)}


def tokenize_dpo_to_cache(path: str | os.PathLike, tokenizer: Tokenizer, cache_dir: Optional[str | os.PathLike] = None,
                          strict: bool = False, progress: bool = True) -> PairTokenFile:
    """Tokenize one DPO file (JSONL, .jsonl.gz, .jsonl.zst) into the cache (or find it there).

    Malformed pairs (see `parse_pair`) are skipped and counted, or the first is a DataError when
    `strict`; a file without a usable pair is a DataError."""
    check_readable(path)
    template = ChatTemplate(tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    key = cache_key(path, tokenizer, extra={"dpo_format": DPO_CACHE_FORMAT, "template": template.fingerprint})
    files, meta_path = entry_files(cache_dir, f"{Path(path).stem}-dpo-{key}", ("tokens", "mask", "offsets"))
    meta = from_cache(path, files, meta_path, strict)
    if meta is not None:
        log.info("DPO tokens of %s from cache %s (%d pairs, %d tokens)", path, files["tokens"], meta["num_pairs"],
                 meta["num_tokens"])
    else:
        def check(counts: dict[str, int], bad: BadLines) -> None:
            if counts["num_pairs"] == 0:
                raise DataError(f"{path} has no usable preference pair (expected lines like {{\"chosen\": [{{\"role\":"
                                f" \"user\", \"content\": ...}}, {{\"role\": \"assistant\", \"content\": ...}}], "
                                f"\"rejected\": [the same prompt, another answer]}})"
                                + (f"; {bad.summary(path)}" if bad.count else ""))

        meta = build(path, files, meta_path, PairEncoder(template, path, strict), {"num_tokens": 0, "num_pairs": 0},
                     check, strict, progress, numbered=True, head={"offsets": np.zeros(1, dtype=np.int64)})
        log.info("tokenized %s: %d preference pairs, %d tokens in %.1fs -> %s", path, meta["num_pairs"],
                 meta["num_tokens"], meta["seconds"], files["tokens"])
    return PairTokenFile(files["tokens"], files["mask"], files["offsets"], dtype, meta["num_tokens"],
                         meta["num_pairs"], meta["bad_lines"], str(path))


class PairDataset:
    """The pairs of one or more token files; sample i -> both sides of pair i, each cut to seq_len + 1 tokens.

    batch(indices) of B pairs gives (inputs, targets), each (2B, width) int64: rows 0..B-1 the chosen
    sides, rows B..2B-1 the rejected ones, right-padded (pad_id / IGNORE_INDEX) to the longest row, and
    targets only on the final answer; once `reference` is set (DPO.prepare), also the reference's summed
    log-probabilities, (2B,) float32, in the same order.
    """

    fixed_targets = False  # answers differ in length

    def __init__(self, token_files: Sequence[PairTokenFile], seq_len: int, pad_id: int):
        if seq_len < 1:
            raise DataError(f"data.seq_len={seq_len} is not positive")
        self.token_files, self.seq_len, self.pad_id = list(token_files), seq_len, pad_id
        self.parts = [f.load() for f in self.token_files]
        index, self.skipped, self.truncated = [], 0, 0
        for p, token_file in enumerate(self.token_files):
            kept, truncated = self._scan(p)
            index += [(p, j) for j in kept]
            self.skipped += token_file.num_pairs - len(kept)
            self.truncated += truncated
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)  # sample i is pair index[i, 1] of part index[i, 0]
        self.reference: Optional[np.ndarray] = None  # (len, 2) float32: the reference's (chosen, rejected) sums
        sources = ", ".join(f.source or str(f.tokens_path) for f in self.token_files)
        total = sum(f.num_pairs for f in self.token_files)
        if self.skipped:
            log.warning("%s: skipped %d of %d pair(s) with no supervised answer token on a side, or the same tokens "
                        "on both sides, within data.seq_len + 1 = %d tokens; a longer data.seq_len keeps them",
                        sources, self.skipped, total, seq_len + 1)
        if self.truncated:
            log.info("%s: %d pair(s) cut to data.seq_len + 1 = %d tokens per side (the cut part is not compared)",
                     sources, self.truncated, seq_len + 1)
        if len(self.index) == 0:
            raise DataError(f"{sources}: none of the {total} pair(s) has answer tokens that differ within "
                            f"data.seq_len + 1 = {seq_len + 1} tokens: use a longer data.seq_len")

    def _scan(self, part: int) -> tuple[list[int], int]:
        """The pairs of a part worth training on, and how many of them are cut."""
        kept, truncated = [], 0
        for j in range(self.token_files[part].num_pairs):
            (c_ids, c_mask), (r_ids, r_mask) = self.side(part, 2 * j), self.side(part, 2 * j + 1)
            if not (c_mask[1:].any() and r_mask[1:].any()) or np.array_equal(c_ids, r_ids):
                continue
            kept.append(j)
            offsets = self.parts[part][2]
            truncated += any(int(offsets[s + 1] - offsets[s]) > self.seq_len + 1 for s in (2 * j, 2 * j + 1))
        return kept, truncated

    def side(self, part: int, sequence: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and supervised flags of one sequence of a part (at most seq_len + 1 tokens)."""
        tokens, mask, offsets = self.parts[part]
        start = int(offsets[sequence])
        end = min(int(offsets[sequence + 1]), start + self.seq_len + 1)
        return np.asarray(tokens[start:end], dtype=np.int64), np.asarray(mask[start:end], dtype=bool)

    def __len__(self) -> int:
        return len(self.index)

    def pairs(self, indices: Any) -> list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]:
        """((chosen ids, mask), (rejected ids, mask)) of each sample."""
        return [(self.side(p, 2 * j), self.side(p, 2 * j + 1))
                for p, j in self.index[np.asarray(indices, dtype=np.int64)]]

    def batch(self, indices: Any) -> tuple[torch.Tensor, ...]:
        indices = np.asarray(indices, dtype=np.int64)
        pairs = self.pairs(indices)
        rows = [next_token_targets(*pair[0]) for pair in pairs] + [next_token_targets(*pair[1]) for pair in pairs]
        width = max(len(x) for x, _ in rows)
        inputs = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for r, (x, y) in enumerate(rows):
            inputs[r, :len(x)] = x
            targets[r, :len(y)] = y
        batch = (torch.from_numpy(inputs), torch.from_numpy(targets))
        if self.reference is None:
            return batch
        reference = self.reference[indices]  # (B, 2)
        return (*batch, torch.from_numpy(np.concatenate([reference[:, 0], reference[:, 1]]).astype(np.float32)))


def dpo_dataset(paths: Sequence[str], tokenizer: Tokenizer, seq_len: int, cache_dir: Optional[str] = None,
                strict: bool = False) -> PairDataset:
    """The pair dataset of `paths` (files), each tokenized into the cache on its own."""
    files = [tokenize_dpo_to_cache(path, tokenizer, cache_dir, strict=strict) for path in paths]
    return PairDataset(files, seq_len, tokenizer.pad_id)
