"""Pretraining data: JSONL tokenized once into a flat token file, read back through a memory map.

Each document becomes `bos + tokens(text) + eos` and documents are packed back to back; a sample
is a window of seq_len + 1 consecutive tokens (inputs and next-token targets), windows do not
overlap, and no token is padding. The token file is cached under a key made of the data file's
identity (path, size, modification time) and the tokenizer's fingerprint, so a second run starts at
once, and it is written to a temporary name and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TextIO

import numpy as np
import torch
from tqdm import tqdm

from zer02llm.data.jsonl import BadLines, DataError, check_readable, iter_records, parse_pretrain
from zer02llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the layout of the token file changes
LINES_PER_BATCH = 2048


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zer02llm"


class ByteProgress:
    """Progress through a data file being tokenized, in bytes.

    Like the training bar: a live tqdm bar when stderr is a terminal; otherwise (a redirected log,
    a SLURM job) no `\\r` frames but a log line every 10% or `interval` seconds, with MB done, MB/s
    and the ETA, and none for a file done within `min_gap` seconds.
    """

    def __init__(self, total: int, name: str, enabled: bool = True, stream: Optional[TextIO] = None,
                 interval: float = 30.0, min_gap: float = 5.0, clock: Callable[[], float] = time.monotonic):
        stream = stream if stream is not None else sys.stderr
        self.total, self.name, self.clock = max(total, 1), name, clock
        self.interval, self.min_gap = interval, min_gap
        self.done = 0
        self.started = self.last = clock()
        self.next_tenth = 1
        self.logging = enabled and not stream.isatty()
        self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing {name}", mininterval=1.0,
                        file=stream, disable=not enabled or self.logging)

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        if not self.logging:
            return
        now = self.clock()
        tenth = self.done * 10 // self.total
        if now - self.last >= self.min_gap and (tenth >= self.next_tenth or now - self.last >= self.interval):
            self.last, self.next_tenth = now, tenth + 1
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            log.info("tokenizing %s: %.1f of %.1f MB (%d%%), %.1f MB/s, ETA %s", self.name, self.done / 1e6,
                     self.total / 1e6, 100 * self.done // self.total, rate / 1e6, tqdm.format_interval(eta))

    def close(self) -> None:
        self.bar.close()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def cache_key(path: str | os.PathLike, tokenizer: Tokenizer, extra: Optional[dict] = None) -> str:
    """Identity of a tokenized file: the data file (path, size, mtime), the tokenizer, and `extra`
    (what else shapes the tokens, e.g. SFT's chat template)."""
    stat = os.stat(path)
    identity = {
        "format": CACHE_FORMAT,
        "path": os.path.realpath(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "tokenizer": tokenizer.fingerprint,
        "bos": tokenizer.bos_id,
        "eos": tokenizer.eos_id,
        **({"extra": extra} if extra else {}),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


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


def tokenize_to_cache(data_path: str | os.PathLike, tokenizer: Tokenizer, cache_dir: Optional[str | os.PathLike] = None,
                      strict: bool = False, progress: bool = True) -> TokenFile:
    """Tokenize a pretraining JSONL file into the cache (or find it there) and describe the result."""
    check_readable(data_path)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    stem = cache_dir / f"{Path(data_path).stem}-{cache_key(data_path, tokenizer)}"
    bin_path, meta_path = stem.with_suffix(".bin"), stem.with_suffix(".json")
    if meta_path.exists() and bin_path.exists():
        meta = json.loads(meta_path.read_text())
        log.info("tokens of %s from cache %s (%d tokens)", data_path, bin_path, meta["num_tokens"])
        if meta["bad_lines"] and strict:
            raise DataError(f"{meta['bad_summary']} (data.strict=true; set it false to skip such lines)")
        if meta["bad_lines"]:
            log.warning("%s (counted when the cache was built)", meta["bad_summary"])
        return TokenFile(bin_path, dtype, meta["num_tokens"], meta["num_documents"], meta["bad_lines"], str(data_path))

    started = time.time()
    bad = BadLines()
    num_tokens = num_documents = 0
    tmp_bin = bin_path.with_suffix(f".bin.tmp{os.getpid()}")
    bar = ByteProgress(os.path.getsize(data_path), Path(data_path).name, enabled=progress)
    try:
        with open(tmp_bin, "wb") as out:
            batch: list[str] = []
            records = iter_records(data_path, parse_pretrain, bad, strict=strict, on_bytes=bar.update)
            for text in records:
                batch.append(text)
                if len(batch) == LINES_PER_BATCH:
                    num_tokens += _write_batch(out, batch, tokenizer, dtype)
                    num_documents += len(batch)
                    batch = []
            if batch:
                num_tokens += _write_batch(out, batch, tokenizer, dtype)
                num_documents += len(batch)
        if num_documents == 0:
            raise DataError(f"{data_path} has no usable document (expected lines like {{\"text\": \"...\"}})"
                            + (f"; {bad.summary(data_path)}" if bad.count else ""))
        os.replace(tmp_bin, bin_path)
    finally:
        bar.close()
        tmp_bin.unlink(missing_ok=True)
    if bad.count:
        log.warning("%s (data.strict=true makes them an error)", bad.summary(data_path))
    meta = {"source": os.path.realpath(data_path), "num_tokens": num_tokens, "num_documents": num_documents,
            "bad_lines": bad.count, "bad_summary": bad.summary(data_path), "tokenizer": str(tokenizer.path),
            "seconds": round(time.time() - started, 2)}
    write_atomic(meta_path, json.dumps(meta, indent=1))
    log.info("tokenized %s: %d documents, %d tokens in %.1fs -> %s", data_path, num_documents, num_tokens,
             meta["seconds"], bin_path)
    return TokenFile(bin_path, dtype, num_tokens, num_documents, bad.count, str(data_path))


def _write_batch(out, texts: list[str], tokenizer: Tokenizer, dtype: np.dtype) -> int:
    # encode_batch runs on all cores inside the tokenizers library
    pieces = []
    for ids in tokenizer.encode_batch(texts):
        pieces.extend((tokenizer.bos_id, *ids, tokenizer.eos_id))
    np.asarray(pieces, dtype=dtype).tofile(out)
    return len(pieces)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
