"""Command-line conveniences shared by the entry points (no Hydra import here)."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from zer02llm.config import ConfigError, nearest_keys

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
    A `[a,b]` value of a text key is a list: each element is quoted (data.train_path=[shard1,shard2]).
    For `list_keys`, a value that is not a `[...]` list becomes a one-element list.
    """
    fixed = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        name = key.lstrip("+~")
        # `null` is Hydra's None: quoting it would make a path key the string 'null'
        if sep and value and value[0] not in "'\"" and value != "null":
            if name in keys and value[0] == "[" and value[-1] == "]":  # a list of paths: each element quoted
                elements = (e.strip() for e in value[1:-1].split(","))
                quoted = [e if e[0] in "'\"" else hydra_quote(e) for e in elements if e]
                arg = f"{key}=[{','.join(quoted)}]"
            elif name in keys:
                arg = f"{key}={hydra_quote(value)}"
            elif name in list_keys and value[0] != "[":
                arg = f"{key}=[{hydra_quote(value)}]"
        fixed.append(arg)
    return fixed


# Hydra's own options that take a value (`--cfg job`); their values are not overrides
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def task_overrides(argv: Sequence[str]) -> list[str]:
    """The `key=value` overrides of a command line, without Hydra's flags and hydra.* settings."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE
        elif not arg.lstrip("+~").startswith(("hydra.", "hydra/", "hydra=")):
            overrides.append(arg)
    return overrides


def unknown_override_keys(argv: Sequence[str], schema: type, alternatives: dict[str, Sequence[type]]) -> list[str]:
    """`section.key=value` overrides naming no declared key, each with the nearest valid ones.

    Hydra's own message for a typo suggests `+section.key=...`, which would add a key that nothing
    reads; this says what was probably meant instead. `alternatives`: sections whose schema depends
    on the chosen preset (model: dense or moe), checked against the union of their keys.
    """
    hints = typing.get_type_hints(schema)
    problems = []
    for override in task_overrides(argv):
        key = override.partition("=")[0]
        if key[:1] in "+~" or "." not in key:
            continue  # additions are checked on the composed config; `group=option` is Hydra's
        section, _, name = key.partition(".")
        section_type = hints.get(section)
        if not (isinstance(section_type, type) and dataclasses.is_dataclass(section_type)):
            continue
        name = name.split(".")[0]
        declared = {f.name for cls in (section_type, *alternatives.get(section, ())) for f in dataclasses.fields(cls)}
        if name not in declared:
            problems.append(f"{section}.{name}: no such setting; {nearest_keys(name, declared, section + '.')}")
    return problems


def check_printed_config(argv: Sequence[str], config_name: str, check: Callable[[Any], object],
                         config_dir: Optional[Path] = None) -> None:
    """After `--cfg job` printed the composed config (and ran nothing), compose it again and say
    what a run would refuse in it: exit status 2 with every problem listed."""
    if not any(arg in ("--cfg", "-c") for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from zer02llm.resources import shipped_path

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir or shipped_path("conf"))):
        dict_cfg = compose(config_name=config_name, overrides=task_overrides(argv))
    try:
        check(dict_cfg)
    except ConfigError as e:
        print(f"error: a run with this config would be refused: {e}", file=sys.stderr)
        sys.exit(2)
