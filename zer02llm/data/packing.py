"""bos-aligned packing (data.packing=bos_aligned): every pretraining window starts at a document's bos.

Concatenated windows (PackedDataset, data.packing=concat) start wherever a cut falls, so the first
tokens of a document are rarely learned at position 0, where generation starts. Here the layout is
computed once from the token file alone (numpy, no RNG; the sampler shuffles the windows):

- a document of seq_len + 1 tokens or more fills a window by itself with its first seq_len + 1 tokens;
  the rest of it (its tail) opens no window;
- shorter documents are packed whole, best-fit decreasing: a window opens with the longest document
  not yet placed and takes the longest ones that still fit in the space left;
- space that no document fits is filled with pieces of the tails (in file order, each piece a
  contiguous run), and padded (inputs pad_id, targets IGNORE_INDEX) only once the tails run out;
- tail tokens not needed as filler are dropped.

So no token of the file appears twice, every document's bos is at position 0 of a window or follows
another whole document, and windows are ordered by the place in the file of the document opening
them. Documents are found by their bos, so a bos string inside a text starts a document too. A
filler's first token, right after a document's eos, is a target like any other (not ignored, so a
window without padding has seq_len targets and fixed_targets holds).

The price is data: where documents are much longer than a window, most of each is dropped (the shared
en+zh corpus keeps 20% of its tokens at seq_len 128 and 77% at 512; concat keeps all). How many tokens
were used, dropped and padded is in `BosAlignedDataset.stats` and logged when it is built.
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from zer02llm.data.jsonl import DataError
from zer02llm.config import PACKINGS
from zer02llm.data.pretrain import PackedDataset, TokenFile
from zer02llm.model.transformer import IGNORE_INDEX

log = logging.getLogger(__name__)
SCAN_TOKENS = 1 << 24  # tokens compared with bos at a time (bounds the temporary boolean array)


def pretrain_dataset(token_file: TokenFile, seq_len: int, packing: str, bos_id: int,
                     pad_id: int) -> PackedDataset | BosAlignedDataset:
    """The pretraining dataset of `packing` (data.packing): "concat" or "bos_aligned"."""
    if packing == "concat":
        return PackedDataset(token_file, seq_len)
    if packing == "bos_aligned":
        return BosAlignedDataset(token_file, seq_len, bos_id, pad_id)
    raise DataError(f"data.packing={packing!r} is not a packing: expected one of {', '.join(PACKINGS)}")


@dataclass(frozen=True)
class PackingStats:
    """Where the tokens of a file went: `used` (in windows, `filler` of them pieces of tails) plus
    `dropped` is `num_tokens`; `padded` positions fill the rest of the windows."""

    num_windows: int
    window: int  # tokens per window: seq_len + 1
    num_documents: int
    cut_documents: int  # longer than a window: their tails open no window
    num_tokens: int
    used: int
    filler: int
    padded: int

    @property
    def dropped(self) -> int:
        return self.num_tokens - self.used

    def summary(self) -> str:
        space = self.num_windows * self.window
        return (f"{self.num_windows} windows of {self.window} tokens from {self.num_documents} documents "
                f"({self.cut_documents} cut at the window): {self.used / self.num_tokens:.1%} of the "
                f"{self.num_tokens} tokens used ({self.filler / self.num_tokens:.1%} as filler), "
                f"{self.dropped / self.num_tokens:.1%} dropped (tails of cut documents), "
                f"{self.padded / space:.2%} of window positions padding")


@dataclass
class Layout:
    """Window i is segments offsets[i]:offsets[i + 1], in order: runs tokens[start:start + length] of
    the token file, and padding where start is -1. Every window's lengths add up to seq_len + 1."""

    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64
    offsets: np.ndarray  # int64, num_windows + 1
    stats: PackingStats


def document_starts(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    """Positions of the bos tokens (int64), a bounded slice of the file at a time."""
    found = [np.flatnonzero(tokens[a:a + SCAN_TOKENS] == bos_id) + a for a in range(0, len(tokens), SCAN_TOKENS)]
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)


