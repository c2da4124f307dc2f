"""The entry points a training objective calls: the datasets of a DataConfig, whatever form its inputs take.

Each input file is cached on its own (adding a shard tokenizes only that shard); the datasets of a
source's files are concatenated, and a mixture's sources drawn by weight (zer02llm.data.mixture).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

from zer02llm.data.jsonl import DataError
from zer02llm.data.mixture import ConcatDataset, MixtureDataset
from zer02llm.data.packing import pretrain_dataset
from zer02llm.data.pretrain import tokenize_to_cache
from zer02llm.data.sft import SFTDataset, tokenize_sft_to_cache
from zer02llm.data.sources import expand
from zer02llm.data.spec import Source, resolve
from zer02llm.model.transformer import IGNORE_INDEX
from zer02llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")


def cached_files(paths: Any, tokenize_one: Callable[[str], T], key: str = "data.train_path") -> list[T]:
    """tokenize_one(file) for every file `paths` names (a file, dir, glob or list; `key` for messages):
    each file is its own cache entry, so a new shard is the only one tokenized."""
    return [tokenize_one(path) for path in expand(paths, key)]


def _keys(data: Any, name: str) -> tuple[str, str]:
    """The config keys of a source's training and validation paths, for messages."""
    if data.mixture is None:
        return "data.train_path", "data.val_path"
    return f"data.mixture.{name}.path", "data.val_path" if name == "val" else f"data.mixture.{name}.val_path"


def _datasets(data: Any, mode: str, seed: int, build: Callable[[Any, str], Any],
              pad_values: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
    sources, vals = resolve(data, mode)
    built = {}
    for name, source in sources.items():
        key = _keys(data, name)[0]
        try:
            built[name] = build(source.path, key)
        except DataError as e:
            if data.mixture is None or str(e).startswith(key):
                raise
            raise DataError(f"{key}: {e}") from None  # which source the file belongs to
    if data.mixture is None:
        train = built["train"]
    else:
        train = MixtureDataset(built, {name: s.weight for name, s in sources.items()}, seed, pad_values)
    return train, {name: build(path, _keys(data, name)[1]) for name, path in vals.items()}


def pretrain_data(data: Any, tokenizer: Tokenizer, seed: int) -> tuple[Any, dict[str, Any]]:
    """(training dataset, validation datasets by name) for pretraining on `data` (a DataConfig):
    train_path as a file, dir, glob or list (null: the shipped sample), or data.mixture."""

    def build(paths: Any, key: str) -> Any:
        files = cached_files(paths, lambda f: tokenize_to_cache(f, tokenizer, data.cache_dir, strict=data.strict,
                                                                text_column=data.text_column), key)
        usable = [f for f in files if f.num_tokens > data.seq_len]
        for f in files:
            if len(files) > 1 and f.num_tokens <= data.seq_len:  # one file alone gets the dataset's own error
                log.warning("%s: %d tokens, fewer than data.seq_len + 1 = %d: skipped", f.source, f.num_tokens,
                            data.seq_len + 1)
        parts = [pretrain_dataset(f, data.seq_len, data.packing, tokenizer.bos_id, tokenizer.pad_id)
                 for f in (usable or files[:1])]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts, (tokenizer.pad_id, IGNORE_INDEX))

    return _datasets(data, "pretrain", seed, build, (tokenizer.pad_id, IGNORE_INDEX))


def sft_data(data: Any, tokenizer: Tokenizer, seed: int) -> tuple[Any, dict[str, Any]]:
    """(training dataset, validation datasets by name) for SFT: the same input forms as pretrain_data."""

    def build(paths: Any, key: str) -> Any:
        files = cached_files(paths, lambda f: tokenize_sft_to_cache(f, tokenizer, data.cache_dir,
                                                                    strict=data.strict), key)
        parts, refused = [], []
        for f in files:
            try:
                parts.append(SFTDataset(f, data.seq_len, tokenizer.pad_id))
            except DataError as e:  # no conversation of this file has an answer within data.seq_len
                refused.append(e)
        if not parts:  # nothing usable at all: the first file's own error
            raise refused[0]
        for e in refused:  # the other files have usable samples: train on those, as pretraining does
            log.warning("%s: skipped (the other files of %s have usable samples)", e, key)
        return parts[0] if len(parts) == 1 else ConcatDataset(parts, (tokenizer.pad_id, IGNORE_INDEX))

    return _datasets(data, "sft", seed, build, (tokenizer.pad_id, IGNORE_INDEX))


__all__ = ["Source", "cached_files", "pretrain_data", "sft_data"]
