"""zer02llm: pretrain, fine-tune and serve small LLaMA-style models.

`from zer02llm import LLM` (and SamplingParams) load the inference engine on first use only, so that
`import zer02llm.config` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"LLM": "zer02llm.inference.engine.llm", "SamplingParams": "zer02llm.inference.engine.sequence",
         "EngineConfig": "zer02llm.config"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
