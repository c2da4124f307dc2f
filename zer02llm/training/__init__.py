"""Training: the loop and what plugs into it.

The Trainer runs one loop for every mode; a mode is an objective (next token, DPO) that builds its
data and turns a batch into a loss and metrics. Beside the loop: optimizers and the learning-rate
schedule, checkpoints, token and FLOP budgets, stop signals, torch.distributed, metrics and summaries.
"""

from __future__ import annotations

import importlib
from typing import Any

# what this package offers, and the module that holds each: imported on first use, so that importing
# one light piece (a config check, a dataclass) never loads the rest
_OFFERS = {
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
}
__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name not in _OFFERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_OFFERS[name]), name)
