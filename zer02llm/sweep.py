"""The summary of a Hydra multirun sweep: one row per job, as a Markdown table, a CSV and the loss curves.

    python -m zer02llm.sweep multirun/2026-11-28/01-35-38

writes into the sweep directory

    summary.md        the table (job, overrides, parameters, steps, final train/val loss, tokens/s,
                      wall time, status), the overrides common to all jobs, the best job, the errors
    summary.csv       the same figures unformatted, plus one column per swept key
    loss_curves.png   train loss against step of every job (validation loss dashed, same colour)

and prints the Markdown. `SweepSummaryCallback` does the same at the end of every `-m` sweep once it
is listed under `hydra.callbacks` (see conf/hydra/callbacks/sweep_summary.yaml).

A job directory is a numbered subdirectory (Hydra's `hydra.sweep.subdir`, `${hydra.job.num}`), or
any other one holding `.hydra/`, `summary.json` or `metrics.jsonl`. Its status:

    ok          summary.json is there (the trainer writes it when the run ends normally)
    failed      the callback recorded an exception (job_status.json), or the log has an ERROR line
                (e.g. a config error) or a traceback
    incomplete  anything else: still running, killed (SIGKILL, out of memory, a time limit),
                interrupted, or stopped by a signal to be requeued. Its figures are the last logged
                ones, as far as they go; parameters and wall time are empty
"""

from __future__ import annotations

import argparse
import atexit
import csv
import io
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

# The only Hydra import at module level: the callback class below must subclass it. Everything else
# of Hydra is imported inside the callback's methods.
from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

SUMMARY_MD, SUMMARY_CSV, CURVES_PNG = "summary.md", "summary.csv", "loss_curves.png"
JOB_STATUS = "job_status.json"  # written by SweepSummaryCallback.on_job_end, where the job runs
OK, FAILED, INCOMPLETE = "ok", "failed", "incomplete"
CSV_COLUMNS = ["job", "overrides", "params", "active_params", "steps", "final_train_loss", "final_val_loss",
               "final_val_bpb",
               "tokens_per_s", "wall_seconds", "status", "error"]
MD_HEADER = ["job", "overrides", "parameters", "steps", "final train loss", "final val loss", "val bits/byte",
             "tokens/s",
             "wall time", "status"]
MD_ALIGN = ["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"]
# the lines of Hydra's default job log format "[time][logger][LEVEL] - message" at ERROR or worse
_LOG_ERROR = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(?:ERROR|CRITICAL)\] - (.*)$")
_LOG_RECORD = re.compile(r"^\[[^\]]*\]\[[^\]]*\](?:\[[A-Z]+\])? ")


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
    steps: Optional[int] = None
    final_loss: Optional[float] = None
    final_val_loss: Optional[float] = None
    final_val_bpb: Optional[float] = None  # bits per byte: comparable across tokenizers
    tokens_per_s: Optional[float] = None
    wall_seconds: Optional[float] = None
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)


# --- reading ------------------------------------------------------------------------------------

