"""Shared test helpers: composing real configs, running the real commands, small corpora."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import pytest
import torch
import torch.nn as nn

from zer02llm.model.transformer import RMSNorm

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A model small enough for subprocess runs of a few seconds on 2 cores.
TINY = ["model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "data.seq_len=32",
        "train.batch_size=4", "train.log_interval=5", "train.eval_interval=10", "train.eval_batches=2",
        "train.warmup_steps=5"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches of tests go to a per-session temporary directory, never to ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def compose(overrides: Iterable[str] = (), config_name: str = "config"):
    """The composed DictConfig, as `python -m zer02llm.train <overrides>` would see it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from zer02llm.config import register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def write_jsonl(path: Path, records: Iterable[object]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + "\n")
    return path


def run_module(module: str, args: Iterable[str], cwd: Path, timeout: float = 300, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
                             f"\n--- stderr\n{proc.stderr}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Unit-scale weights (1/sqrt(fan_in)) and norm gains around 1, so every part of the model matters.

    At the 0.02 init attention is nearly uniform and logits nearly constant, so comparisons against a
    reference would pass for almost any implementation.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                w = torch.randn(module.weight.shape, generator=gen, dtype=torch.float64)
                module.weight.copy_(w / math.sqrt(module.weight.shape[1]))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen, dtype=torch.float64))
            elif isinstance(module, RMSNorm):
                module.weight.copy_(1.0 + 0.3 * torch.randn(module.weight.shape, generator=gen, dtype=torch.float64))
    return model
