"""Supervised fine-tuning data: conversations rendered by the tokenizer's chat template, loss on answers only.

A line of minimind's SFT format is `{"conversations": [{"role": ..., "content": ...}, ...]}`. Each
conversation is rendered with the tokenizer's chat template (chat_template.jinja or tokenizer_config.json)
and tokenized with a per-token `supervised` flag: True on the assistant's content and its end-of-turn token, False on
everything else (system and user turns, role headers, the newline after the end-of-turn token). The
boundaries come from the template itself (rendering prefixes of the conversation), never from a
hard-coded ChatML layout, so any prefix-stable template works.

The corpus is tokenized once into a cache (flat token file, flat uint8 mask file, int64 offsets of
each conversation), keyed by the data file, the tokenizer, the template and a format version, and is
read back through memory maps. A sample is one conversation cut to seq_len + 1 tokens; batches are
right-padded to their longest sample, and padding is never a target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from zer02llm.data.cache import build, cache_key, entry_files, from_cache, token_dtype
from zer02llm.data.jsonl import BadLine, BadLines, DataError, check_readable, check_unicode
from zer02llm.model.transformer import IGNORE_INDEX
from zer02llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SFT_CACHE_FORMAT = 1  # bump when the layout of the SFT cache files or the masking rule changes
ROLES = ("system", "user", "assistant")
SCAN_TOKENS = 1 << 22  # tokens of the mask file examined at once when building the sample index

Message = dict[str, str]


def parse_sft(obj: Any) -> list[Message]:
    """An SFT record: {"conversations": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}.

    Roles are taken from the data (a conversation may, e.g., hold two user turns in a row); a system
    turn may only come first and at least one assistant turn is required, so every conversation has
    something to learn. Returns plain {"role", "content"} dicts (other keys of a turn are dropped).
    """
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    turns = obj.get("conversations")
    if turns is None:
        hint = ('Lines with "text" are pretraining documents: train on them without mode=sft'
                if "text" in obj else None)
        raise BadLine('missing "conversations"', hint)
    if not isinstance(turns, list):
        raise BadLine(f'"conversations" is a {type(turns).__name__}, not a list')
    if not turns:
        raise BadLine('empty "conversations"')
    messages: list[Message] = []
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise BadLine(f"turn {n} is a {type(turn).__name__}, not an object")
        role, content = turn.get("role"), turn.get("content")
        if role is None:
            raise BadLine(f'missing "role" in turn {n}')
        if role not in ROLES:
            shown = json.dumps(role, ensure_ascii=False) if isinstance(role, str) else type(role).__name__
            raise BadLine(f"unknown role {shown} in turn {n} (valid: {', '.join(ROLES)})")
        if role == "system" and n != 1:
            raise BadLine(f"system turn {n} is not the first turn")
        if content is None:
            raise BadLine(f'missing "content" in turn {n}')
        if not isinstance(content, str):
            raise BadLine(f"content of turn {n} is a {type(content).__name__}, not a string")
        if not content.strip():
            raise BadLine(f"empty content in turn {n}")
        check_unicode(content, f"content of turn {n}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadLine("no assistant turn")
    return messages


class TemplateError(DataError):
    """A chat template that cannot be compiled or whose renders cannot be split into turns.

    A DataError: without a usable template the SFT data cannot be tokenized, and the training
    command reports it in one line (exit status 2) like any other unusable data."""


class TemplateRenderError(TemplateError):
    """The template raised while rendering one conversation (e.g. its own `raise_exception` on
    roles it does not accept): a problem of that conversation, so the cache counts it as a bad line."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ChatTemplate:
    """The chat template of a tokenizer, rendered in a sandbox, with per-token supervision flags.

    The template is a Jinja string from chat_template.jinja or tokenizer_config.json, i.e. code from a possibly untrusted
    directory, so it runs in jinja2's ImmutableSandboxedEnvironment, with the options and helpers
    `transformers` gives templates (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
    a non-escaping `tojson`, `strftime_now`), so renders match `apply_chat_template`.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        """Compile `tokenizer.chat_template`; a tokenizer without one is a TemplateError."""
        if not tokenizer.chat_template:
            raise TemplateError(
                f"tokenizer at {tokenizer.path} has no chat template: SFT needs a Jinja \"chat_template\" "
                f"string in {Path(tokenizer.path) / 'tokenizer_config.json'} (e.g. the shipped tokenizer/'s) or a "
                f"{Path(tokenizer.path) / 'chat_template.jinja'} file")
        self.tokenizer = tokenizer
        self.source = tokenizer.chat_template
        self.fingerprint = hashlib.sha256(self.source.encode("utf-8")).hexdigest()
        self.eos_token = tokenizer.id_to_token(tokenizer.eos_id) or ""

        def raise_exception(message: str) -> None:
            raise JinjaTemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
            json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(self.source)
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template of tokenizer at {tokenizer.path} does not compile: {e}") from e
        # the usual variables a template reads besides the messages (as transformers passes them)
        self._variables = {
            f"{name}_token": tokenizer.id_to_token(token_id)
            for name, token_id in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id))
        }

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The template's text for `messages` (+ the assistant header when `add_generation_prompt`)."""
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **self._variables)

    def segments(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """The full render cut into (text, supervised) pieces; adjacent pieces alternate in flag.

        Turn i's text is render(messages[:i+1]) minus render(messages[:i]); for an assistant turn,
        render(messages[:i], add_generation_prompt=True) marks where its header ends, and the last
        end-of-turn (eos) token in the rest marks where the answer ends: the answer and that token are
        supervised, the header and what follows the token (ChatML's newline) are not. A template whose
        shorter renders are not prefixes of longer ones cannot be split and is a TemplateError.
        """
        pieces: list[tuple[str, bool]] = []

        def add(text: str, supervised: bool) -> None:
            # merging same-flag neighbours keeps every flag boundary exact and tokenizes the rest whole
            if not text:
                return
            if pieces and pieces[-1][1] == supervised:
                pieces[-1] = (pieces[-1][0] + text, supervised)
            else:
                pieces.append((text, supervised))

        try:
            previous = ""  # text before turn 0: a template preamble belongs to the first turn's piece
            for i, message in enumerate(messages):
                current = self.render(messages[:i + 1])
                self._check_prefix(previous, current, f"the first {i} message(s)", f"the first {i + 1}")
                if message["role"] != "assistant":
                    add(current[len(previous):], False)
                else:
                    header_end = self.render(messages[:i], add_generation_prompt=True)
                    self._check_prefix(previous, header_end, f"the first {i} message(s)",
                                       f"the first {i} with add_generation_prompt=True")
                    self._check_prefix(header_end, current, f"the first {i} message(s) with add_generation_prompt"
                                       "=True", f"the first {i + 1}")
                    rest = current[len(header_end):]
                    answer_end = rest.rfind(self.eos_token) if self.eos_token else -1
                    if answer_end < 0:
                        raise TemplateError(
                            f"chat template of tokenizer at {self.tokenizer.path} does not end assistant turn "
                            f"{i + 1} with the eos token {self.eos_token!r}, so the end of the answer is unknown "
                            f"(rendered turn: {rest!r})")
                    answer_end += len(self.eos_token)
                    add(header_end[len(previous):], False)
                    add(rest[:answer_end], True)
                    add(rest[answer_end:], False)
                previous = current
            if add_generation_prompt:
                prompt = self.render(messages, add_generation_prompt=True)
                self._check_prefix(previous, prompt, "all messages", "all messages with add_generation_prompt=True")
                add(prompt[len(previous):], False)
                previous = prompt
        except JinjaTemplateError as e:
            raise TemplateRenderError(f"chat template of tokenizer at {self.tokenizer.path} failed: {e}",
                                      f"chat template failed: {e}") from e
        if "".join(text for text, _ in pieces) != previous:  # cannot happen once every prefix checked out
            raise TemplateError(f"chat template of tokenizer at {self.tokenizer.path}: the pieces of a "
                                f"conversation do not add up to its render")
        return pieces

    def _check_prefix(self, shorter: str, longer: str, shorter_name: str, longer_name: str) -> None:
        if not longer.startswith(shorter):
            raise TemplateError(
                f"chat template of tokenizer at {self.tokenizer.path} is not prefix-stable: the render of "
                f"{shorter_name} is not a prefix of the render of {longer_name}, so turns cannot be told apart "
                f"(...{shorter[-60:]!r} vs ...{longer[max(0, len(shorter) - 60):len(shorter)]!r})")

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """Token ids of the render and, per token, whether it is a supervised (answer) token.

        Each piece of `segments` is tokenized on its own, so no token straddles a flag boundary (the
        first answer token starts right after the header, as it does at generation time); the ids are
        checked to decode to the full render.
        """
        pieces = self.segments(messages, add_generation_prompt)
        encoded = self.tokenizer.encode_batch([text for text, _ in pieces])
        ids, supervised = join_pieces(pieces, encoded)
        self.check(ids, pieces)
        return ids, supervised

    def check(self, ids: Sequence[int], pieces: Sequence[tuple[str, bool]]) -> None:
        """Raise TemplateError unless `ids` decode to the concatenated pieces (a lossless tokenization)."""
        text = "".join(t for t, _ in pieces)
        decoded = self.tokenizer.decode(ids)
        if decoded != text:
            at = next((k for k, (a, b) in enumerate(zip(decoded, text)) if a != b), min(len(decoded), len(text)))
            raise TemplateError(f"tokens do not decode to the rendered conversation (first difference at "
                                f"character {at}: {decoded[at:at + 30]!r} vs {text[at:at + 30]!r})")


def join_pieces(pieces: Sequence[tuple[str, bool]], encoded: Sequence[list[int]]) -> tuple[list[int], list[bool]]:
    """The ids of each piece (tokenized on its own) one after another, and each id's supervised flag."""
    ids: list[int] = []
    supervised: list[bool] = []
    for (_, flag), piece_ids in zip(pieces, encoded):
        ids += piece_ids
        supervised += [flag] * len(piece_ids)
    return ids, supervised


def next_token_targets(ids: np.ndarray, supervised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) for next-token training: inputs = ids[:-1], targets[i] = ids[i+1] where that
    token is supervised, else IGNORE_INDEX. So the first answer token is a target (predicted from the
    header's last token) and the eos ending the answer is one, but the token after eos is not."""
    ids = np.asarray(ids, dtype=np.int64)
    supervised = np.asarray(supervised, dtype=bool)
    return ids[:-1], np.where(supervised[1:], ids[1:], IGNORE_INDEX)


@dataclass
class SFTTokenFile:
    """A tokenized SFT corpus on disk, all flat: tokens, a 0/1 uint8 supervised mask of the same
    length, and num_conversations + 1 int64 offsets (conversation j is tokens[off[j]:off[j+1]])."""

    tokens_path: Path
    mask_path: Path
    offsets_path: Path
    dtype: np.dtype
    num_tokens: int
    num_conversations: int
    num_supervised: int
    bad_lines: int
    source: str = ""  # the data file it was made from, for messages ("" when unknown)

    def load(self) -> tuple[np.memmap, np.memmap, np.memmap]:
        """Memory maps of (tokens, mask, offsets)."""
        return (np.memmap(self.tokens_path, dtype=self.dtype, mode="r", shape=(self.num_tokens,)),
                np.memmap(self.mask_path, dtype=np.uint8, mode="r", shape=(self.num_tokens,)),
                np.memmap(self.offsets_path, dtype=np.int64, mode="r", shape=(self.num_conversations + 1,)))


class ConversationEncoder:
    """SFT conversations -> tokens, supervised mask and conversation end offsets (cache.Encoder).

    Rendering and splitting into pieces happens on the reader thread, the pieces of a whole chunk are
    encoded in one encode_batch call (every core), and each conversation is checked to decode to its
    render on the writer thread."""

    outputs = ("tokens", "mask", "offsets")

    def __init__(self, template: ChatTemplate, path: str | os.PathLike, strict: bool):
        self.template, self.path, self.strict = template, path, strict
        self.dtype = token_dtype(template.tokenizer.vocab_size)

    def parse(self, record: Any) -> list[tuple[str, bool]]:
        messages = parse_sft(record)
        try:
            return self.template.segments(messages)
        except TemplateRenderError as e:
            raise BadLine(e.reason) from None

    def skip(self, line_no: int, error: TemplateError, bad: BadLines) -> None:
        """A record whose tokens do not decode to its render: counted, or fatal with data.strict=true."""
        if self.strict:
            raise DataError(f"{self.path}:{line_no}: {error} (data.strict=true; set it false to skip such "
                            f"lines)") from error
        bad.add(line_no, str(error))

    def encode(self, items: list[tuple[int, list[tuple[str, bool]]]]) -> tuple[list, list[list[int]]]:
        return items, self.template.tokenizer.encode_batch([text for _, pieces in items for text, _ in pieces])

    def arrays(self, encoded: tuple[list, list[list[int]]], counts: dict[str, int],
               bad: BadLines) -> dict[str, np.ndarray]:
        items, ids_of_pieces = encoded
        ids: list[int] = []
        mask: list[bool] = []
        offsets: list[int] = []
        k = 0
        for line_no, pieces in items:
            conv_ids, conv_mask = join_pieces(pieces, ids_of_pieces[k:k + len(pieces)])
            k += len(pieces)
            try:
                self.template.check(conv_ids, pieces)
            except TemplateError as e:
                self.skip(line_no, e, bad)
                continue
            ids += conv_ids
            mask += conv_mask
            counts["num_tokens"] += len(conv_ids)
            counts["num_conversations"] += 1
            counts["num_supervised"] += sum(conv_mask)
            offsets.append(counts["num_tokens"])
        return {"tokens": np.asarray(ids, dtype=self.dtype), "mask": np.asarray(mask, dtype=np.uint8),
                "offsets": np.asarray(offsets, dtype=np.int64)}


def tokenize_sft_to_cache(path: str | os.PathLike, tokenizer: Tokenizer, cache_dir: Optional[str | os.PathLike] = None,
                          strict: bool = False, progress: bool = True) -> SFTTokenFile:
    """Tokenize one SFT file (JSONL, .jsonl.gz, .jsonl.zst; Parquet with a "conversations" column) into
    the cache (or find it there) and describe the result.

    Malformed lines (see `parse_sft`; also conversations the template rejects) are skipped and counted,
    or the first one is a DataError when `strict`. A missing or empty file, or one without a usable
    conversation, is a DataError; a tokenizer without a chat template is a TemplateError.
    """
    check_readable(path)
    template = ChatTemplate(tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    key = cache_key(path, tokenizer, extra={"sft_format": SFT_CACHE_FORMAT, "template": template.fingerprint})
    files, meta_path = entry_files(cache_dir, f"{Path(path).stem}-{key}", ("tokens", "mask", "offsets"))
    meta = from_cache(path, files, meta_path, strict)
    if meta is not None:
        log.info("SFT tokens of %s from cache %s (%d conversations, %d tokens)", path, files["tokens"],
                 meta["num_conversations"], meta["num_tokens"])
    else:
        def check(counts: dict[str, int], bad: BadLines) -> None:
            if counts["num_conversations"] == 0:
                raise DataError(f"{path} has no usable conversation (expected lines like {{\"conversations\": "
                                f"[{{\"role\": \"user\", \"content\": ...}}, {{\"role\": \"assistant\", "
                                f"\"content\": ...}}]}})" + (f"; {bad.summary(path)}" if bad.count else ""))

        counts = {"num_tokens": 0, "num_conversations": 0, "num_supervised": 0}
        meta = build(path, files, meta_path, ConversationEncoder(template, path, strict), counts, check, strict,
                     progress, text_column="conversations", numbered=True,
                     head={"offsets": np.zeros(1, dtype=np.int64)})
        log.info("tokenized %s: %d conversations, %d tokens (%d supervised) in %.1fs -> %s", path,
                 meta["num_conversations"], meta["num_tokens"], meta["num_supervised"], meta["seconds"],
                 files["tokens"])
    return SFTTokenFile(files["tokens"], files["mask"], files["offsets"], dtype, meta["num_tokens"],
                        meta["num_conversations"], meta["num_supervised"], meta["bad_lines"], str(path))


class SFTDataset:
    """One conversation per sample, cut to seq_len + 1 tokens; sample i -> (inputs, targets) of length <= seq_len.

    Targets are the next token where it is supervised and IGNORE_INDEX elsewhere. A conversation whose
    window holds no supervised target (its first answer starts past seq_len + 1 tokens) would only
    add padding, so it is skipped and counted in `skipped_no_target` (and logged). `truncated` counts
    the kept samples that were cut.
    """

    fixed_targets = False  # padding and prompts vary the number of targets per batch

    def __init__(self, token_file: SFTTokenFile, seq_len: int, pad_id: int):
        if seq_len < 1:
            raise DataError(f"data.seq_len={seq_len} is not positive")
        self.tokens, self.mask, self.offsets = token_file.load()
        self.seq_len, self.pad_id = seq_len, pad_id
        keep, self.skipped_no_target, self.truncated, self.num_targets = self._scan(token_file.num_conversations)
        self.index = keep  # sample i is conversation index[i]
        source = token_file.source or token_file.tokens_path  # the user knows the data file, not the cache
        if self.skipped_no_target:
            log.warning("%s: skipped %d of %d conversation(s) with no supervised target in the first "
                        "data.seq_len + 1 = %d tokens (the answer starts later); a longer data.seq_len keeps them",
                        source, self.skipped_no_target, token_file.num_conversations, seq_len + 1)
        if len(keep) == 0:
            raise DataError(f"{source}: none of the {token_file.num_conversations} conversation(s) "
                            f"has a supervised (assistant) token within data.seq_len + 1 = {seq_len + 1} tokens: "
                            f"use a longer data.seq_len")

    def _scan(self, num_conversations: int) -> tuple[np.ndarray, int, int, int]:
        # supervised targets of each window, from a cumulative sum over a bounded slice of the mask at a time
        starts, ends = self.offsets[:-1], self.offsets[1:]
        window_ends = np.minimum(ends, starts + self.seq_len + 1)
        keep: list[np.ndarray] = []
        truncated = num_targets = 0
        a = 0
        while a < num_conversations:
            b = int(np.searchsorted(self.offsets, self.offsets[a] + SCAN_TOKENS, side="right")) - 1
            b = min(max(b, a + 1), num_conversations)
            base = int(self.offsets[a])
            csum = np.concatenate(([0], np.cumsum(self.mask[base:int(self.offsets[b])], dtype=np.int64)))
            # targets are tokens 1 .. n-1 of the window: the first token is never predicted
            targets = csum[window_ends[a:b] - base] - csum[starts[a:b] + 1 - base]
            keep.append(np.flatnonzero(targets > 0) + a)
            truncated += int(np.count_nonzero((ends[a:b] > window_ends[a:b]) & (targets > 0)))
            num_targets += int(targets.sum())
            a = b
        index = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
        return index.astype(np.int64), num_conversations - len(index), truncated, num_targets

    def __len__(self) -> int:
        return len(self.index)

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and supervised flags of sample i (at most seq_len + 1 tokens)."""
        start = int(self.offsets[self.index[i]])
        end = min(int(self.offsets[self.index[i] + 1]), start + self.seq_len + 1)
        return np.asarray(self.tokens[start:end], dtype=np.int64), np.asarray(self.mask[start:end], dtype=bool)

    def batch(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of `indices`, int64, right-padded to the longest sample of the batch:
        inputs with pad_id, targets with IGNORE_INDEX. Causal attention never lets a real token see the
        padding after it, so no attention mask is needed."""
        rows = [next_token_targets(*self.window(int(i))) for i in np.asarray(indices, dtype=np.int64)]
        width = max(len(inputs) for inputs, _ in rows)
        inputs = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for r, (x, y) in enumerate(rows):
            inputs[r, :len(x)] = x
            targets[r, :len(y)] = y
        return torch.from_numpy(inputs), torch.from_numpy(targets)
