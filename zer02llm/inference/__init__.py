"""Inference: loading a checkpoint for generation, sampling, and serving the OpenAI HTTP API.
"""

from __future__ import annotations

from zer02llm.lazy import lazy_exports

# what this package offers, and the module that holds each, imported on first use
__getattr__, __all__ = lazy_exports(__name__, {
    "Loaded": "zer02llm.inference.loading",
    "SamplingParams": "zer02llm.inference.sampling",
    "StaticDecoder": "zer02llm.inference.sampling",
    "generate": "zer02llm.inference.sampling",
    "load_for_inference": "zer02llm.inference.loading",
})
