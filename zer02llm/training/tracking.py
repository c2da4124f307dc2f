"""What a run reports: a metrics file (JSONL, one row per logged step), wandb, and the loss plot."""

from __future__ import annotations

import json
import logging
import netrc
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

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
    ax.set_ylabel("loss (DPO: the preference loss)" if any("reward_margin" in r for r in rows) else "cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class StepLogger:
    """What the loop reports per step: tokens/s over each logging window, the ETA, the progress bar
    (in a terminal; log files get the per-step lines instead), metrics rows and wandb.

    With `compiled`, the first step of an invocation compiles the model: it is logged as warm-up and
    left out of tokens/s and the ETA. Evaluation time is left out of tokens/s too.
    """

    def __init__(self, total_steps: int, start_step: int, log_interval: int, metrics: Optional[MetricsFile],
                 tracker: Optional[WandbLogger], compiled: bool, show_bar: bool, shown: Sequence[str] = ()):
        from tqdm import tqdm

        self.total_steps, self.start_step, self.log_interval = total_steps, start_step, log_interval
        self.metrics, self.tracker, self.compiled = metrics, tracker, compiled
        self.shown = tuple(shown)  # the objective's own figures (DPO's rewards), on the line and the bar
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not show_bar)
        self.window_start = self.eta_start = time.perf_counter()
        self.window_tokens, self.eta_step = 0, start_step
        self.last: dict[str, Any] = {}

    def step_done(self, step: int, tokens: int) -> None:
        """After each optimizer step: `tokens` target tokens trained."""
        self.bar.update(1)
        self.window_tokens += tokens
        if self.compiled and step == self.start_step + 1 and step % self.log_interval:
            log.info("compile warm-up (first step): %.1f s", time.perf_counter() - self.window_start)
            self.window_start = self.eta_start = time.perf_counter()
            self.window_tokens, self.eta_step = 0, step

    def is_log_step(self, step: int) -> bool:
        return step % self.log_interval == 0 or step == self.total_steps

    def train_row(self, step: int, loss: float, lr: float, grad_norm: float, tokens_seen: int,
                  extra: dict[str, Any]) -> dict[str, Any]:
        """The metrics row of a logging step, logged as a line (and on the bar); restarts the window."""
        now = time.perf_counter()
        row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "tokens_per_s": self.window_tokens / max(now - self.window_start, 1e-9), "tokens": tokens_seen,
               **extra}
        shown = {**{name: f"{row[name]:.4f}" for name in self.shown if name in row},
              **moe_summary(row)}
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", **shown)
        eta = (now - self.eta_start) / max(1, step - self.eta_step) * (self.total_steps - step)
        log.info("step %d/%d: loss %.4f, lr %.2e, grad norm %.3f, %.0f tokens/s%s, ETA %s", step, self.total_steps,
                 loss, lr, grad_norm, row["tokens_per_s"], "".join(f", {k} {v}" for k, v in shown.items()),
                 format_seconds(eta))
        self.window_start, self.window_tokens = time.perf_counter(), 0
        return row

    def eval_done(self, step: int, values: dict[str, float]) -> None:
        """Log each validation set's figures: `val_*` keys, and `<source>/val_*` for named sets."""
        names = {"val_loss": "val loss", "val_ppl": "perplexity", "val_bpb": "bits per byte"}
        groups: dict[str, list[str]] = {}
        for key, value in values.items():
            source, _, name = key.rpartition("/")
            groups.setdefault(source, []).append(f"{names.get(name, name)} {value:.4f}")
        for source, parts in groups.items():
            log.info("step %d%s: %s", step, f" ({source})" if source else "", ", ".join(parts))
        self.window_start = time.perf_counter()  # evaluation time is not training time

    def write(self, row: dict[str, Any]) -> None:
        """Record a row (rank 0 only: the others have no metrics file)."""
        if self.metrics is None:
            return
        self.metrics.write(row)
        if self.tracker:
            self.tracker.log(row, step=row["step"])
        self.last.update(row)

    def close(self) -> None:
        self.bar.close()
        if self.tracker:
            self.tracker.finish()


def moe_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """Per-step MoE figures for the metrics row: balance loss, expert shares, router entropy."""
    if "aux_loss" not in stats:
        return {}
    load = stats["expert_load"]  # (moe layers, experts), each row sums to 1
    return {"aux_loss": stats["aux_loss"].item(), "expert_load_min": load.min().item(),
            "expert_load_max": load.max().item(), "expert_load": [[round(v, 4) for v in row] for row in load.tolist()],
            "router_entropy": stats["router_entropy"].mean().item(), "dropped_tokens": int(stats["dropped_tokens"])}


def moe_summary(row: dict[str, Any]) -> dict[str, str]:
    if "aux_loss" not in row:
        return {}
    return {"aux": f"{row['aux_loss']:.4f}", "load": f"{row['expert_load_min']:.2f}-{row['expert_load_max']:.2f}"}


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def write_summary(path: Path, rows: list[dict[str, Any]], figures: dict[str, Any], seconds: float,
                  seconds_before: float) -> None:
    """summary.json: the figures a sweep table needs, for the run as a whole (`seconds`: all invocations,
    `seconds_before`: those before this one)."""
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    rates = [r["tokens_per_s"] for r in train_rows]
    summary = {
        **figures,
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "final_val_loss": val_rows[-1]["val_loss"] if val_rows else None,
        "final_val_bpb": val_rows[-1].get("val_bpb") if val_rows else None,
        "tokens_per_s": sum(rates) / len(rates) if rates else None,
        "wall_seconds": round(seconds, 2), "wall_seconds_this_session": round(seconds - seconds_before, 2),
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")
