"""Compute-matched runs: the number of optimizer steps that a token or FLOPs budget buys.

    train.token_budget=2e6     train on ~2M tokens, whatever the model's size
    train.flops_budget=1e13    train on ~1e13 FLOPs: bigger models get fewer steps

FLOPs are training FLOPs, `flops_per_token x tokens`, with the formula the benchmark states
(Transformer.flops_per_token, scripts/bench.py): 6 * N_matmul + 12 * n_layers * dim * seq_len per
token. A budget decides the step count on its own: train.max_steps and train.epochs are then not
read (the start-of-run line says so). Pure arithmetic: no torch, no Hydra.

A step is counted as batch_size x grad_accum x world_size x seq_len tokens: exact for packed pretraining;
for SFT and DPO, whose batches are padded, the budget is an upper bound (summary.json's `tokens` and
`flops` then count the tokens really trained on: SFT's supervised ones; for DPO every prompt and answer
token of both sides, which its forward passes process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from zer02llm.config import ConfigError, TrainConfig

TOKEN_BUDGET, FLOPS_BUDGET = "train.token_budget", "train.flops_budget"


@dataclass(frozen=True)
class BudgetPlan:
    """What a budget buys: `steps` optimizer steps of `tokens_per_step` tokens each."""

    key: str  # train.token_budget or train.flops_budget
    budget: float  # in tokens or in FLOPs, as the key says
    steps: int
    tokens_per_step: int
    flops_per_token: int

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops(self) -> int:
        return self.tokens * self.flops_per_token

    def describe(self, params: int, non_embedding_params: int, max_steps: int = -1) -> str:
        """The start-of-run log line: parameters, tokens, FLOPs and steps, and how far rounding moved them."""
        spent = self.tokens if self.key == TOKEN_BUDGET else self.flops
        ignored = f"; train.max_steps={max_steps} not used" if max_steps > 0 else ""
        return (f"{self.key}={self.budget:.4g}: {self.steps:,} steps x {self.tokens_per_step:,} tokens = "
                f"{self.tokens:,} tokens, {self.flops:.4g} FLOPs ({self.flops_per_token:,} per token; "
                f"{100 * (spent / self.budget - 1):+.2f}% of the budget by rounding to whole steps); "
                f"{params:,} parameters, {non_embedding_params:,} without embeddings{ignored}")


def plan_budget(train: TrainConfig, tokens_per_step: int, flops_per_token: int) -> Optional[BudgetPlan]:
    """The steps that train.token_budget or train.flops_budget buys; None when neither is set.

    tokens_per_step: tokens one optimizer step trains on (pretraining: batch_size * grad_accum *
    world_size * seq_len); flops_per_token: Transformer.flops_per_token(seq_len). The step count is
    the budget divided by one step's tokens (or FLOPs), rounded to the nearest whole step (halves
    up), so the run spends the budget within half a step either way. ConfigError when the budget
    buys less than half a step.
    """
    if tokens_per_step <= 0 or flops_per_token <= 0:
        raise ValueError(f"tokens_per_step={tokens_per_step}, flops_per_token={flops_per_token}: must be > 0")
    if train.token_budget is not None and train.flops_budget is not None:  # validate() refuses it first
        raise ConfigError(f"{TOKEN_BUDGET} and {FLOPS_BUDGET} are both set: give one")
    if train.token_budget is not None:
        key, budget, per_step = TOKEN_BUDGET, float(train.token_budget), tokens_per_step
    elif train.flops_budget is not None:
        key, budget, per_step = FLOPS_BUDGET, float(train.flops_budget), tokens_per_step * flops_per_token
    else:
        return None
    steps = math.floor(budget / per_step + 0.5)
    if steps < 1:
        unit = "tokens" if key == TOKEN_BUDGET else "FLOPs"
        raise ConfigError(f"{key}={budget:.4g} buys less than half an optimizer step ({per_step:.4g} {unit} per "
                          f"step: batch_size x grad_accum x world_size x seq_len = {tokens_per_step:,} tokens"
                          f"{'' if key == TOKEN_BUDGET else f' x {flops_per_token:,} FLOPs per token'}): raise "
                          f"{key} to at least {per_step:.4g}, or lower train.batch_size")
    return BudgetPlan(key, budget, steps, tokens_per_step, flops_per_token)


def budget_steps(train: TrainConfig, tokens_per_step: int, flops_per_token: int) -> Optional[int]:
    """plan_budget(...).steps: the run's optimizer steps under its budget, or None without one."""
    plan = plan_budget(train, tokens_per_step, flops_per_token)
    return None if plan is None else plan.steps
