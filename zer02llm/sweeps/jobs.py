"""The jobs of a Hydra multirun sweep, read from their directories (zer02llm/sweep.py summarizes them).

A job directory is a numbered subdirectory (Hydra's `hydra.sweep.subdir`, `${hydra.job.num}`; an
Optuna search numbers them by trial), or any other one holding `.hydra/`, `summary.json` or
`metrics.jsonl`. Its status:

    ok          summary.json is there (the trainer writes it when the run ends normally)
    failed      the callback recorded an exception (job_status.json), or the log has an ERROR line
                (e.g. a config error) or a traceback
    incomplete  anything else: still running, killed (SIGKILL, out of memory, a time limit),
                interrupted, or stopped by a signal to be requeued. Its figures are the last logged
                ones, as far as they go; parameters and wall time are empty

No Hydra here: only the files Hydra and the trainer leave behind.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from zer02llm.config import metric_direction

JOB_STATUS = "job_status.json"  # written by SweepSummaryCallback.on_job_end, where the job runs
OK, FAILED, INCOMPLETE = "ok", "failed", "incomplete"
_LOG_ERROR = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(?:ERROR|CRITICAL)\] - (.*)$")
_LOG_RECORD = re.compile(r"^\[[^\]]*\]\[[^\]]*\](?:\[[A-Z]+\])? ")


DEFAULT_METRIC = "final_val_loss"  # a job that does not say (one written before train.sweep_metric existed)


class NotASweepError(ValueError):
    """The directory is missing or holds no job directory."""


@dataclass
class JobResult:
    """What one job directory says about its run; None where it does not say."""

    name: str
    path: Path
    overrides: list[str] = field(default_factory=list)
    status: str = INCOMPLETE
    error: Optional[str] = None
    params: Optional[int] = None
    active_params: Optional[int] = None
    non_embedding_params: Optional[int] = None  # N of the scaling laws: no token embedding
    steps: Optional[int] = None
    tokens: Optional[int] = None  # tokens trained on
    flops_per_token: Optional[int] = None  # Transformer.flops_per_token(seq_len)
    flops: Optional[float] = None  # training FLOPs: flops_per_token * tokens
    final_loss: Optional[float] = None
    final_val_loss: Optional[float] = None
    final_val_bpb: Optional[float] = None  # bits per byte: comparable across tokenizers
    tokens_per_s: Optional[float] = None
    wall_seconds: Optional[float] = None
    task_core: Optional[float] = None  # CORE of train.eval_tasks at the last evaluation (zer02llm/evals)
    # train.sweep_metric: the figure the sweep ranks this job by (and fits, and an Optuna search optimises)
    sweep_metric: str = DEFAULT_METRIC
    sweep_direction: str = "minimize"
    sweep_value: Optional[float] = None
    figures: dict[str, float] = field(default_factory=dict)  # summary.json's numeric figures, by name
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)


# --- reading ------------------------------------------------------------------------------------

def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The JSON object in path, or None when it is missing, half-written or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; a line being written (or otherwise unreadable) is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def _read_overrides(job_dir: Path) -> list[str]:
    """The job's task overrides as given on the command line (Hydra's .hydra/overrides.yaml)."""
    import yaml  # PyYAML, a dependency of OmegaConf

    try:
        data = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    # hydra.* overrides are Hydra's bookkeeping, not the job's settings (hpsearch numbers each trial's
    # directory with hydra.sweep.subdir=<trial>)
    return [str(item) for item in data if not str(item).startswith("hydra.")] if isinstance(data, list) else []


def _job_config(job_dir: Path) -> Optional[dict[str, Any]]:
    """The job's composed config: Hydra's .hydra/config.yaml, else the trainer's config.yaml."""
    import yaml

    for path in (job_dir / ".hydra" / "config.yaml", job_dir / "config.yaml"):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            return data
    return None


def _train_config(job_dir: Path) -> dict[str, Any]:
    """The job's train.* settings as its config records them ({} when it has none)."""
    train = (_job_config(job_dir) or {}).get("train")
    return train if isinstance(train, dict) else {}


