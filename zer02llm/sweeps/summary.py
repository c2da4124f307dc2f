"""The summary of a Hydra multirun sweep: one row per job, as a Markdown table, a CSV and plots.

    python -m zer02llm.sweep multirun/2026-11-28/01-35-38

writes into the sweep directory

    summary.md        the table (job, overrides, parameters, non-embedding parameters, steps, tokens,
                      FLOPs, final train/val loss, val bits/byte, tokens/s, wall time, CORE where jobs
                      scored train.eval_tasks, status), the
                      overrides common to all jobs, the best job, the errors; the scaling fit; for an
                      Optuna search its best trial and trials
    summary.csv       the same figures unformatted, plus one column per swept key
    loss_curves.png   train loss against step of every job (validation loss dashed, same colour)
    scaling.png       final val loss against N and against FLOPs, log axes, with the fitted power law
                      (zer02llm/sweeps/scaling.py), when finished jobs differ in N or in FLOPs
    trials.png        an Optuna search's objective per trial (zer02llm/sweeps/search.py)

and prints the Markdown. `zer02llm.sweep.SweepSummaryCallback` does the same at the end of every `-m` sweep once it
is listed under `hydra.callbacks` (see conf/hydra/callbacks/sweep_summary.yaml). How job directories
are found and what their status means: zer02llm/sweeps/jobs.py.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from zer02llm.sweeps import scaling
from zer02llm.sweeps.jobs import (DEFAULT_METRIC, FAILED, INCOMPLETE, JOB_STATUS, OK, JobResult, NotASweepError,
                                 collect, common_overrides, job_dirs, job_label, override_key, override_value,
                                 read_job, swept_keys)

__all__ = ["FAILED", "INCOMPLETE", "JOB_STATUS", "OK", "JobResult", "NotASweepError", "collect", "job_dirs", "read_job",
           "summarize", "swept_keys"]

log = logging.getLogger(__name__)

SUMMARY_MD, SUMMARY_CSV, CURVES_PNG = "summary.md", "summary.csv", "loss_curves.png"
CSV_COLUMNS = ["job", "overrides", "params", "active_params", "non_embedding_params", "steps", "tokens",
               "flops_per_token", "flops", "final_train_loss", "final_val_loss", "final_val_bpb",
               "tokens_per_s", "wall_seconds", "status", "error"]
MD_HEADER = ["job", "overrides", "parameters", "non-emb. params", "steps", "tokens", "FLOPs", "final train loss",
             "final val loss", "val bits/byte", "tokens/s", "wall time", "status"]
MD_ALIGN = ["---:", "---"] + ["---:"] * 10 + ["---"]
# metrics the table shows in a column of its own already; the names the text gives them
SHOWN_METRICS = ("final_loss", "final_val_loss", "final_val_bpb", "task/core")
METRIC_NAMES = {"final_val_loss": "final val loss", "final_loss": "final train loss",
                "final_val_bpb": "val bits/byte", "task/core": "CORE"}


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


def _fmt_flops(x: Optional[float]) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _csv_value(x: Any) -> Any:
    return "" if x is None else x


def sweep_metric(jobs: Sequence[JobResult]) -> tuple[str, str]:
    """(the metric the sweep ranks its jobs by, minimize or maximize): the jobs' train.sweep_metric (the most
    common one, should they differ), final_val_loss for jobs that name none."""
    named = [(j.sweep_metric, j.sweep_direction) for j in jobs if j.status != FAILED] or \
        [(j.sweep_metric, j.sweep_direction) for j in jobs]
    if not named:
        return DEFAULT_METRIC, "minimize"
    return max(dict.fromkeys(named), key=named.count)


def scaling_points(jobs: Sequence[JobResult], metric: str = DEFAULT_METRIC) -> list[scaling.ScalingPoint]:
    """The finished jobs with a finite value of `metric` and known N, tokens and FLOPs: what a fit may use
    (a failed or unfinished job never is)."""
    points = []
    for job in jobs:
        values = (job.non_embedding_params, job.tokens, job.flops, job.figures.get(metric))
        if job.status == OK and all(v is not None and math.isfinite(v) for v in values):
            points.append(scaling.ScalingPoint(job.name, float(job.non_embedding_params), float(job.tokens),
                                               float(job.flops), float(job.figures[metric])))
    return points


def scaling_fit(points: Sequence[scaling.ScalingPoint], metric: str = DEFAULT_METRIC,
                direction: str = "minimize") -> Optional[scaling.ScalingFit]:
    """The fit (or the reason there is none) when the finished jobs differ in N or in FLOPs; None when
    they do not (a learning-rate sweep), and the summary then has no scaling section."""
    if len({p.params for p in points}) < 2 and not scaling.spread([p.flops for p in points]) > scaling.MATCHED_FLOPS:
        return None
    return scaling.fit_sweep(points, metric, direction == "maximize")


def read_search(sweep_dir: Path) -> Optional[Any]:
    """The Optuna search of the sweep (hpsearch.Search), None for other sweeps or without optuna."""
    if not (sweep_dir / "optuna.db").is_file():
        return None
    try:
        from zer02llm.sweeps import search as hpsearch
    except ImportError:
        log.warning("%s holds an Optuna study, but optuna is not installed: pip install -e '.[sweep]'", sweep_dir)
        return None
    return hpsearch.read_search(sweep_dir)


def markdown(jobs: Sequence[JobResult], sweep_dir: Path, note: Optional[str] = None,
             fit: Optional[scaling.ScalingFit] = None, search: Optional[Any] = None) -> str:
    """summary.md: a line about the sweep, the table, the best job, the errors of failed jobs, then the
    scaling fit and the Optuna search where given."""
    swept = swept_keys(jobs)
    counts = {s: sum(j.status == s for j in jobs) for s in (OK, FAILED, INCOMPLETE)}
    lines = [f"# Sweep {sweep_dir}", ""]
    if note:
        lines += [f"**{note}**", ""]
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} ({tally})."
                 + (f" Swept: {', '.join(f'`{k}`' for k in swept)}." if swept else ""))
    common = common_overrides(jobs, swept)
    if common:
        lines.append(f"Common overrides: `{' '.join(common)}`.")
    metric, direction = sweep_metric(jobs)
    # CORE of train.eval_tasks, where jobs scored tasks, and the sweep's metric where no other column shows it:
    # columns before the status
    core = any(j.task_core is not None for j in jobs)
    extra = ["CORE"] * core + ([metric] if metric not in SHOWN_METRICS else [])
    header, align = MD_HEADER[:-1] + extra + MD_HEADER[-1:], MD_ALIGN[:-1] + ["---:"] * len(extra) + MD_ALIGN[-1:]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for job in jobs:
        params = _fmt_count(job.params)
        if job.active_params is not None and job.params is not None and job.active_params != job.params:
            params += f" ({_fmt_count(job.active_params)} active)"
        cells = [job.name, _md_cell(job_label(job, swept)), params, _fmt_count(job.non_embedding_params),
                 "" if job.steps is None else str(job.steps), _fmt_count(job.tokens), _fmt_flops(job.flops),
                 _fmt_loss(job.final_loss), _fmt_loss(job.final_val_loss), _fmt_loss(job.final_val_bpb),
                 _fmt_rate(job.tokens_per_s), _fmt_seconds(job.wall_seconds), job.status]
        if core:
            cells.insert(-1, "" if job.task_core is None else f"{job.task_core:+.4f}")
        if metric not in SHOWN_METRICS:
            value = job.figures.get(metric)
            cells.insert(-1, "" if value is None else f"{value:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    finished = [j for j in jobs if j.status == OK]
    ranked = [(metric, direction)] + [(m, "minimize") for m in ("final_val_loss", "final_loss") if m != metric]
    for attr, how in ranked:  # the sweep's metric; without any job having it, the losses as before
        scored = [j for j in finished if j.figures.get(attr) is not None and math.isfinite(j.figures[attr])]
        if scored:
            pick = max if how == "maximize" else min
            best = pick(scored, key=lambda j: j.figures[attr])
            label = job_label(best, swept)
            lines += ["", f"Best {METRIC_NAMES.get(attr, attr)}: job {best.name}{f' ({label})' if label else ''}, "
                          f"{best.figures[attr]:.4f}."]
            break
    failed = [j for j in jobs if j.status == FAILED]
    if failed:
        lines += ["", "Failed jobs:", ""] + [f"- job {j.name}: {_md_cell(j.error or '')}" for j in failed]
    if fit is not None:
        lines += scaling.markdown_lines(fit)
    if search is not None:
        from zer02llm.sweeps import search as hpsearch

        best = search.best
        best_job = next((j for j in jobs if best is not None and j.name == str(best.number)), None)
        lines += hpsearch.markdown_lines(search, best_job.overrides if best_job else None,
                                         METRIC_NAMES.get(metric, metric))
    return "\n".join(lines) + "\n"


def write_csv(jobs: Sequence[JobResult], path: Path) -> Path:
    """summary.csv: the columns of CSV_COLUMNS, unformatted, then one column per swept key."""
    swept = swept_keys(jobs)
    core = ["task_core"] if any(j.task_core is not None for j in jobs) else []  # train.eval_tasks' CORE
    metric, _ = sweep_metric(jobs)
    own = [metric] if metric not in SHOWN_METRICS else []  # the sweep's metric, where no column has it
    extra = [k if k not in CSV_COLUMNS + core + own else f"override.{k}" for k in swept]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + core + own + extra)
    for job in jobs:
        values = {override_key(o): override_value(o) for o in job.overrides}
        writer.writerow([job.name, job_label(job, swept)]
                        + [_csv_value(getattr(job, attr)) for attr in (
                            "params", "active_params", "non_embedding_params", "steps", "tokens", "flops_per_token",
                            "flops", "final_loss", "final_val_loss", "final_val_bpb", "tokens_per_s", "wall_seconds")]
                        + [job.status, _csv_value(job.error)] + [_csv_value(job.task_core) for _ in core]
                        + [_csv_value(job.figures.get(m)) for m in own]
                        + [values.get(k, "") for k in swept])
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
        shown = job_label(job, swept)
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
    """Write summary.md, summary.csv, loss_curves.png (and scaling.png, trials.png where they apply)
    into sweep_dir and return summary.md's path.

    Jobs that failed or are still running are listed with their status; nothing about one job makes
    it raise. NotASweepError when sweep_dir is not a directory or holds no job directory. echo prints
    the Markdown; note (e.g. "the sweep stopped early") goes above the table.
    """
    path = Path(sweep_dir)
    jobs = collect(path)
    metric, direction = sweep_metric(jobs)
    points = scaling_points(jobs, metric)
    fit = scaling_fit(points, metric, direction)
    search = read_search(path)
    text = markdown(jobs, path, note, fit, search)
    md = path / SUMMARY_MD
    md.write_text(text, encoding="utf-8")
    written = [md, write_csv(jobs, path / SUMMARY_CSV), plot_curves(jobs, path / CURVES_PNG)]
    if fit is not None:
        written.append(scaling.plot_scaling(points, fit, path / scaling.SCALING_PNG))
    if search is not None:
        from zer02llm.sweeps import search as hpsearch

        written.append(hpsearch.plot_trials(search, path / hpsearch.TRIALS_PNG, METRIC_NAMES.get(metric, metric)))
    if echo:
        print(text, end="")
        print(f"\n(written: {', '.join(str(p) for p in written)})", flush=True)
    return md


# --- the Hydra callback --------------------------------------------------------------------------
