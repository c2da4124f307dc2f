"""Hyperparameter search with Optuna (`-m hydra/sweeper=optuna`, conf/hydra/sweeper/optuna.yaml), and
what the sweep summary reads back from it.

Three pieces that conf/hydra/sweeper/optuna.yaml points hydra-optuna-sweeper (1.2/1.3, optuna 2.10) at,
each mending what that plugin does on its own when a search is resumed:

- `sqlite_url`: the study's storage, <sweep dir>/optuna.db; it makes the directory, which Hydra's
  launchers create only later, when the first job starts.
- `TrialSeededTPESampler`: TPE whose randomness is seeded from (seed, trial number). Plain TPE seeds
  once per process, so a resumed study would draw its first trials again exactly as the first run
  did; this way trial k draws the same whether the study ran in one go or was resumed before k.
- `number_trial_directories`: each trial's job directory is named by its trial number
  (hydra.sweep.subdir=<trial>). The plugin numbers jobs from 0 in every process, so a resumed
  study would otherwise write its new trials over the first ones' directories.

Nothing here imports Hydra. optuna (the `sweep` extra) is imported at module level: zer02llm.sweep imports
this module only for a sweep directory that holds an optuna.db.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import optuna
from optuna.samplers import TPESampler

OPTUNA_DB = "optuna.db"
RESULTS_YAML = "optimization_results.yaml"  # written by the plugin when the search ends
TRIALS_PNG = "trials.png"
SUBDIR_PARAM = "hydra.sweep.subdir"


def sqlite_url(path: str) -> str:
    """`sqlite:///<absolute path>` of the study's database; its directory is created."""
    db = Path(path).expanduser().resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def number_trial_directories(cfg: Any, trial: Any) -> None:
    """custom_search_space hook: the trial's job directory is <sweep dir>/<trial number>.

    A one-value int parameter (its distribution's kind stays the same from trial to trial, as optuna
    requires) becomes the job's override hydra.sweep.subdir=<number>; samplers leave it alone."""
    trial.suggest_int(SUBDIR_PARAM, trial.number, trial.number)


