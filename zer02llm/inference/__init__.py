"""Inference: loading a checkpoint for generation, sampling, and serving the OpenAI HTTP API.
"""

from __future__ import annotations

import importlib
from typing import Any

# what this package offers, and the module that holds each: imported on first use, so that importing
# one light piece (a config check, a dataclass) never loads the rest
_OFFERS = {
    "Loaded": "zer02llm.inference.loading",
    "SamplingParams": "zer02llm.inference.sampling",
    "StaticDecoder": "zer02llm.inference.sampling",
    "generate": "zer02llm.inference.sampling",
    "load_for_inference": "zer02llm.inference.loading",
}
__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name not in _OFFERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_OFFERS[name]), name)
