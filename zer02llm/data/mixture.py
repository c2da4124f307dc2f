"""Datasets made of datasets: several files in a row (ConcatDataset) and weighted sources (MixtureDataset).

Both keep the interface the trainer and the BatchSampler use: `len()`, `batch(indices)` and
`fixed_targets`; sample i maps to a (part, sample of that part) pair that depends only on the parts and
the seed, so the sampler's seeded shuffle, rank sharding and exact resume work unchanged.

A mixture's epoch: N = the windows of all its sources together (as many samples as the data holds).
Source s gets n_s = N * w_s / sum(w) of them (largest remainders, so they add up to N exactly); a source
with fewer windows than n_s repeats (each pass over it in a new seeded order), one with more contributes
a seeded subset of n_s windows. Windows are seq_len + 1 tokens each, so shares of windows are shares of
tokens. The draws are fixed per seed: every epoch visits the same n_s windows of each source, in the
sampler's new order, so a subsampled source shows the same subset each epoch (train.max_steps sets a
token budget instead of epochs).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch

from zer02llm.data.jsonl import DataError
from zer02llm.model.transformer import IGNORE_INDEX

log = logging.getLogger(__name__)


def _gather(parts: Sequence[Any], part_of: np.ndarray, local: np.ndarray,
            pad_values: Optional[Sequence[int]]) -> tuple[torch.Tensor, ...]:
    """The rows of `parts[part_of[k]].batch([local[k]])` for every k, in order, as one batch; rows of
    different widths (SFT) are right-padded with pad_values (one per tensor of the batch)."""
    if len(set(part_of.tolist())) == 1:
        return parts[int(part_of[0])].batch(torch.from_numpy(local))
    pieces, where = [], []
    for p in np.unique(part_of):
        rows = np.flatnonzero(part_of == p)
        pieces.append(parts[int(p)].batch(torch.from_numpy(local[rows])))
        where.append(rows)
    order = torch.from_numpy(np.argsort(np.concatenate(where), kind="stable"))
    out = []
    for k in range(len(pieces[0])):
        tensors = [piece[k] for piece in pieces]
        width = max(t.shape[1] for t in tensors) if tensors[0].dim() > 1 else None
        if width is not None and any(t.shape[1] != width for t in tensors):
            if pad_values is None:
                raise ValueError("batches of different widths need pad_values")
            tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad_values[k]) for t in tensors]
        out.append(torch.cat(tensors)[order])
    return tuple(out)


class ConcatDataset:
    """The samples of `parts` one after another (the files of a directory, glob or list)."""

    def __init__(self, parts: Sequence[Any], pad_values: Optional[Sequence[int]] = None):
        if not parts:
            raise DataError("no dataset to concatenate")
        self.parts, self.pad_values = list(parts), pad_values
        self.ends = np.cumsum([len(p) for p in self.parts])
        self.fixed_targets = all(p.fixed_targets for p in self.parts)
        self.seq_len = getattr(self.parts[0], "seq_len", None)

    def __len__(self) -> int:
        return int(self.ends[-1])

    def locate(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """(part, index within the part) of each sample index."""
        indices = np.asarray(indices, dtype=np.int64)
        part = np.searchsorted(self.ends, indices, side="right")
        return part, indices - np.concatenate(([0], self.ends))[part]

    def batch(self, indices: Any) -> tuple[torch.Tensor, ...]:
        return _gather(self.parts, *self.locate(indices), self.pad_values)


def largest_remainder(total: int, weights: Sequence[float]) -> np.ndarray:
    """Integers proportional to `weights` that add up to `total` (Hamilton's method)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    left = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:left]] += 1
    return counts


class MixtureDataset:
    """Named sources drawn by weight (shares of tokens); sample i -> (source, window) as this module's
    docstring says, fixed by `seed`."""

    def __init__(self, sources: dict[str, Any], weights: dict[str, float], seed: int,
                 pad_values: Optional[Sequence[int]] = None):
        self.names = [name for name in sources if weights[name] > 0]
        if not self.names:
            raise DataError("data.mixture: no source with a positive weight")
        self.parts = [sources[name] for name in self.names]
        self.pad_values = pad_values
        self.fixed_targets = all(p.fixed_targets for p in self.parts)
        available = np.array([len(p) for p in self.parts], dtype=np.int64)
        self.num_samples = int(available.sum())
        self.draws = largest_remainder(self.num_samples, [weights[n] for n in self.names])
        self.source_of = np.repeat(np.arange(len(self.parts), dtype=np.int32), self.draws)
        self.window_of = np.concatenate([self._windows(s, int(n), int(w), seed)
                                         for s, (n, w) in enumerate(zip(self.draws, available))])
        for name, n, w in zip(self.names, self.draws, available):
            how = (f"repeats {n / w:.2f}x per epoch" if n > w else
                   f"uses {n / w:.1%} of its windows per epoch" if n < w else "each window once per epoch")
            log.info("mixture source %s: weight %.3g, %d of the epoch's %d windows from its %d: %s", name,
                     weights[name], n, self.num_samples, w, how)

    @staticmethod
    def _windows(source: int, n: int, available: int, seed: int) -> np.ndarray:
        # pass k over the source is a permutation seeded by (seed, source, k): repeats differ in order,
        # and a subsampled source takes a random subset rather than its first files
        passes = -(-n // available) if n else 0
        orders = [np.random.default_rng([seed, source, k]).permutation(available) for k in range(passes)]
        return np.concatenate(orders)[:n] if orders else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.num_samples

    def locate(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """(source number, window of that source) of each sample index."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.source_of[indices], self.window_of[indices]

    def batch(self, indices: Any) -> tuple[torch.Tensor, ...]:
        return _gather(self.parts, *self.locate(indices), self.pad_values)

    def source_tokens(self, indices: Any, targets: Optional[torch.Tensor] = None) -> dict[str, int]:
        """Target tokens of each source in the batch of `indices` (for a log of each source's tokens seen);
        `targets`: that batch's, when the caller has built it already (the trainer), so it is not built twice."""
        if targets is None:
            targets = self.batch(indices)[1]
        source = torch.from_numpy(self.locate(indices)[0])
        counted = (targets != IGNORE_INDEX).sum(dim=1)  # per row
        return {name: int(counted[source == s].sum()) for s, name in enumerate(self.names)}