def model_size(config: dict[str, Any]) -> tuple[int, int]:
    """(non-embedding parameters, training FLOPs per token) of a job's model, from its config: the
    Transformer built on the meta device (no memory, no init), counted as the trainer counts it."""
    import torch

    from zer02llm.config import model_config_from_dict
    from zer02llm.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(model_config_from_dict(dict(config["model"])))
    return model.num_params(exclude_embeddings=True), model.flops_per_token(int(config["data"]["seq_len"]))


def _fill_model_size(job: JobResult, rows: list[dict[str, Any]]) -> None:
    """Runs from before summary.json held them: N and FLOPs per token from the job's config, tokens
    from the last metrics row when it is the run's last step."""
    if job.tokens is None and rows and job.steps is not None and rows[-1]["step"] == job.steps:
        job.tokens = integer(rows[-1].get("tokens"))
    if job.non_embedding_params is None or job.flops_per_token is None:
        config = _job_config(job.path)
        try:
            non_embedding, per_token = model_size(config) if config else (None, None)
        except Exception:  # noqa: BLE001 - an old or foreign config: the figures stay unknown
            non_embedding, per_token = None, None
        job.non_embedding_params = job.non_embedding_params if job.non_embedding_params is not None else non_embedding
        job.flops_per_token = job.flops_per_token if job.flops_per_token is not None else per_token
    if job.flops is None and job.flops_per_token is not None and job.tokens is not None:
        job.flops = float(job.flops_per_token * job.tokens)


def _logged_error(job_dir: Path) -> Optional[str]:
    """The first ERROR line of the job's log (Hydra names it <job name>.log), or a traceback's last line."""
    for log_file in sorted(job_dir.glob("*.log")):
        try:
            lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            match = _LOG_ERROR.match(line)
            if match:  # the message, with its continuation lines (those before the next record)
                parts = [match.group(1).strip()]
                for more in lines[i + 1:]:
                    if _LOG_RECORD.match(more) or more.startswith("Traceback"):
                        break
                    parts.append(more.strip())
                return " ".join(p for p in parts if p)[:500] or "error in " + log_file.name
        if any(line.startswith("Traceback (most recent call last)") for line in lines):
            tail = [line for line in lines if line.strip()]
            return tail[-1].strip() if tail else "traceback in " + log_file.name
    return None


