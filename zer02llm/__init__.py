"""zer02llm: pretrain, fine-tune and serve small LLaMA-style models.

`from zer02llm import LLM` (and SamplingParams) load the inference engine on first use only, so that
`import zer02llm.config` stays light.
"""

from __future__ import annotations

from zer02llm.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "LLM": "zer02llm.inference.engine.llm",
    "SamplingParams": "zer02llm.inference.engine.sequence",
    "EngineConfig": "zer02llm.config",
})
