"""Checkpoints: one directory per save, written under a temporary name and renamed into place.

    checkpoints/step_0000200/
        model.safetensors   weights (tied embeddings stored once)
        trainer.pt          optimizer, scaler, data position, RNG states, step (tensors and plain
                            containers only, so it loads with torch.load(weights_only=True))
        config.json         model config and the run's full resolved config
        tokenizer/          a copy of the tokenizer, so the directory stands on its own
    checkpoints/last -> step_0000200   (symlink, replaced atomically)

A crash at any moment leaves either the previous `last` or the new one, never a half-written file;
old checkpoints are renamed out of sight (`.deleting.step_N`) before they are deleted, so none is ever
seen half deleted. A file damaged anyway (a copy cut short, a full disk) is refused naming the file;
train.resume=auto then takes the newest intact checkpoint instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from zer02llm.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d+)$")
# what killed saves and deletes leave behind; pruning removes these (and step dirs missing a file)
LEFTOVER = re.compile(r"^(\.step_\d+\.tmp|\.deleting\.step_\d+)$")
CHECKPOINT_FILES = ("model.safetensors", "config.json", "trainer.pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "vocab.json", "merges.txt")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the one-line message names the file, the fault and the way out."""


class DamagedCheckpoint(CheckpointError):
    """A truncated or corrupt file: train.resume=auto skips the checkpoint for an older one."""


class UnsafeCheckpoint(CheckpointError):
    """trainer.pt holds pickled objects beyond tensors and plain containers: refused, nothing of it ran."""


def _damaged(file: Path, why: str) -> DamagedCheckpoint:
    return DamagedCheckpoint(f"{file} is damaged ({why}): use an earlier checkpoint (another step_* directory "
                             f"beside it; train.resume=auto skips damaged ones)")


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(checkpoint_root: Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
                    config: dict[str, Any], tokenizer_dir: Path, keep: int,
                    weights: Optional[dict[str, torch.Tensor]] = None,
                    write_extra: Optional[Callable[[Path], object]] = None) -> Path:
    """Write checkpoint_root/step_N atomically, point `last` at it, keep only the newest `keep`.

    `weights`: a full state dict gathered from a sharded model, written instead of `model`'s own.
    `write_extra(directory)`: more files (LoRA adapters), written before the directory is renamed into place.
    """
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_root / f"step_{step:07d}"
    tmp = checkpoint_root / f".step_{step:07d}.tmp"
    _write_model_dir(tmp, model, {"step": step, **config}, tokenizer_dir, weights)
    torch.save(trainer_state, tmp / "trainer.pt")
    if write_extra is not None:
        write_extra(tmp)
    _fsync_tree(tmp)
    if final.exists():  # saving the same step again (a resumed run): the new copy wins
        _move_aside(final)
    os.replace(tmp, final)
    link_tmp = checkpoint_root / ".last.tmp"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, checkpoint_root / "last")
    _fsync_dir(checkpoint_root)  # the new step on disk before any older one goes
    prune(checkpoint_root, keep)
    return final


