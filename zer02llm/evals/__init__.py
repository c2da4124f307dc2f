"""Task evaluation: tasks (local JSONL/Parquet files), the scorer, the report card, the lm-evaluation-harness model.
"""

from __future__ import annotations

import importlib
from typing import Any

# what this package offers, and the module that holds each: imported on first use, so that the trainer's
# import of the report card never loads the scorer
_OFFERS = {
    "LanguageModel": "zer02llm.evals.scorer",
    "ModelScorer": "zer02llm.evals.scorer",
    "Task": "zer02llm.evals.tasks",
    "TaskResult": "zer02llm.evals.runner",
    "format_table": "zer02llm.evals.runner",
    "load_all": "zer02llm.evals.tasks",
    "make_scorer": "zer02llm.evals.scorer",
    "run_tasks": "zer02llm.evals.runner",
    "write_report": "zer02llm.evals.report",
}
__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name not in _OFFERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_OFFERS[name]), name)