def _read_json(path: Path) -> Optional[dict[str, Any]]:
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
    return [str(item) for item in data] if isinstance(data, list) else []


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


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_job(job_dir: Path) -> JobResult:
    """One job directory: summary.json where the run finished, metrics.jsonl as far as it goes."""
    job = JobResult(name=job_dir.name, path=job_dir, overrides=_read_overrides(job_dir))
    rows = _read_metrics(job_dir / "metrics.jsonl")
    job.train_curve = [(int(r["step"]), float(r["loss"])) for r in rows if _number(r.get("loss")) is not None]
    job.val_curve = [(int(r["step"]), float(r["val_loss"])) for r in rows if _number(r.get("val_loss")) is not None]
    summary = _read_json(job_dir / "summary.json")
    status_file = _read_json(job_dir / JOB_STATUS) or {}

    if summary is not None:
        job.params = _integer(summary.get("params"))
        job.active_params = _integer(summary.get("active_params"))
        job.steps = _integer(summary.get("steps"))
        job.final_loss = _number(summary.get("final_loss"))
        job.final_val_loss = _number(summary.get("final_val_loss"))
        job.final_val_bpb = _number(summary.get("final_val_bpb"))
        job.tokens_per_s = _number(summary.get("tokens_per_s"))
        job.wall_seconds = _number(summary.get("wall_seconds"))
    else:  # no summary (yet): the last logged figures; parameters and wall time stay unknown
        steps = [int(r["step"]) for r in rows]
        job.steps = max(steps) if steps else None
        job.final_loss = job.train_curve[-1][1] if job.train_curve else None
        job.final_val_loss = job.val_curve[-1][1] if job.val_curve else None
        bpbs = [float(r["val_bpb"]) for r in rows if _number(r.get("val_bpb")) is not None]
        job.final_val_bpb = bpbs[-1] if bpbs else None
        rates = [float(r["tokens_per_s"]) for r in rows if _number(r.get("tokens_per_s")) is not None]
        job.tokens_per_s = sum(rates) / len(rates) if rates else None

    if status_file.get("status") == "FAILED":  # written at the job's end, so newer than any summary
        job.status, job.error = FAILED, str(status_file.get("error") or "the job raised an exception")
    elif summary is not None:
        job.status = OK
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

def _override_key(override: str) -> str:
    """`model.dim` of `model.dim=32`, `+x.y=1` and `~x.y`."""
    return override.split("=", 1)[0].lstrip("+~")


def _override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def swept_keys(jobs: Sequence[JobResult]) -> list[str]:
    """The override keys whose value differs between jobs (or that some jobs lack), in first-seen order."""
    jobs = [job for job in jobs if job.overrides]  # a job that died before Hydra wrote them says nothing
    keys: list[str] = []
    for job in jobs:
        for override in job.overrides:
            if _override_key(override) not in keys:
                keys.append(_override_key(override))
    if len(jobs) < 2:
        return []
    swept = []
    for key in keys:
        values = {next((o for o in job.overrides if _override_key(o) == key), None) for job in jobs}
        if len(values) > 1:
            swept.append(key)
    return swept


def _label(job: JobResult, swept: Sequence[str]) -> str:
    """The job's overrides of the swept keys, or all of them when nothing varies."""
    shown = [o for o in job.overrides if _override_key(o) in swept] if swept else job.overrides
    return " ".join(shown)


def _common_overrides(jobs: Sequence[JobResult], swept: Sequence[str]) -> list[str]:
    with_overrides = [job for job in jobs if job.overrides]
    if not swept or not with_overrides:
        return []
    first = with_overrides[0].overrides
    return [o for o in first if _override_key(o) not in swept]


# --- formatting ------------------------------------------------------------------------------------

def _fmt_count(n: Optional[int]) -> str:
    if n is None:
        return ""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _fmt_loss(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.4f}"


