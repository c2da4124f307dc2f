"""`python -m zer02llm.train [overrides]`: compose the config, validate it, train.

With generate.py and eval.py, the only place that knows about Hydra: it turns the composed
DictConfig into plain dataclasses and hands them to the Trainer.

The task function returns the run's train.sweep_metric (by default summary.json's final_val_loss; a task
score such as task/core), what `-m hydra/sweeper=optuna_tpe` searches optimise (conf/hydra/sweeper/optuna_tpe.yaml).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from zer02llm.cli import check_printed_config, quote_text_overrides, unknown_override_keys
from zer02llm.config import Config, ConfigError, MoEConfig, override_problems, register_configs, undeclared_keys
from zer02llm.optuna_search import register_optuna_search
from zer02llm.training import rundir
from zer02llm.training.preflight import validate_run
from zer02llm.data.jsonl import DataError
from zer02llm.resources import shipped_path

log = logging.getLogger("zer02llm.train")
TEXT_KEYS = ("data.train_path", "data.val_path", "data.cache_dir", "tokenizer.path", "train.resume")
register_configs()
register_optuna_search()  # conf/hydra/sweeper/optuna_tpe.yaml's sweeper


class JobFailed(CompactHydraException):
    """A sweep job's config or data was refused: Hydra records the job as failed (job_status.json,
    summary.md), runs the other jobs, then prints this message and exits with status 1."""


@hydra.main(version_base="1.3", config_path=str(shipped_path("conf")), config_name="config")
def main(dict_cfg: DictConfig) -> Optional[float]:
    """Train; the run's train.sweep_metric (None without one, and on ranks other than 0).

    Under an Optuna sweeper a run that cannot give a finite one raises JobFailed, which the sweeper
    records as a failed trial and goes on; so does a diverged run's FloatingPointError."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    optuna = multirun and "optuna" in str(OmegaConf.select(HydraConfig.get(), "sweeper._target_", default=""))
    main_rank = launched_rank() in (None, 0)

    def accept_run() -> None:
        """The run is accepted: Hydra's record of it (.hydra/) and its log go into the run directory."""
        if main_rank:
            write_hydra_record(run_dir, dict_cfg)
            rundir.accept_run_log()

    if multirun and not rundir.previous_run(run_dir):
        # a sweep's job in a directory of its own: its record and log from the start, refused or not (the
        # summary lists a refused job's overrides and error); in one holding a run, as a single run does
        accept_run()
    try:
        cfg = checked_config(dict_cfg, HydraConfig.get().overrides.task)
        if optuna and cfg.train.sweep_metric.startswith("final_val") and cfg.data.val_path is None:
            raise ConfigError(f"data.val_path=null: the Optuna search optimises train.sweep_metric="
                              f"{cfg.train.sweep_metric}, so it needs a validation set (data.val_path=<file>, or auto "
                              f"with the sample corpus), or a task score as the metric (train.sweep_metric=task/core "
                              f"with train.eval_tasks=[...])")
        problem = rundir.fresh_start_problem(run_dir, cfg.train.resume, cfg.train.overwrite) if main_rank else None
        if problem:
            raise rundir.RunDirTaken(problem)
        from zer02llm.training.trainer import Trainer  # torch is imported only once the config is known good

        resolved = OmegaConf.to_container(dict_cfg, resolve=True)
        # the Trainer claims the run directory (moves an old run aside, writes config.yaml, calls accept_run)
        # once a checkpoint is accepted or a fresh start decided: a refused resume leaves it byte-identical
        Trainer(cfg, run_dir, resolved, on_claim=accept_run).fit()
        if not main_rank:
            return None
        metric = cfg.train.sweep_metric
        value, available = metric_value(run_dir, metric)
        if optuna and (value is None or not math.isfinite(value)):
            raise JobFailed(f"no finite {metric} (train.sweep_metric) in {run_dir / 'summary.json'} (got {value}; "
                            f"its figures: {', '.join(available) or 'none'}): the trial failed (did the run stop "
                            f"early, or diverge?)")
        return value
    except (ConfigError, DataError) as e:
        # a clear message instead of a traceback: nothing heavy has run yet
        if multirun:  # sys.exit would end the whole sweep here, without a record of this job
            log.error("%s", e)  # the job's log: the sweep summary quotes its first ERROR line
            rundir.discard_run_log()  # unless accepted: a directory holding another run stays as it was
            failed = JobFailed(str(e))
            # the sweep's callback then writes no job_status.json there either
            failed.keeps_job_dir = isinstance(e, rundir.RunDirTaken)
            raise failed from None
        leave_unstarted_run(run_dir)
        # as cli() reports what it refuses before Hydra composes, and the other entry points theirs
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if rundir.run_log_accepted():
            sys.exit(130)  # the run had started: the Trainer has saved what it could and said so
        # Ctrl-C before the run was accepted (tokenizing the data, computing a DPO reference)
        log.warning("interrupted before training started: the data tokenized so far is kept in the token cache "
                    "and the next run continues from there; %s", "the run directory is left as it was"
                    if run_dir.is_dir() and any(run_dir.iterdir()) else "no run directory is left behind")
        leave_unstarted_run(run_dir)
        sys.exit(130)
    finally:
        if "torch" in sys.modules:
            from zer02llm.training import distributed

            distributed.shutdown()


