"""Command-line conveniences shared by the entry points (no Hydra import here)."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

from zer02llm.config import ConfigError

C = TypeVar("C")


def run_reporting_errors(run: Callable[[C], object], cfg: C) -> None:
    """Run a command on its config; a bad setting or a missing file is one line on stderr and exit
    status 2 (no traceback), Ctrl-C exit status 130."""
    try:
        run(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def hydra_quote(value: str) -> str:
    """Quote a raw string for Hydra's override grammar, keeping it literal.

    In a single-quoted Hydra value only a quote and the backslashes right before it (or before
    the closing quote) are special, so exactly those are escaped.
    """
    out, backslashes = [], 0
    for ch in value:
        if ch == "\\":
            backslashes += 1
            continue
        if ch == "'":
            out.append("\\" * (2 * backslashes) + "\\'")
        else:
            out.append("\\" * backslashes + ch)
        backslashes = 0
    out.append("\\" * (2 * backslashes))
    return "'" + "".join(out) + "'"


def quote_text_overrides(argv: list[str], keys: tuple[str, ...], list_keys: tuple[str, ...] = ()) -> list[str]:
    """Quote `key=value` arguments whose value is free text (prompts, paths), unless already quoted.

    Hydra's grammar rejects commas, brackets and non-ASCII characters in unquoted values, so
    `prompt=星期三，天气很好` would fail; users should not have to know to write `'prompt="…"'`.
    For `list_keys`, a value that is not a `[...]` list becomes a one-element list.
    """
    fixed = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        name = key.lstrip("+~")
        if sep and value and value[0] not in "'\"":
            if name in keys:
                arg = f"{key}={hydra_quote(value)}"
            elif name in list_keys and value[0] != "[":
                arg = f"{key}=[{hydra_quote(value)}]"
        fixed.append(arg)
    return fixed
