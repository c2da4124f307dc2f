"""Interop: our checkpoints in other tools' formats, and theirs in ours. Our parameter names map to
transformers' in one place (zer02llm.interop.transformers) and to GGUF's in another (zer02llm.interop.gguf);
the model never learns them.
"""

from __future__ import annotations

import importlib
from typing import Any

# what this package offers, and the module that holds each: imported on first use, so that importing
# one light piece (a config check, a dataclass) never loads the rest
_OFFERS = {
    "InteropError": "zer02llm.interop.transformers",
    "from_transformers": "zer02llm.interop.transformers",
    "is_transformers_dir": "zer02llm.interop.transformers",
    "to_transformers": "zer02llm.interop.transformers",
    "gguf_tensors": "zer02llm.interop.gguf",
    "write_gguf": "zer02llm.interop.gguf",
    "transformers_config": "zer02llm.interop.transformers",
}
__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name not in _OFFERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_OFFERS[name]), name)
