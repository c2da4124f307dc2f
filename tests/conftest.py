"""Shared test helpers: composing real configs, running the real commands, small corpora.

Tests never write into the user's home (token caches in ~/.cache/zer02llm, wandb or matplotlib
settings, Hugging Face caches): when this file is imported, before any test module or fixture of
any scope runs, HOME and the caches that follow it point into one temporary directory, and every
subprocess inherits that. HOME itself is an empty sentinel; the session fails if anything appears
in it (a cache that follows HOME and was not redirected here).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import pytest
import torch
import torch.nn as nn

from zer02llm.model.transformer import RMSNorm

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# tests/ mirrors the package in folders without __init__ (test modules' names are unique); a test module may
# reuse another's helpers (`from test_document_mask import build`), also when only its own folder is collected
for folder in sorted(p for p in Path(__file__).resolve().parent.iterdir() if p.is_dir() and p.name != "__pycache__"):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

# A model small enough for subprocess runs of a few seconds on 2 cores, trained with AdamW at train.lr: what
# the tests built on it were written for (pretraining's default is Muon with per-group lrs, whose own tests add
# optim=muon, the later override winning, or compose without TINY).
TINY = ["optim=adamw", "model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "data.seq_len=32",
        "train.batch_size=4", "train.log_interval=5", "train.eval_interval=10", "train.eval_batches=2",
        "train.warmup_steps=5"]


# what each variable redirects, relative to the session's temporary directory
ISOLATED_ENV = {
    "XDG_CACHE_HOME": "xdg-cache",  # zer02llm's token caches, torch hub, matplotlib's font cache
    "XDG_CONFIG_HOME": "xdg-config",
    "XDG_DATA_HOME": "xdg-data",
    "XDG_STATE_HOME": "xdg-state",
    "MPLCONFIGDIR": "matplotlib",
    "WANDB_CACHE_DIR": "wandb/cache",  # runs themselves go to their run directory (tracking.py)
    "WANDB_CONFIG_DIR": "wandb/config",
    "WANDB_DATA_DIR": "wandb/data",
    "HF_HOME": "huggingface",
    "TORCH_HOME": "torch",
    "TRITON_CACHE_DIR": "triton",  # torch.compile on a GPU
    "CUDA_CACHE_PATH": "cuda",
}


# tools installed under HOME that subprocesses may run (pip's build probes rustc through rustup's
# shim; pyenv's shims): they keep finding their installation, which is not a cache of ours
TOOL_HOMES = {"RUSTUP_HOME": ".rustup", "CARGO_HOME": ".cargo", "PYENV_ROOT": ".pyenv"}


def isolate_home() -> Path:
    """Point HOME and the caches under it into a fresh temporary directory (inherited by subprocesses)."""
    real_home = Path.home()
    for name, sub in TOOL_HOMES.items():
        if name not in os.environ and (real_home / sub).is_dir():
            os.environ[name] = str(real_home / sub)
    root = Path(tempfile.mkdtemp(prefix="zer02llm-tests-"))
    for name, sub in ISOLATED_ENV.items():
        os.environ[name] = str(root / sub)
    (root / "home").mkdir()
    os.environ["HOME"] = str(root / "home")  # also: no ~/.netrc, so wandb never goes online from a test
    os.environ.pop("WANDB_API_KEY", None)
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def written_to_home(home: Path) -> list[Path]:
    """Files (and empty directories) under the sentinel home: each is a write that escaped isolation."""
    return sorted(p for p in home.rglob("*") if not p.is_dir() or not any(p.iterdir()))


# at import, i.e. before module- and session-scoped fixtures (which train through subprocesses) run
TEST_ROOT = isolate_home()
TEST_HOME = TEST_ROOT / "home"


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_to_home():
    """Fails the session (an error at teardown of its last test) if anything was written to HOME."""
    yield
    leaked = written_to_home(TEST_HOME)
    if leaked:
        shown = ", ".join(str(p.relative_to(TEST_HOME)) for p in leaked[:10])
        pytest.fail(f"tests wrote into HOME ({TEST_HOME} stands in for ~): {shown}"
                    f"{f' and {len(leaked) - 10} more' if len(leaked) > 10 else ''}; redirect that cache in "
                    f"tests/conftest.py ISOLATED_ENV or write under tmp_path", pytrace=False)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under `-n 2`, each module's tests go to one process (xdist's loadscope), not test by test: a module-scoped
    run (a trained model, a GRPO run) is then made once, not once in each process handed one of its tests."""
    if config.getvalue("dist") == "load":  # -n alone; an explicit other --dist is left as asked
        from xdist.scheduler import LoadScopeScheduling

        return LoadScopeScheduling(config, log)
    return None


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


def load_script(name: str):
    """scripts/<name>.py as a module, loaded once and registered in sys.modules (a script's dataclasses look
    their module up while being made)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Decoding a tiny model is a chain of small Python-bound ops: one torch thread is fastest, and on a
    loaded machine by far (docs/benchmarks.md). Modules ask for it with pytest.mark.usefixtures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A short TINY run with checkpoints at steps 5 and 10 (one per test module: tests may add to it)."""
    work = tmp_path_factory.mktemp("finished")
    run_module("zer02llm.train", [*TINY, "train.max_steps=10", "train.save_interval=5", "hydra.run.dir=run"],
               cwd=work)
    return work / "run"
