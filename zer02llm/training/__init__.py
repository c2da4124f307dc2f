"""Training: the loop and what plugs into it.

The Trainer runs one loop for every mode; a mode is an objective (next token, DPO) that builds its
data and turns a batch into a loss and metrics. Beside the loop: optimizers and the learning-rate
schedule, checkpoints, token and FLOP budgets, stop signals, torch.distributed, metrics and summaries.
"""

from __future__ import annotations

from zer02llm.lazy import lazy_exports

# what this package offers, and the module that holds each, imported on first use
__getattr__, __all__ = lazy_exports(__name__, {
    "DPO": "zer02llm.training.dpo",
    "NextToken": "zer02llm.training.next_token",
    "Objective": "zer02llm.training.objective",
    "StopSignals": "zer02llm.training.signals",
    "Trainer": "zer02llm.training.trainer",
    "build_objective": "zer02llm.training.objectives",
    "build_optimizer": "zer02llm.training.optim",
    "evaluate": "zer02llm.training.validation",
    "lr_at": "zer02llm.training.optim",
    "plan_budget": "zer02llm.training.budget",
    "validate_run": "zer02llm.training.preflight",
})
