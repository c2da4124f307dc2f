"""Sweeps: what a Hydra multirun produced, read back. Job directories and their status, the summary
table and plots, the scaling-law fit, and the Optuna search's pieces. Nothing here imports Hydra.
"""

from __future__ import annotations

import importlib
from typing import Any

# what this package offers, and the module that holds each: imported on first use, so that importing
# one light piece (a config check, a dataclass) never loads the rest
_OFFERS = {
    "collect": "zer02llm.sweeps.jobs",
    "fit_power_law": "zer02llm.sweeps.scaling",
    "summarize": "zer02llm.sweeps.summary",
}
__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name not in _OFFERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_OFFERS[name]), name)
