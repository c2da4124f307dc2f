"""What a run reports: a metrics file (JSONL, one row per logged step), wandb, and the loss plot."""

from __future__ import annotations

import json
import logging
import netrc
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


class MetricsFile:
    """Append-only JSONL; every start first drops the rows logged after its step (all of them when fresh)."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip()
                and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def write_run_config(path: Path, config: dict[str, Any]) -> None:
    """The run's resolved config as YAML, replaced whole (a kill never leaves half of it)."""
    import yaml  # PyYAML, a dependency of OmegaConf

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, path)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """wandb, offline unless an API key is configured; WANDB_MODE, when set, decides instead."""

    def __init__(self, project: str, entity: Optional[str], name: Optional[str], tags: list[str],
                 config: dict[str, Any], run_dir: Path, resume_id: Optional[str] = None):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")
        if mode == "offline" and not os.environ.get("WANDB_MODE"):
            log.info("wandb: no API key found, logging offline (sync later with `wandb sync %s/wandb`)", run_dir)
        # the config holds no secrets; wandb reads the key from the environment or ~/.netrc itself
        self.run = wandb.init(project=project, entity=entity, name=name, tags=tags or None, config=config,
                              dir=str(run_dir), mode=mode, id=resume_id, resume="allow" if resume_id else None)

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(row, step=step)

    def finish(self) -> None:
        self.run.finish()


def plot_losses(rows: list[dict[str, Any]], path: Path) -> Optional[Path]:
    """PNG of train loss (and validation loss where evaluated) against optimizer step."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
