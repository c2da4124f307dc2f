"""The inference engine: continuous batching over a paged KV cache with prefix caching (docs/serving.md).

    from zer02llm import LLM
    llm = LLM("outputs/<run>", max_batch=32)
    outputs = llm.generate(["Once upon a time", "The sky is"], max_tokens=64, temperature=0)

Files: sequence.py (a request: prompt, SamplingParams, callback, cancel), block_manager.py (the KV cache's
blocks, token budget and prefix caching), scheduler.py (who runs in the next step), model_runner.py (one
batched forward; CUDA graphs for decoding), sampler.py (next tokens, logprobs), text.py (incremental text and
stop strings), engine.py (the step loop: offline or in a background thread), llm.py (the Python API).
"""

from __future__ import annotations

from zer02llm.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "LLM": "zer02llm.inference.engine.llm",
    "CompletionOutput": "zer02llm.inference.engine.llm",
    "RequestOutput": "zer02llm.inference.engine.llm",
    "Score": "zer02llm.inference.engine.llm",
    "LLMEngine": "zer02llm.inference.engine.engine",
    "QueueFull": "zer02llm.inference.engine.engine",
    "SamplingParams": "zer02llm.inference.engine.sequence",
    "Sequence": "zer02llm.inference.engine.sequence",
    "Delta": "zer02llm.inference.engine.sequence",
    "TokenLogprob": "zer02llm.inference.engine.sequence",
})