def _fmt_rate(x: Optional[float]) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def _fmt_seconds(x: Optional[float]) -> str:
    if x is None or not math.isfinite(x):
        return ""
    if x < 60:
        return f"{x:.1f} s"
    minutes, secs = divmod(int(round(x)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _csv_value(x: Any) -> Any:
    return "" if x is None else x


def markdown(jobs: Sequence[JobResult], sweep_dir: Path, note: Optional[str] = None) -> str:
    """summary.md: a line about the sweep, the table, the best job and the errors of failed jobs."""
    swept = swept_keys(jobs)
    counts = {s: sum(j.status == s for j in jobs) for s in (OK, FAILED, INCOMPLETE)}
    lines = [f"# Sweep {sweep_dir}", ""]
    if note:
        lines += [f"**{note}**", ""]
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} ({tally})."
                 + (f" Swept: {', '.join(f'`{k}`' for k in swept)}." if swept else ""))
    common = _common_overrides(jobs, swept)
    if common:
        lines.append(f"Common overrides: `{' '.join(common)}`.")
    lines += ["", "| " + " | ".join(MD_HEADER) + " |", "|" + "|".join(MD_ALIGN) + "|"]
    for job in jobs:
        params = _fmt_count(job.params)
        if job.active_params is not None and job.params is not None and job.active_params != job.params:
            params += f" ({_fmt_count(job.active_params)} active)"
        cells = [job.name, _md_cell(_label(job, swept)), params, "" if job.steps is None else str(job.steps),
                 _fmt_loss(job.final_loss), _fmt_loss(job.final_val_loss), _fmt_loss(job.final_val_bpb),
                 _fmt_rate(job.tokens_per_s),
                 _fmt_seconds(job.wall_seconds), job.status]
        lines.append("| " + " | ".join(cells) + " |")
    finished = [j for j in jobs if j.status == OK]
    for attr, what in (("final_val_loss", "final val loss"), ("final_loss", "final train loss")):
        scored = [j for j in finished if getattr(j, attr) is not None and math.isfinite(getattr(j, attr))]
        if scored:
            best = min(scored, key=lambda j: getattr(j, attr))
            label = _label(best, swept)
            lines += ["", f"Best {what}: job {best.name}{f' ({label})' if label else ''}, "
                          f"{getattr(best, attr):.4f}."]
            break
    failed = [j for j in jobs if j.status == FAILED]
    if failed:
        lines += ["", "Failed jobs:", ""] + [f"- job {j.name}: {_md_cell(j.error or '')}" for j in failed]
    return "\n".join(lines) + "\n"


