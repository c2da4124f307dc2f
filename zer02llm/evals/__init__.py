"""Task evaluation: tasks (local JSONL/Parquet files), the scorer, the report card, the lm-evaluation-harness model.
"""

from __future__ import annotations

from zer02llm.lazy import lazy_exports

# what this package offers, and the module that holds each, imported on first use: the trainer's import of
# the report card never loads the scorer
__getattr__, __all__ = lazy_exports(__name__, {
    "LanguageModel": "zer02llm.evals.scorer",
    "ModelScorer": "zer02llm.evals.scorer",
    "Task": "zer02llm.evals.tasks",
    "TaskResult": "zer02llm.evals.runner",
    "format_table": "zer02llm.evals.runner",
    "load_all": "zer02llm.evals.tasks",
    "make_scorer": "zer02llm.evals.scorer",
    "run_tasks": "zer02llm.evals.runner",
    "write_report": "zer02llm.evals.report",
})