def write_hydra_record(run_dir: Path, dict_cfg: DictConfig) -> None:
    """.hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them (conf/config.yaml turns its
    own writing off, which happens before the run is checked)."""
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    record = run_dir / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", dict_cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        (record / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


def leave_unstarted_run(run_dir: Path) -> None:
    """A run refused or interrupted before it was accepted: nothing of it is written to the log file,
    and a directory made only for it goes."""
    rundir.discard_run_log()
    remove_unstarted_run_dir(run_dir)


def metric_value(run_dir: Path, metric: str) -> tuple[Optional[float], list[str]]:
    """(summary.json's figure named `metric`, the names of its numeric figures); None when the run wrote no
    summary (stopped by a signal) or has no such figure (no validation set, a task not scored)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, []
    if not isinstance(summary, dict):
        return None, []
    numeric = [k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    value = summary.get(metric)
    return (float(value) if metric in numeric else None), numeric


def checked_config(dict_cfg: DictConfig, overrides: Sequence[str] = ()) -> Config:
    """The composed config as dataclasses, or a ConfigError listing every problem (unknown keys included,
    and command-line `overrides` that the chosen optimizer would not read)."""
    unknown = undeclared_keys(dict_cfg)
    cfg: Config = OmegaConf.to_object(dict_cfg)
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    validate_run(cfg, problems=unknown + override_problems(cfg.optim, keys))
    return cfg


def remove_unstarted_run_dir(run_dir: Path) -> None:
    """Remove the directory Hydra made for a run that was refused before it started, so failed
    commands leave no empty timestamped directories; one holding anything but Hydra's own
    bookkeeping (a run being resumed, checkpoints, metrics) stays as it is."""
    if launched_rank() not in (None, 0) or run_dir.resolve() == Path.cwd().resolve() or not run_dir.is_dir():
        return
    if any(not (p.name == ".hydra" or p.suffix == ".log") for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.resolve().parent
    # the date directory of the default layout (outputs/<date>/<time>), when this was its only run;
    # never the working directory or one above it
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", parent.name) and parent not in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        with contextlib.suppress(OSError):
            parent.rmdir()


def launched_rank() -> int | None:
    """The rank a launcher gave this process (torchrun, SLURM), without importing torch yet."""
    if "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        return None
    from zer02llm.training.distributed import rank_from_env

    return rank_from_env()


def cli() -> None:
    """Console entry: file paths need no Hydra quoting (non-ASCII names, commas)."""
    sys.argv[1:] = quote_text_overrides(sys.argv[1:], TEXT_KEYS)
    unknown = unknown_override_keys(sys.argv[1:], Config, {"model": (MoEConfig,)})
    if unknown:
        print("error: invalid configuration:\n  - " + "\n  - ".join(unknown), file=sys.stderr)
        sys.exit(2)
    if launched_rank() not in (None, 0):
        # under torchrun every rank runs this; only rank 0 may create the run directory and its
        # files (its timestamp would differ anyway): the Trainer takes rank 0's directory instead
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    main()
    # `--cfg job` only prints the composed config; say what would be refused in it
    check_printed_config(sys.argv[1:], "config", checked_config)


if __name__ == "__main__":
    cli()