def write_csv(jobs: Sequence[JobResult], path: Path) -> Path:
    """summary.csv: the columns of CSV_COLUMNS, unformatted, then one column per swept key."""
    swept = swept_keys(jobs)
    extra = [k if k not in CSV_COLUMNS else f"override.{k}" for k in swept]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + extra)
    for job in jobs:
        values = {_override_key(o): _override_value(o) for o in job.overrides}
        writer.writerow([job.name, _label(job, swept), _csv_value(job.params), _csv_value(job.active_params),
                         _csv_value(job.steps), _csv_value(job.final_loss), _csv_value(job.final_val_loss),
                         _csv_value(job.final_val_bpb),
                         _csv_value(job.tokens_per_s), _csv_value(job.wall_seconds), job.status,
                         _csv_value(job.error)] + [values.get(k, "") for k in swept])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def plot_curves(jobs: Sequence[JobResult], path: Path) -> Path:
    """loss_curves.png: train loss of every job against step (validation loss dashed, same colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = swept_keys(jobs)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab10" if len(jobs) <= 10 else "tab20" if len(jobs) <= 20 else "viridis")
    drawn = 0
    for i, job in enumerate(jobs):
        colour = colours(i % 20 if len(jobs) <= 20 else i / max(len(jobs) - 1, 1))
        shown = _label(job, swept)
        label = f"{job.name}: {shown}" if shown else f"job {job.name}"
        if job.status != OK:
            label += f" ({job.status})"
        if job.train_curve:
            steps, losses = zip(*job.train_curve)
            ax.plot(steps, losses, color=colour, linewidth=1.2, label=label,
                    marker="o" if len(steps) < 3 else None, markersize=3)
            label = None  # one legend entry per job
            drawn += 1
        if job.val_curve:
            steps, losses = zip(*job.val_curve)
            ax.plot(steps, losses, color=colour, linestyle="--", linewidth=1.2, marker="o", markersize=3,
                    label=label)
            drawn += 1
    if drawn:
        ax.legend(fontsize="small" if len(jobs) <= 10 else "x-small", title="solid: train, dashed: validation",
                  title_fontsize="small", loc="best", ncol=1 if len(jobs) <= 12 else 2)
    else:
        ax.text(0.5, 0.5, "no metrics logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize(sweep_dir: str | Path, *, echo: bool = True, note: Optional[str] = None) -> Path:
    """Write summary.md, summary.csv and loss_curves.png into sweep_dir and return summary.md's path.

    Jobs that failed or are still running are listed with their status; nothing about one job makes
    it raise. NotASweepError when sweep_dir is not a directory or holds no job directory. echo prints
    the Markdown; note (e.g. "the sweep stopped early") goes above the table.
    """
    path = Path(sweep_dir)
    jobs = collect(path)
    text = markdown(jobs, path, note)
    md = path / SUMMARY_MD
    md.write_text(text, encoding="utf-8")
    write_csv(jobs, path / SUMMARY_CSV)
    plot_curves(jobs, path / CURVES_PNG)
    if echo:
        print(text, end="")
        print(f"\n(written: {md}, {path / SUMMARY_CSV}, {path / CURVES_PNG})", flush=True)
    return md


# --- the Hydra callback --------------------------------------------------------------------------

class SweepSummaryCallback(Callback):
    """Summarize every `-m` sweep when it ends; never fails the sweep.

    Where each hook runs (Hydra 1.3): on_multirun_start/on_multirun_end in the process that was
    started with `-m`, on the local machine also with the submitit launchers (after every job's
    result came back); on_job_end in the job's own process, which with submitit is a SLURM job on
    another node (the sweep directory must be on a shared filesystem, as submitit needs anyway).

    - on_job_end writes job_status.json into the job directory (COMPLETED or FAILED with the
      exception), so a job that raised shows as failed rather than incomplete.
    - on_multirun_end writes the summary.
    - Hydra's basic sweeper raises as soon as a job of a batch failed, and then on_multirun_end is
      never called; for that case (and Ctrl-C) on_multirun_start registers an atexit hook that
      writes the summary when the process exits without it.
    """

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self._sweep_dir: Optional[str] = None
        self._pending = False

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._sweep_dir = _sweep_dir_of(config)
        self._pending = True
        atexit.register(self._at_exit)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        try:
            from hydra.core.utils import JobStatus
            from hydra.types import RunMode
            from omegaconf import OmegaConf

            if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
                return  # single runs keep their directory as it was
            output_dir = OmegaConf.select(config, "hydra.runtime.output_dir")
            if not output_dir:
                return
            record: dict[str, Any] = {"status": job_return.status.name}
            if job_return.status == JobStatus.FAILED:
                from hydra.errors import CompactHydraException

                error = job_return._return_value  # the exception; .return_value would re-raise it
                # a refused config lists its problems on several lines: keep them all, on one
                text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
                if not isinstance(error, CompactHydraException):  # our messages need no type name
                    text = f"{type(error).__name__}: {text}"
                record["error"] = text[:1000]
            (Path(output_dir) / JOB_STATUS).write_text(json.dumps(record) + "\n", encoding="utf-8")
        except Exception as e:  # noqa: BLE001 - bookkeeping must never fail a job
            log.warning("sweep summary: could not record the job's status: %s: %s", type(e).__name__, e)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._pending = False
        atexit.unregister(self._at_exit)
        self._summarize(self._sweep_dir or _sweep_dir_of(config))

    def _at_exit(self) -> None:
        if self._pending:
            self._pending = False
            self._summarize(self._sweep_dir, note="The sweep stopped before all its jobs ended normally "
                                                  "(a job failed, or it was interrupted).")

    def _summarize(self, sweep_dir: Optional[str], note: Optional[str] = None) -> None:
        try:
            if sweep_dir is None:
                raise ValueError("the sweep directory is unknown")
            summarize(sweep_dir, echo=self.echo, note=note)
        except Exception as e:  # noqa: BLE001 - the sweep's own outcome must not depend on its summary
            log.warning("sweep summary of %s failed: %s: %s", sweep_dir, type(e).__name__, e)


def _sweep_dir_of(config: Any) -> Optional[str]:
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, "hydra.sweep.dir", default=None)
    return str(Path(str(value)).resolve()) if value is not None else None


# --- command line -----------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zer02llm.sweep",
        description="Summarize a Hydra multirun sweep of zer02llm.train: writes summary.md, summary.csv "
                    "and loss_curves.png into the sweep directory and prints the table.")
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory, e.g. multirun/2026-11-28/01-35-38")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)
    try:
        summarize(args.sweep_dir, echo=not args.quiet)
    except NotASweepError as e:
        parser.error(str(e))  # exit status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
