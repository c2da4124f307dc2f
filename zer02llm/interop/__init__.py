"""Interop: our checkpoints in other tools' formats, and theirs in ours. Our parameter names map to
transformers' in one place (zer02llm.interop.transformers) and to GGUF's in another (zer02llm.interop.gguf);
the model never learns them.
"""

from __future__ import annotations

from zer02llm.lazy import lazy_exports

# what this package offers, and the module that holds each, imported on first use
__getattr__, __all__ = lazy_exports(__name__, {
    "InteropError": "zer02llm.interop.transformers",
    "from_transformers": "zer02llm.interop.transformers",
    "is_transformers_dir": "zer02llm.interop.transformers",
    "to_transformers": "zer02llm.interop.transformers",
    "gguf_tensors": "zer02llm.interop.gguf",
    "write_gguf": "zer02llm.interop.gguf",
    "transformers_config": "zer02llm.interop.transformers",
})
