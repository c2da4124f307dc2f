"""What the data config names: the training and validation inputs of a mode, and a mixture's sources.

Stdlib (and PyYAML, for a mixture file) only: config validation imports it before anything heavy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from zer02llm.data.jsonl import DataError
from zer02llm.data.sources import file_problems

# the shipped sample corpus of each mode (data.train_path=null), and its validation file (val_path=auto)
SAMPLE_FILES = {"pretrain": ("pretrain.jsonl", "val.jsonl"), "sft": ("sft.jsonl", "sft_val.jsonl"),
                "dpo": ("dpo.jsonl", "dpo_val.jsonl"), "grpo": ("grpo.jsonl", "grpo_val.jsonl")}
SOURCE_KEYS = ("path", "weight", "val_path")


@dataclass(frozen=True)
class Source:
    """One named input: its paths (a file, dir, glob or list), its share of the tokens, its validation paths."""

    name: str
    path: Any
    weight: float = 1.0
    val_path: Any = None

    @property
    def key(self) -> str:
        return f"data.mixture.{self.name}"


def load_mixture(value: Any) -> dict[str, Source]:
    """The sources of data.mixture: a mapping {name: {path, weight, val_path?}}, or the path of a YAML
    file holding one (at its top level or under `mixture:`). DataError names the bad key."""
    if value is None:
        return {}
    if isinstance(value, (str, os.PathLike)):
        import yaml

        if not os.path.isfile(value):
            raise DataError(f"data.mixture={value}: no such YAML file (relative paths start from {os.getcwd()})")
        try:
            with open(value, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise DataError(f"data.mixture={value}: not valid YAML ({e})") from None
        if isinstance(loaded, dict) and isinstance(loaded.get("mixture"), dict):
            loaded = loaded["mixture"]
        if not isinstance(loaded, dict):
            raise DataError(f"data.mixture={value}: expected a mapping of sources, e.g. "
                            f"web: {{path: data/web, weight: 0.7}}")
        value = loaded
    if not isinstance(value, dict) or not value:
        raise DataError(f"data.mixture={value!r}: expected a non-empty mapping of sources, e.g. "
                        f"{{web: {{path: data/web, weight: 0.7}}, books: {{path: data/books, weight: 0.3}}}}")
    sources = {}
    for name, spec in value.items():
        key = f"data.mixture.{name}"
        if not isinstance(spec, dict):
            raise DataError(f"{key}={spec!r}: expected {{path: ..., weight: ...}} (val_path optional)")
        unknown = sorted(set(spec) - set(SOURCE_KEYS))
        if unknown:
            raise DataError(f"{key}.{unknown[0]}: no such setting of a mixture source; valid: {', '.join(SOURCE_KEYS)}")
        if spec.get("path") is None:
            raise DataError(f"{key}.path is missing: name the source's file, directory, glob or list")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise DataError(f"{key}.weight={weight!r}: must be a number >= 0 (its share of the tokens)")
        if weight < 0:
            raise DataError(f"{key}.weight={weight}: must be >= 0 (0 keeps the source for validation only)")
        sources[str(name)] = Source(str(name), spec["path"], float(weight), spec.get("val_path"))
    if not any(s.weight > 0 for s in sources.values()):
        raise DataError(f"data.mixture: all weights are 0 ({', '.join(sources)}): give at least one source a "
                        f"positive weight")
    return sources


def mixture_problems(data: Any, mode: str, check_files: bool = True) -> list[str]:
    """Problems of data.mixture (and of its files when `check_files`), as validate() lists them."""
    if data.mixture is None:
        return []
    if data.train_path is not None:
        return [f"data.mixture and data.train_path={data.train_path} are both set: the mixture's sources are "
                f"the training data; drop data.train_path (or data.mixture)"]
    if mode not in ("pretrain", "sft"):
        return [f"data.mixture is for mode=pretrain and mode=sft, not mode={mode}: use data.train_path"]
    try:
        sources = load_mixture(data.mixture)
    except DataError as e:
        return [str(e)]
    problems = []
    if check_files:
        for source in sources.values():
            if source.weight > 0:
                problems += file_problems(f"{source.key}.path", source.path)
            if source.val_path is not None:
                problems += file_problems(f"{source.key}.val_path", source.val_path)
    return problems


def resolve(data: Any, mode: str) -> tuple[dict[str, Source], dict[str, Any]]:
    """(training sources by name, validation inputs by name) of `data` for `mode`.

    Without a mixture there is one source, "train", of weight 1. A null train_path means the shipped
    sample corpus, and val_path "auto" its validation file (no validation for a corpus of one's own);
    a mixture's sources with a val_path are validated each under their name, data.val_path as "val".
    """
    from zer02llm.resources import sample_data_path

    val_path: Optional[Any] = data.val_path
    if data.mixture is not None:
        sources = load_mixture(data.mixture)
        vals = {s.name: s.val_path for s in sources.values() if s.val_path is not None}
        if val_path not in (None, "auto"):
            vals["val"] = val_path
        return {name: s for name, s in sources.items() if s.weight > 0}, vals
    if data.train_path is None:
        train_file, val_file = SAMPLE_FILES[mode]
        train, val = str(sample_data_path(train_file)), str(sample_data_path(val_file)) if val_path == "auto" \
            else val_path
    else:
        train, val = data.train_path, None if val_path == "auto" else val_path
    return {"train": Source("train", train)}, ({"val": val} if val is not None else {})
