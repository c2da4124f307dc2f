"""Pretraining data: a data file tokenized once into a flat token file, read back through a memory map.

Each document becomes `bos + tokens(text) + eos` and documents are packed back to back; a sample
is a window of seq_len + 1 consecutive tokens (inputs and next-token targets), windows do not
overlap, and no token is padding. The token file is cached under a key made of the data file's
identity (path, size, modification time) and the tokenizer's fingerprint, so a second run starts at
once, and it is written to a temporary name and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from zer02llm.data.cache import (CACHE_FORMAT, ByteProgress, build, cache_key, default_cache_dir, from_cache,
                                 token_dtype, write_atomic)
from zer02llm.data.jsonl import BadLines, DataError, check_readable, parse_pretrain
from zer02llm.tokenizer import Tokenizer

__all__ = ["ByteProgress", "CACHE_FORMAT", "PackedDataset", "TextEncoder", "TokenFile", "cache_key",
           "default_cache_dir", "token_dtype", "tokenize_to_cache", "write_atomic"]
log = logging.getLogger(__name__)


@dataclass
class TokenFile:
    """A tokenized corpus on disk: tokens in `path` (flat, dtype), counts in the sidecar JSON."""

    path: Path
    dtype: np.dtype
    num_tokens: int
    num_documents: int
    bad_lines: int
    source: str = ""  # the data file it was made from, for messages ("" when unknown)

    def load(self) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))


class TextEncoder:
    """Pretraining documents -> one flat array of `bos + tokens(text) + eos` per chunk.

    The ids come from the tokenizers library's encode_batch_fast (no character offsets: the fastest
    call, on every core, without the GIL) and reach numpy through one np.fromiter over the chunk: no
    Python work per token."""

    outputs = ("tokens",)

    def __init__(self, tokenizer: Tokenizer, text_column: str = "text"):
        self.text_column, self.dtype = text_column, token_dtype(tokenizer.vocab_size)
        self.bos, self.eos = tokenizer.bos_id, tokenizer.eos_id
        self.backend = tokenizer.backend  # encode_batch_fast returns Encodings
        self.fast = hasattr(self.backend, "encode_batch_fast")  # tokenizers >= 0.20

    def parse(self, record: Any) -> str:
        return parse_pretrain(record, self.text_column)

    def encode(self, texts: list[str]) -> list:
        call = self.backend.encode_batch_fast if self.fast else self.backend.encode_batch
        return call(texts, add_special_tokens=False)

    def arrays(self, encodings: list, counts: dict[str, int], bad: BadLines) -> dict[str, np.ndarray]:
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=self.dtype,
                          count=int(lengths.sum()))
        tokens = np.empty(len(ids) + 2 * len(lengths), dtype=self.dtype)
        ends = np.cumsum(lengths + 2)  # one past each document's eos
        inner = np.ones(len(tokens), dtype=bool)
        inner[ends - lengths - 2] = inner[ends - 1] = False
        tokens[ends - lengths - 2], tokens[ends - 1], tokens[inner] = self.bos, self.eos, ids
        counts["num_tokens"] += len(tokens)
        counts["num_documents"] += len(lengths)
        return {"tokens": tokens}


def tokenize_to_cache(data_path: str | os.PathLike, tokenizer: Tokenizer, cache_dir: Optional[str | os.PathLike] = None,
                      strict: bool = False, progress: bool = True, text_column: str = "text") -> TokenFile:
    """Tokenize one pretraining file (JSONL, .jsonl.gz, .jsonl.zst or Parquet) into the cache, or find
    it there, and describe the result. An interrupted tokenization resumes from its last chunk."""
    check_readable(data_path)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    extra = {"text_column": text_column} if text_column != "text" else None  # older keys stay valid
    stem = cache_dir / f"{Path(data_path).stem}-{cache_key(data_path, tokenizer, extra)}"
    # with_name, not with_suffix: "x.jsonl-<key>" would lose its ".jsonl-<key>"
    bin_path, meta_path = stem.with_name(stem.name + ".bin"), stem.with_name(stem.name + ".json")
    meta = from_cache(data_path, {"tokens": bin_path}, meta_path, strict)
    if meta is not None:
        log.info("tokens of %s from cache %s (%d tokens)", data_path, bin_path, meta["num_tokens"])
    else:
        def check(counts: dict[str, int], bad: BadLines) -> None:
            if counts["num_documents"] == 0:
                raise DataError(f"{data_path} has no usable document (expected lines like "
                                f"{{\"{text_column}\": \"...\"}})" + (f"; {bad.summary(data_path)}" if bad.count else ""))

        meta = build(data_path, {"tokens": bin_path}, meta_path, TextEncoder(tokenizer, text_column),
                     {"num_tokens": 0, "num_documents": 0}, check, strict, progress, text_column)
        log.info("tokenized %s: %d documents, %d tokens in %.1fs -> %s", data_path, meta["num_documents"],
                 meta["num_tokens"], meta["seconds"], bin_path)
    return TokenFile(bin_path, dtype, meta["num_tokens"], meta["num_documents"], meta["bad_lines"], str(data_path))


class PackedDataset:
    """Non-overlapping windows of seq_len + 1 tokens over a token file; sample i -> (inputs, targets).

    This is data.packing=concat; data.packing=bos_aligned is BosAlignedDataset in packing.py."""

    fixed_targets = True  # every batch of the same size has the same number of targets (no padding)

    def __init__(self, token_file: TokenFile, seq_len: int):
        self.tokens = token_file.load()
        self.seq_len = seq_len
        self.num_samples = (token_file.num_tokens - 1) // seq_len
        if self.num_samples == 0:
            raise DataError(f"{token_file.source or token_file.path} holds {token_file.num_tokens} tokens, fewer than "
                            f"data.seq_len + 1 = {seq_len + 1}: use more data or a shorter data.seq_len")

    def __len__(self) -> int:
        return self.num_samples

    def batch(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack the windows of `indices` into (inputs, targets), each (len(indices), seq_len) int64."""
        L = self.seq_len
        rows = np.stack([self.tokens[i * L:i * L + L + 1] for i in np.asarray(indices, dtype=np.int64)])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]
