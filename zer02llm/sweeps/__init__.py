"""Sweeps: what a Hydra multirun produced, read back. Job directories and their status, the summary
table and plots, the scaling-law fit, and the Optuna search's pieces. Nothing here imports Hydra.
"""

from __future__ import annotations

from zer02llm.lazy import lazy_exports

# what this package offers, and the module that holds each, imported on first use
__getattr__, __all__ = lazy_exports(__name__, {
    "collect": "zer02llm.sweeps.jobs",
    "fit_power_law": "zer02llm.sweeps.scaling",
    "summarize": "zer02llm.sweeps.summary",
})
