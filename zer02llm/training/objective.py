"""Training objectives: what a mode trains on and how a batch becomes a loss and its metrics.

The Trainer runs steps, accumulation, AMP, clipping, the schedule and the cadence of evaluation and
checkpoints without knowing which mode it runs; everything that differs between modes is an Objective.
Pretraining and SFT share next-token prediction (they differ only in their data); DPO
(zer02llm/training/dpo.py) brings pairs and a frozen reference; GRPO (grpo.py) makes its batches
from rollouts of the model it trains (step_batches).

A step's loss is the mean over its *units* (target tokens for next-token prediction, pairs for
DPO) on every micro-batch and rank, however the micro-batches' counts differ.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from zer02llm.config import Config
from zer02llm.data.spec import resolve
from zer02llm.model import Output
from zer02llm.tokenizer import Tokenizer

Batch = tuple[torch.Tensor, ...]
Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass
class Computed:
    """What one micro-batch gives the loop."""

    loss: torch.Tensor  # mean over the micro-batch's units: backpropagated (with the MoE balance loss) and logged
    output: Output  # the model's output, for the MoE balance loss and router figures
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # more means over the units (DPO's rewards)


class Dataset(Protocol):
    fixed_targets: bool  # every batch of one size has as many units and tokens: no all-reduce of the counts

    def __len__(self) -> int: ...

    def batch(self, indices: Any) -> Batch: ...


class Objective:
    """A mode's data, loss and validation. `metric_names`: the keys of Computed.metrics."""

    metric_names: tuple[str, ...] = ()
    # what the run starts from matters: warn when a fine-tuning mode starts from random weights
    fine_tunes = False
    sample_name = "sequence"  # what one index of the dataset is, for the log
    # validate the starting weights as well (a step-0 row) when a run starts, so that its log and metrics show the
    # held-out figures before and after: what RL on top of SFT is judged by
    validates_at_start = False

    def __init__(self, cfg: Config, tokenizer: Tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer

    def datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        """The training set and the validation sets by name ("val": the one of data.val_path; a mixture's
        sources by their names). Here: one input, each built by dataset(); validate() has refused
        data.mixture for the modes that take this path."""
        sources, vals = resolve(self.cfg.data, self.cfg.mode.name)
        return (self.dataset(sources["train"].path, "data.train_path"),
                {name: self.dataset(path, "data.val_path") for name, path in vals.items()})

    def dataset(self, paths: Any, key: str) -> Dataset:
        """The dataset of `paths` (a file, directory, glob or list; `key` names it in messages)."""
        raise NotImplementedError

    def prepare(self, model: torch.nn.Module, device: torch.device, autocast: Autocast) -> None:
        """Once the model holds its starting weights, before the first step (DPO: the reference)."""

    def step_batches(self, draw: Callable[[], list[Batch]], step: int) -> list[Batch]:
        """The micro-batches of optimizer step `step` (0-based). `draw()` takes the sampler's next
        train.grad_accum batches of the training set; here they are the step's batches. An objective that
        makes its batches with the model (GRPO's rollouts) turns what it draws into them, and may draw
        only every few steps."""
        return draw()

    def state_dict(self) -> dict[str, Any]:
        """What the objective holds between steps that an exact resume needs (saved in the checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what state_dict() gave."""

    def counts(self, batch: Batch) -> tuple[int, int]:
        """(units the loss averages over, tokens trained on) in a micro-batch, counted on the host."""
        raise NotImplementedError

    def compute(self, forward: Callable[..., Output], batch: Batch) -> Computed:
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, dataset: Dataset, device: torch.device, rank: int, world_size: int,
                 autocast: Autocast) -> dict[str, float]:
        """Validation figures keyed `val_*`: the same on every rank."""
        raise NotImplementedError
