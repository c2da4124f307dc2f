"""Which samples each step reads: a seeded shuffle per epoch, sharded across ranks, resumable exactly."""

from __future__ import annotations

import torch

from zer02llm.data.jsonl import DataError


class BatchSampler:
    """Yields batches of sample indices for this rank, epoch after epoch.

    Epoch e visits a permutation seeded by (seed + e), in global batches of batch_size * world_size
    samples (a last partial global batch is dropped); rank r takes the r-th slice of each. The
    position is the number of samples of the current epoch already consumed by all ranks together,
    so a run can resume with any world size that divides it.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_samples // self.global_batch
        if self.batches_per_epoch == 0:
            raise DataError(f"the data has {num_samples} samples, fewer than one global batch of "
                            f"{self.global_batch} (batch_size {batch_size} x {world_size} rank(s)): "
                            f"use more data, a smaller train.batch_size or a shorter data.seq_len")
        self.epoch = 0
        self.offset = 0  # samples of this epoch consumed, summed over ranks
        self._order: torch.Tensor | None = None

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + self.epoch)
                self._order = torch.randperm(self.num_samples, generator=generator)
            else:
                self._order = torch.arange(self.num_samples)
        return self._order

    def next_batch(self) -> torch.Tensor:
        if self.offset + self.global_batch > self.num_samples:
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        start = self.offset + self.rank * self.batch_size
        indices = self._epoch_order()[start:start + self.batch_size]
        self.offset += self.global_batch
        return indices

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "num_samples": self.num_samples, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_samples"] != self.num_samples:
            raise DataError(f"the checkpoint's data position is for {state['num_samples']} samples, but this "
                            f"data has {self.num_samples}: resume with the same data and data.seq_len")
        if state["offset"] % self.global_batch:
            raise DataError(f"the checkpoint stopped {state['offset']} samples into an epoch, not a multiple of "
                            f"this run's global batch {self.global_batch}: keep batch_size x world size")
        self.epoch, self.offset, self.seed, self._order = state["epoch"], state["offset"], state["seed"], None