def prune(checkpoint_root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; delete the rest and whatever killed saves and deletes left."""
    for old in list_checkpoints(checkpoint_root)[:-keep]:
        _move_aside(old)
    for path in checkpoint_root.iterdir():
        if path.is_symlink() or not path.is_dir():
            continue
        # a step dir missing a file can only be the rest of an interrupted delete: saves appear whole
        if LEFTOVER.match(path.name) or (STEP_DIR.match(path.name) and not _is_complete(path)):
            shutil.rmtree(path, ignore_errors=True)


def _move_aside(checkpoint: Path) -> None:
    """Rename out of the checkpoint namespace first: a delete cut short never leaves a half step_N."""
    aside = checkpoint.with_name(f".deleting.{checkpoint.name}")
    if aside.exists():  # the leftover of an earlier, interrupted delete of the same step
        shutil.rmtree(aside)
    os.replace(checkpoint, aside)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CHECKPOINT_FILES)


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (temporary ones are not complete)."""
    if not checkpoint_root.is_dir():
        return []
    found = [p for p in checkpoint_root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and _is_complete(p)]
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
    file = checkpoint / "config.json"
    try:
        saved = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(file, f"not valid JSON: {e}") from None
    if not isinstance(saved, dict):
        raise _damaged(file, "not a JSON object")
    return saved


def check_batch_layout(saved: Optional[dict[str, int]], now: dict[str, int]) -> None:
    """Refuse to resume with another number of sequences per optimizer step (batch_size x world_size x
    grad_accum); any split of the same number is fine. `saved` None: a checkpoint from before the
    layout was stored, left to the sampler's own check."""
    if saved is None:
        return
    per_step = saved["batch_size"] * saved["world_size"] * saved["grad_accum"]
    now_per_step = now["batch_size"] * now["world_size"] * now["grad_accum"]

    def layout(b: dict[str, int]) -> str:
        return f"train.batch_size={b['batch_size']} x {b['world_size']} rank(s) x train.grad_accum={b['grad_accum']}"

    if per_step == now_per_step:
        if saved != now:  # same samples per step; only the float summation order differs
            log.info("resuming with %s instead of %s: the same %d sequences per optimizer step",
                     layout(now), layout(saved), per_step)
        return
    ranks = now["world_size"]
    fixes = []
    if per_step % (ranks * now["grad_accum"]) == 0:
        fixes.append(f"train.batch_size={per_step // (ranks * now['grad_accum'])}")
    if per_step % (ranks * now["batch_size"]) == 0:
        fixes.append(f"train.grad_accum={per_step // (ranks * now['batch_size'])}")
    own = f"train.batch_size={saved['batch_size']} train.grad_accum={saved['grad_accum']}"
    if saved["world_size"] != ranks:
        own += f" on {saved['world_size']} rank(s)"
    if own not in fixes:
        fixes.append(own)
    raise ConfigError(
        f"the checkpoint was trained with {per_step} sequences per optimizer step ({layout(saved)}), this "
        f"run would take {now_per_step} ({layout(now)}): a resumed run keeps batch_size x ranks x grad_accum, "
        f"or its steps, data position and learning-rate schedule stop meaning what they did. Resume with "
        f"{' or '.join(fixes)}; to go on with another batch, start a new run from the weights with "
        f"mode.init_from=<the checkpoint> instead of train.resume")


def check_model_config(saved: dict[str, Any], current: ModelConfig, checkpoint: Path) -> None:
    """Refuse a checkpoint whose model config differs from this run's, naming each differing key."""
    mine = dataclasses.asdict(current)
    saved_moe, mine_moe = "num_experts" in saved, "num_experts" in mine
    if saved_moe != mine_moe:  # the MoE keys of one side are not missing values: the preset is
        preset = "moe" if saved_moe else "dense"
        differing = [f"model.{k}: checkpoint {saved[k]!r}, this run {mine[k]!r}"
                     for k in sorted(set(saved) & set(mine) - {"name"}) if saved[k] != mine[k]]
        raise ConfigError(f"checkpoint {checkpoint} is {'MoE' if saved_moe else 'dense'} and this run's model is "
                          f"{'MoE' if mine_moe else 'dense'}: add model={preset}" +
                          (" and match its other model keys:\n  - " + "\n  - ".join(differing) if differing else ""))
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
    file = checkpoint / "model.safetensors"
    try:
        return load_file(str(file))
    except SafetensorError as e:  # a truncated file: "incomplete metadata, file not fully covered"
        raise _damaged(file, f"safetensors: {e}") from None


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    file = checkpoint / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except SafetensorError as e:
        raise _damaged(file, f"safetensors: {e}") from None
    check_fit(file, missing, unexpected)


def check_fit(file: Path, missing: list[str], unexpected: list[str]) -> None:
    """Refuse weights that leave parameters unset or bring tensors the model does not have."""
    if missing or unexpected:
        raise ConfigError(f"{file} does not fit the model: missing {missing}, unexpected {unexpected}")


def load_trainer_state(checkpoint: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """trainer.pt through torch.load(weights_only=True): tensors and plain containers only, so loading
    runs no code from the file; anything else is refused as unsafe, a cut-short file as damaged."""
    file = checkpoint / "trainer.pt"
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {checkpoint} holds no training state (an export?); resume "
                              f"from a training checkpoint, or take its weights alone with mode.init_from")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler met a global it will not rebuild
        found = re.search(r"WeightsUnpickler error: (.+?)(?: was not an allowed global|\. |$)", str(e), re.M)
        why = found.group(1) if found else str(e).splitlines()[0]
        raise UnsafeCheckpoint(f"{file} was refused as unsafe: it holds more than tensors and plain containers "
                               f"({why}), and rebuilding that could run code from the file; resume only from "
                               f"checkpoints that zer02llm wrote") from None
    except EOFError:
        raise _damaged(file, "empty") from None
    except RuntimeError as e:  # torch's zip reader: "failed finding central directory" for a cut-short file
        if "PytorchStreamReader" not in str(e):
            raise
        raise _damaged(file, str(e).split(". ")[0]) from None


@dataclasses.dataclass
class Resumable:
    """All a resume takes from a checkpoint, read and checked before anything of the run changes."""

    path: Path
    weights: dict[str, torch.Tensor]  # by name, tied weights once (as stored)
    trainer_state: dict[str, Any]


def read_for_resume(checkpoint: Path, model_cfg: ModelConfig,
                    map_location: str | torch.device = "cpu") -> Resumable:
    """The checkpoint's weights and training state, refusing another model config or a damaged/unsafe file."""
    saved = read_checkpoint_config(checkpoint).get("model")
    if not isinstance(saved, dict):
        raise _damaged(checkpoint / "config.json", "no model config in it")
    check_model_config(saved, model_cfg, checkpoint)  # before reading the large files
    return Resumable(checkpoint, read_weights(checkpoint), load_trainer_state(checkpoint, map_location))


def latest_resumable(checkpoint_root: Path, model_cfg: ModelConfig,
                     map_location: str | torch.device = "cpu") -> Optional[Resumable]:
    """train.resume=auto: the newest intact checkpoint, None if there is none yet. A damaged one is
    skipped with a warning (only its steps are lost); another model config or an unsafe file is refused."""
    found = list_checkpoints(checkpoint_root)
    for checkpoint in reversed(found):
        try:
            return read_for_resume(checkpoint, model_cfg, map_location)
        except DamagedCheckpoint as e:
            log.warning("train.resume=auto: skipping a checkpoint: %s", e)
    if found:  # starting afresh would quietly throw the run away
        raise CheckpointError(f"no intact checkpoint in {checkpoint_root}: all {len(found)} are damaged (see the "
                              f"warnings above); move them elsewhere to start the run afresh")
    return None


class Cadence:
    """When the loop checkpoints: every `interval` steps, at the run's last step, and on a stop.
    It remembers the step saved last, so a stop saves only new work and an interrupted run says
    what it lost."""

    def __init__(self, save: Callable[[], Any], interval: int, total_steps: int, step: int):
        self.save, self.interval, self.total_steps = save, interval, total_steps
        self.saved_step = step

    def after_step(self, step: int) -> None:
        if step % self.interval == 0 or step == self.total_steps:
            self.save_new(step)

    def save_new(self, step: int) -> None:
        """Save unless `step` is saved already (every rank calls it: a sharded model gathers in all)."""
        if step != self.saved_step:
            self.save()
            self.saved_step = step

    def warn_unsaved(self, step: int) -> None:
        if step != self.saved_step and step > 0:
            log.warning("stopped at step %d; the last checkpoint is step %d", step, self.saved_step)
