"""Lazy package exports: a package's __init__ names what it offers without importing it.

Importing one light piece (a config check, a dataclass) must not load torch and the rest of the package:
a refused command answers at once, and `python -m zer02llm.serve --help` starts in a blink.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, offers: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """(__getattr__, __all__) for `package`, whose names `offers` maps to the modules that hold them."""

    def __getattr__(name: str) -> Any:
        if name not in offers:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(offers[name]), name)

    return __getattr__, sorted(offers)