def best_fit(sizes: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-fit decreasing of items of `sizes` (each 1..capacity) into bins of `capacity`.

    A bin opens with the largest item not yet placed and takes the largest items that still fit; of
    equal sizes the lowest index goes first. Returns (the items in placement order, num_bins + 1
    offsets into them, the free space of each bin).

    Which sizes a bin takes depends only on which sizes are left, not on how many, so a bin's pattern
    repeats until one of its sizes runs short: the loop is over patterns (a few per distinct size),
    and numpy hands out the items.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    order = np.argsort(sizes, kind="stable")  # by size, then index
    counts = np.bincount(sizes, minlength=capacity + 1)
    first = (np.cumsum(counts) - counts).tolist()  # where the items of each size begin in `order`
    left = counts.tolist()
    present = np.flatnonzero(counts).tolist()  # sizes with items left, ascending
    bins: list[np.ndarray] = []  # (bins, items per bin) blocks of item indices
    free_space: list[np.ndarray] = []
    while present:
        pattern = []  # (size, copies), sizes decreasing
        free = capacity
        j = len(present) - 1
        while j >= 0:  # present[j] is the largest size left that fits in `free`
            size = present[j]
            copies = min(left[size], free // size)
            pattern.append((size, copies))
            free -= size * copies
            j = bisect.bisect_right(present, free, 0, j) - 1
        repeats = min(left[size] // copies for size, copies in pattern)
        block = []
        for size, copies in pattern:
            n = repeats * copies
            block.append(order[first[size]:first[size] + n].reshape(repeats, copies))
            first[size] += n
            left[size] -= n
            if not left[size]:
                present.remove(size)
        bins.append(np.hstack(block))
        free_space.append(np.full(repeats, free, dtype=np.int64))
    if not bins:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    per_bin = np.concatenate([np.full(len(b), b.shape[1], dtype=np.int64) for b in bins])
    items = np.concatenate([b.ravel() for b in bins]).astype(np.int64)
    return items, np.concatenate(([0], np.cumsum(per_bin))), np.concatenate(free_space)


def fill_gaps(free: np.ndarray, run_starts: np.ndarray, run_lengths: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill the `free` space of each window, in window order, from runs of the token file taken in
    order and split where a window's space ends. Returns pieces as (window, start, length); the space
    past the runs' total stays free."""
    space = np.concatenate(([0], np.cumsum(free)))
    supply = np.concatenate(([0], np.cumsum(run_lengths)))
    total = min(space[-1], supply[-1])
    cuts = np.union1d(space, supply)
    cuts = cuts[cuts <= total]
    a, b = cuts[:-1], cuts[1:]
    window = np.searchsorted(space, a, side="right") - 1
    run = np.searchsorted(supply, a, side="right") - 1
    return window, run_starts[run] + (a - supply[run]), b - a


def bos_aligned_layout(tokens: np.ndarray, bos_id: int, seq_len: int) -> Layout:
    """The windows of `tokens` under the rule of this module's docstring."""
    window = seq_len + 1
    num_tokens = len(tokens)
    starts = document_starts(tokens, bos_id)
    if len(starts) == 0:
        raise DataError(f"none of its {num_tokens} tokens is bos (id {bos_id}), so no window can start at a "
                        f"document: was it tokenized with another tokenizer? (data.packing=concat needs no bos)")
    lengths = np.diff(np.append(starts, num_tokens))
    long_docs = np.flatnonzero(lengths >= window)
    short_docs = np.flatnonzero(lengths < window)
    items, bin_offsets, bin_free = best_fit(lengths[short_docs], window)
    packed = short_docs[items]  # documents of the short windows, in placement order
    n_long, n_short = len(long_docs), len(bin_free)
    num_windows = n_long + n_short

    # windows in the order of the documents opening them; rank[w] is the final index of window w
    openers = np.concatenate((long_docs, packed[bin_offsets[:-1]]))
    rank = np.empty(num_windows, dtype=np.int64)
    rank[np.argsort(openers, kind="stable")] = np.arange(num_windows)
    doc_window = rank[np.concatenate((np.arange(n_long), n_long + np.repeat(np.arange(n_short),
                                                                             np.diff(bin_offsets))))]
    doc_starts = starts[np.concatenate((long_docs, packed))]
    doc_lengths = np.concatenate((np.full(n_long, window, dtype=np.int64), lengths[packed]))
    free = np.zeros(num_windows, dtype=np.int64)
    free[rank[n_long:]] = bin_free

    # spare tokens, in file order: any before the first bos, then the tails of the cut documents
    cut = np.flatnonzero(lengths > window)
    head = np.array([0] if starts[0] else [], dtype=np.int64)
    spare_starts = np.concatenate((head, starts[cut] + window))
    spare_lengths = np.concatenate((head + starts[0], lengths[cut] - window))
    fill_window, fill_starts, fill_lengths = fill_gaps(free, spare_starts, spare_lengths)
    pad = free - np.bincount(fill_window, weights=fill_lengths, minlength=num_windows).astype(np.int64)
    pad_window = np.flatnonzero(pad)

    # documents first, then filler, then padding: a stable sort by window keeps that order inside each
    seg_window = np.concatenate((doc_window, fill_window, pad_window))
    order = np.argsort(seg_window, kind="stable")
    seg_starts = np.concatenate((doc_starts, fill_starts, np.full(len(pad_window), -1, dtype=np.int64)))[order]
    seg_lengths = np.concatenate((doc_lengths, fill_lengths, pad[pad_window]))[order]
    offsets = np.concatenate(([0], np.cumsum(np.bincount(seg_window, minlength=num_windows))))
    filler = int(fill_lengths.sum())
    stats = PackingStats(num_windows=num_windows, window=window, num_documents=len(starts),
                         cut_documents=len(cut), num_tokens=num_tokens,
                         used=int(doc_lengths.sum()) + filler, filler=filler, padded=int(pad.sum()))
    return Layout(seg_starts.astype(np.int64), seg_lengths.astype(np.int64), offsets.astype(np.int64), stats)


class BosAlignedDataset:
    """Windows of seq_len + 1 tokens that each start at a document's bos; sample i -> (inputs, targets).

    The layout is this module's docstring's. Targets are the next token of the window, IGNORE_INDEX
    where it is padding; padding only appears once the tails of long documents are used up.
    """

    def __init__(self, token_file: TokenFile, seq_len: int, bos_id: int, pad_id: int):
        source = token_file.source or token_file.path  # the user knows the data file, not the cache
        if seq_len < 1:
            raise DataError(f"data.seq_len={seq_len} is not positive")
        if token_file.num_tokens == 0:
            raise DataError(f"{source} holds no tokens: data.packing=bos_aligned needs at least one document")
        self.tokens = token_file.load()
        self.seq_len, self.pad_id = seq_len, pad_id
        started = time.perf_counter()
        try:
            self.layout = bos_aligned_layout(self.tokens, bos_id, seq_len)
        except DataError as e:
            raise DataError(f"{source}: {e}") from None
        self.stats = self.layout.stats
        # without padding every window has seq_len targets, so ranks need not all-reduce their counts
        self.fixed_targets = self.stats.padded == 0
        log.info("bos_aligned packing of %s in %.2fs: %s", source, time.perf_counter() - started,
                 self.stats.summary())

    def __len__(self) -> int:
        return self.stats.num_windows

    def segments(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of the runs of the token file window i is made of; start -1 is padding."""
        a, b = self.layout.offsets[i], self.layout.offsets[i + 1]
        return self.layout.starts[a:b], self.layout.lengths[a:b]

    def batch(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack the windows of `indices` into (inputs, targets), each (len(indices), seq_len) int64."""
        layout, window = self.layout, self.seq_len + 1
        indices = np.asarray(indices, dtype=np.int64)
        lo, hi = layout.offsets[indices], layout.offsets[indices + 1]
        count = hi - lo
        seg = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(count.sum())
        starts, lengths = layout.starts[seg], layout.lengths[seg]
        # position in the file of every token of the batch: each run's start plus the offset into it
        position = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(len(indices) * window)
        padding = np.repeat(starts < 0, lengths)
        rows = np.where(padding, self.pad_id, self.tokens[np.where(padding, 0, position)].astype(np.int64))
        rows, padding = rows.reshape(len(indices), window), padding.reshape(len(indices), window)
        targets = np.where(padding[:, 1:], IGNORE_INDEX, rows[:, 1:])
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(targets)


def first_positions_mask(inputs: torch.Tensor, targets: torch.Tensor, bos_id: int, k: int = 8,
                         eos_id: Optional[int] = None) -> torch.Tensor:
    """(B, T) bool: the target is one of the first k tokens after its document's bos (document
    positions 1..k, the first k a model generates from a bos prompt), for a loss by position.

    A document counts from a bos in the same row: tokens before a row's first bos (a document begun
    in an earlier window, as concat windows start) are never first positions, nor are targets that
    are bos or IGNORE_INDEX. With `eos_id`, a document also ends at its eos, so text after an eos
    without a bos (bos_aligned filler) is not taken for the start of the document before it.
    """
    T = inputs.size(1)
    index = torch.arange(T, device=inputs.device).expand_as(inputs)
    # the latest bos at or before each input position, -1 where the row has none yet
    last_bos = torch.where(inputs == bos_id, index, -1).cummax(dim=1).values
    mask = (last_bos >= 0) & (index - last_bos < k) & (targets != bos_id) & (targets != IGNORE_INDEX)
    if eos_id is not None:
        last_eos = torch.where(inputs == eos_id, index, -1).cummax(dim=1).values
        mask &= last_eos < last_bos
    return mask