def number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def integer(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_job(job_dir: Path) -> JobResult:
    """One job directory: summary.json where the run finished, metrics.jsonl as far as it goes."""
    job = JobResult(name=job_dir.name, path=job_dir, overrides=_read_overrides(job_dir))
    rows = _read_metrics(job_dir / "metrics.jsonl")
    job.train_curve = [(int(r["step"]), float(r["loss"])) for r in rows if number(r.get("loss")) is not None]
    job.val_curve = [(int(r["step"]), float(r["val_loss"])) for r in rows if number(r.get("val_loss")) is not None]
    summary = read_json(job_dir / "summary.json")
    status_file = read_json(job_dir / JOB_STATUS) or {}

    if summary is not None:
        job.params = integer(summary.get("params"))
        job.active_params = integer(summary.get("active_params"))
        job.non_embedding_params = integer(summary.get("non_embedding_params"))
        job.steps = integer(summary.get("steps"))
        job.tokens = integer(summary.get("tokens"))
        job.flops_per_token = integer(summary.get("flops_per_token"))
        job.flops = number(summary.get("flops"))
        job.final_loss = number(summary.get("final_loss"))
        job.final_val_loss = number(summary.get("final_val_loss"))
        job.final_val_bpb = number(summary.get("final_val_bpb"))
        job.tokens_per_s = number(summary.get("tokens_per_s"))
        job.wall_seconds = number(summary.get("wall_seconds"))
        job.task_core = number(summary.get("task/core"))
        job.figures = {k: float(v) for k, v in summary.items() if number(v) is not None}
    else:  # no summary (yet): the last logged figures; parameters and wall time stay unknown
        steps = [int(r["step"]) for r in rows]
        job.steps = max(steps) if steps else None
        job.final_loss = job.train_curve[-1][1] if job.train_curve else None
        job.final_val_loss = job.val_curve[-1][1] if job.val_curve else None
        bpbs = [float(r["val_bpb"]) for r in rows if number(r.get("val_bpb")) is not None]
        job.final_val_bpb = bpbs[-1] if bpbs else None
        rates = [float(r["tokens_per_s"]) for r in rows if number(r.get("tokens_per_s")) is not None]
        job.tokens_per_s = sum(rates) / len(rates) if rates else None
        cores = [float(r["task/core"]) for r in rows if number(r.get("task/core")) is not None]
        job.task_core = cores[-1] if cores else None
        last = {k: float(v) for r in rows for k, v in r.items() if k.startswith("task/") and number(v) is not None}
        job.figures = {**last, **{k: v for k, v in (("final_loss", job.final_loss), ("final_val_loss",
                                                    job.final_val_loss), ("final_val_bpb", job.final_val_bpb))
                                  if v is not None}}
    config = (summary or {}) if (summary or {}).get("sweep_metric") else _train_config(job_dir)
    job.sweep_metric = str(config.get("sweep_metric") or DEFAULT_METRIC)
    job.sweep_direction = metric_direction(job.sweep_metric, config.get("sweep_direction"))
    job.sweep_value = job.figures.get(job.sweep_metric)

    if status_file.get("status") == "FAILED":  # written at the job's end, so newer than any summary
        job.status, job.error = FAILED, str(status_file.get("error") or "the job raised an exception")
    elif summary is not None:
        job.status = OK
        _fill_model_size(job, rows)
    else:
        error = _logged_error(job_dir)
        job.status, job.error = (FAILED, error) if error else (INCOMPLETE, None)
    return job


def _job_sort_key(path: Path) -> tuple[int, int, str]:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep, numbered ones in numerical order, then the others by name."""
    found = []
    for child in sweep_dir.iterdir():
        if not child.is_dir() or child.name.startswith("."):  # .submitit/ and the like
            continue
        if child.name.isdigit() or any((child / name).exists() for name in (".hydra", "summary.json", "metrics.jsonl")):
            found.append(child)
    return sorted(found, key=_job_sort_key)


def collect(sweep_dir: str | Path) -> list[JobResult]:
    """Every job of the sweep in sweep_dir; NotASweepError when it is not a directory or holds no job."""
    path = Path(sweep_dir)
    if not path.is_dir():
        raise NotASweepError(f"{path} is not a directory")
    dirs = job_dirs(path)
    if not dirs:
        hint = (" (it looks like a single run: see its summary.json)" if (path / "summary.json").exists()
                or (path / ".hydra").is_dir() else "")
        raise NotASweepError(f"{path} is not a sweep directory: no job directories in it (numbered "
                             f"subdirectories, or ones holding .hydra/, summary.json or metrics.jsonl){hint}")
    return [read_job(d) for d in dirs]


# --- overrides ------------------------------------------------------------------------------------

def override_key(override: str) -> str:
    """`model.dim` of `model.dim=32`, `+x.y=1` and `~x.y`."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def swept_keys(jobs: Sequence[JobResult]) -> list[str]:
    """The override keys whose value differs between jobs (or that some jobs lack), in first-seen order."""
    jobs = [job for job in jobs if job.overrides]  # a job that died before Hydra wrote them says nothing
    keys: list[str] = []
    for job in jobs:
        for override in job.overrides:
            if override_key(override) not in keys:
                keys.append(override_key(override))
    if len(jobs) < 2:
        return []
    swept = []
    for key in keys:
        values = {next((o for o in job.overrides if override_key(o) == key), None) for job in jobs}
        if len(values) > 1:
            swept.append(key)
    return swept


def job_label(job: JobResult, swept: Sequence[str]) -> str:
    """The job's overrides of the swept keys, or all of them when nothing varies."""
    shown = [o for o in job.overrides if override_key(o) in swept] if swept else job.overrides
    return " ".join(shown)


def common_overrides(jobs: Sequence[JobResult], swept: Sequence[str]) -> list[str]:
    with_overrides = [job for job in jobs if job.overrides]
    if not swept or not with_overrides:
        return []
    first = with_overrides[0].overrides
    return [o for o in first if override_key(o) not in swept]


