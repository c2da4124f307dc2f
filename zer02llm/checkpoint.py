"""Checkpoints: one directory per save, written under a temporary name and renamed into place.

    checkpoints/step_0000200/
        model.safetensors   weights (tied embeddings stored once)
        trainer.pt          optimizer, scaler, data position, RNG states, step (tensors and plain
                            containers only, so it loads with torch.load(weights_only=True))
        config.json         model config and the run's full resolved config
        tokenizer/          a copy of the tokenizer, so the directory stands on its own
    checkpoints/last -> step_0000200   (symlink, replaced atomically)

A crash at any moment leaves either the previous `last` or the new one, never a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from zer02llm.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d+)$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(checkpoint_root: Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
                    config: dict[str, Any], tokenizer_dir: Path, keep: int,
                    weights: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Write checkpoint_root/step_N atomically, point `last` at it, keep only the newest `keep`.

    `weights`: a full state dict gathered from a sharded model, written instead of `model`'s own.
    """
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_root / f"step_{step:07d}"
    tmp = checkpoint_root / f".step_{step:07d}.tmp"
    _write_model_dir(tmp, model, {"step": step, **config}, tokenizer_dir, weights)
    torch.save(trainer_state, tmp / "trainer.pt")
    _fsync_tree(tmp)
    if final.exists():  # saving the same step again (a resumed run): the new copy wins
        shutil.rmtree(final)
    os.replace(tmp, final)
    link_tmp = checkpoint_root / ".last.tmp"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, checkpoint_root / "last")
    for old in list_checkpoints(checkpoint_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_model_dir(directory: Path, model: torch.nn.Module, config: dict[str, Any], tokenizer_dir: Path,
                     weights: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Weights, config.json and the tokenizer: what inference needs, in a fresh directory."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    if weights is None:
        save_model(model, str(directory / "model.safetensors"))
    else:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (directory / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy2(tokenizer_dir / name, directory / "tokenizer" / name)


def export_model(directory: Path, model: torch.nn.Module, config: dict[str, Any], tokenizer_dir: Path) -> Path:
    """A stand-alone model directory (no trainer state) that generate and eval load; atomic."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} exists: choose a new directory for the export")
    tmp = directory.with_name(f".{directory.name}.tmp")
    _write_model_dir(tmp, model, config, tokenizer_dir)
    _fsync_tree(tmp)
    os.replace(tmp, directory)
    return directory


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (temporary ones are not complete)."""
    if not checkpoint_root.is_dir():
        return []
    found = [p for p in checkpoint_root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)
             and (p / "trainer.pt").exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(checkpoint_root: Path) -> Optional[Path]:
    found = list_checkpoints(checkpoint_root)
    return found[-1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint directory, a `checkpoints/` directory or a run directory."""
    path = Path(path)
    for candidate in (path, path / "last", path / "checkpoints" / "last"):
        if (candidate / "model.safetensors").is_file() and (candidate / "config.json").is_file():
            return candidate.resolve()
    for root in (path, path / "checkpoints"):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"no checkpoint at {path}: expected a directory with model.safetensors and "
                            f"config.json (e.g. outputs/<date>/<time>/checkpoints/last) or a run directory")


def read_checkpoint_config(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "config.json").read_text())


def check_model_config(saved: dict[str, Any], current: ModelConfig, checkpoint: Path) -> None:
    """Refuse a checkpoint whose model config differs from this run's, naming each differing key."""
    mine = dataclasses.asdict(current)
    differing = [f"model.{k}: checkpoint {saved.get(k)!r}, this run {mine.get(k)!r}"
                 for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]
    if differing:
        raise ConfigError(f"checkpoint {checkpoint} was trained with another model config:\n  - "
                          + "\n  - ".join(differing))


def load_model_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Weights of `checkpoint` into `model` (a Transformer), refusing another model config."""
    check_model_config(read_checkpoint_config(checkpoint)["model"], model.cfg, checkpoint)
    load_weights(model, checkpoint)


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name (tied weights appear once)."""
    return load_file(str(checkpoint / "model.safetensors"))


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    missing, unexpected = load_model(model, str(checkpoint / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ConfigError(f"{checkpoint}/model.safetensors does not fit the model: missing {missing}, "
                          f"unexpected {unexpected}")


def load_trainer_state(checkpoint: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(checkpoint / "trainer.pt", map_location=map_location, weights_only=True)