class TrialSeededTPESampler(TPESampler):
    """optuna's TPESampler (same arguments) whose random state is reset from (seed, trial number) at each
    trial's first draw; seed=None: unseeded, as TPESampler."""

    def __init__(self, seed: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._trial_seed = seed
        self._seeded_trial: Optional[int] = None

    def _seed_for(self, trial: Any) -> None:
        if self._trial_seed is None or self._seeded_trial == trial._trial_id:
            return
        self._seeded_trial = trial._trial_id
        # TPESampler's own state and that of the random sampler it draws its startup trials from
        self._rng = np.random.RandomState([self._trial_seed, trial.number])
        self._random_sampler._rng = np.random.RandomState([self._trial_seed, trial.number, 1])

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        self._seed_for(trial)
        return super().sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        self._seed_for(trial)
        return super().sample_independent(study, trial, param_name, param_distribution)


# --- reading a finished (or interrupted) search back ---------------------------------------------

@dataclass
class Trial:
    number: int
    state: str  # COMPLETE, FAIL, RUNNING, PRUNED, WAITING
    value: Optional[float]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Search:
    """An Optuna search as its sweep directory holds it: the study's trials and the best one."""

    study_name: str
    trials: list[Trial]
    direction: str = "MINIMIZE"

    @property
    def best(self) -> Optional[Trial]:
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
        if not done:
            return None
        pick = max if self.direction == "MAXIMIZE" else min
        return pick(done, key=lambda t: t.value)


def read_search(sweep_dir: Path) -> Optional[Search]:
    """The search stored in <sweep_dir>/optuna.db, or None when there is none: its one study, or
    the one multirun.yaml names."""
    db = sweep_dir / OPTUNA_DB
    if not db.is_file():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return None
    wanted = _configured_study_name(sweep_dir)
    summary = next((s for s in summaries if s.study_name == wanted), summaries[-1])
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trials = [Trial(t.number, t.state.name, t.value,
                    {k: v for k, v in t.params.items() if k != SUBDIR_PARAM}) for t in study.trials]
    return Search(summary.study_name, trials, summary.direction.name)


def no_best_trial(search: Search, sweep_dir: Path) -> Optional[str]:
    """Why the search has no best trial, naming the failed trials' logs; None when it has one.

    A trial left RUNNING or WAITING (its job stopped by a signal, requeued, or the search interrupted)
    is not counted as failed: continuing the study may still complete it or others."""
    if search.best is not None:
        return None
    failed = [t for t in search.trials if t.state == "FAIL"]
    stopped = [t for t in search.trials if t.state in ("RUNNING", "WAITING")]

    def log_of(trial: Trial) -> str:
        job_dir = sweep_dir / str(trial.number)
        logs = sorted(job_dir.glob("*.log"))
        return str(logs[0] if logs else job_dir)

    shown = ", ".join(log_of(t) for t in failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    if failed and len(failed) + len(stopped) == len(search.trials):
        message = (f"every trial of the search failed ({len(failed)} of {len(search.trials)}), so there is no best "
                   f"trial; their logs: {shown} (the first error of each: {sweep_dir / 'summary.md'})")
    elif failed:
        message = (f"no trial of the search completed with a finite value ({len(failed)} failed, the others "
                   f"{', '.join(sorted({t.state for t in search.trials} - {'FAIL'}))}): no best trial; the failed "
                   f"trials' logs: {shown}")
    else:
        message = f"no trial of the search finished ({len(search.trials)} started): no best trial yet"
    if stopped:
        message += (f". {len(stopped)} trial(s) were stopped before they finished (a signal, a requeue), which is "
                    f"not a failure: rerun the command with hydra.sweep.dir={sweep_dir} to continue the study")
    return message


def _configured_study_name(sweep_dir: Path) -> Optional[str]:
    import yaml

    try:
        config = yaml.safe_load((sweep_dir / "multirun.yaml").read_text(encoding="utf-8"))
        return str(config["hydra"]["sweeper"]["study_name"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _fmt_param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_lines(search: Search, best_overrides: Optional[Sequence[str]] = None,
                   metric: str = "final val loss") -> list[str]:
    """The summary's Optuna section: the best trial (best_overrides: its job's, for the command that
    reruns it), the trials table, the plot; `metric` names the trials' values (train.sweep_metric)."""
    states = [t.state for t in search.trials]
    tally = ", ".join(f"{states.count(s)} {s.lower()}" for s in dict.fromkeys(states))
    lines = ["", "## Optuna search", "",
             f"Study `{search.study_name}` ({search.direction.lower()} {metric}): {len(search.trials)} "
             f"trials ({tally})."]
    best = search.best
    if best is not None:
        overrides = " ".join(best_overrides) if best_overrides else \
            "<the search's fixed overrides> " + " ".join(f"{k}={v}" for k, v in best.params.items())
        lines += ["", f"Best trial: {best.number}, {metric} {best.value:.6g}, job directory `{best.number}`.",
                  f"Rerun it alone: `python -m zer02llm.train {overrides}`"]
    names = list(dict.fromkeys(k for t in search.trials for k in t.params))
    lines += ["", "| trial | " + " | ".join(names) + f" | {metric} | state |",
              "|---:|" + "---:|" * len(names) + "---:|---|"]
    for t in search.trials:
        cells = [str(t.number)] + [_fmt_param(t.params[k]) if k in t.params else "" for k in names]
        cells += ["" if t.value is None else f"{t.value:.6g}", t.state.lower()]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![objective per trial]({TRIALS_PNG})"]
    return lines


def plot_trials(search: Search, path: Path, metric: str = "final val loss") -> Path:
    """trials.png: each trial's value (`metric`), the best so far as a step line, failed trials as x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    done = [t for t in search.trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    failed = [t for t in search.trials if t not in done]
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], color="tab:blue", zorder=3, label="trial")
        pick = max if search.direction == "MAXIMIZE" else min
        best, xs, ys = None, [], []
        for t in done:
            best = t.value if best is None else pick(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
        top = max(t.value for t in done) if search.direction != "MAXIMIZE" else min(t.value for t in done)
        if failed:
            ax.scatter([t.number for t in failed], [top] * len(failed), marker="x", color="tab:gray",
                       label="failed / unfinished (drawn at the worst value)")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"Optuna study {search.study_name}", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
