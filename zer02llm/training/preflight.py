"""Everything a training run is checked for before anything heavy starts: its values, and the files
they name (data, tokenizer, the checkpoint to start from or resume).

Nothing here imports torch: a refused command answers in a fraction of a second.
"""

from __future__ import annotations

import os
from typing import Sequence

from zer02llm.config import Config, ConfigError, config_problems
from zer02llm.data.sources import file_problems
from zer02llm.data.spec import mixture_problems
from zer02llm.interop.transformers import init_from_problems


def path_problems(cfg: Config) -> list[str]:
    """The files and directories that `cfg` names and that are missing or of the wrong kind."""
    problems: list[str] = []
    data, train = cfg.data, cfg.train
    val_path = None if data.val_path == "auto" else data.val_path
    for key, path in {"data.train_path": data.train_path, "data.val_path": val_path}.items():
        if path is not None:
            problems += file_problems(key, path)
    tokenizer_path = cfg.tokenizer.path
    if tokenizer_path is not None and os.path.isfile(tokenizer_path):
        problems.append(f"tokenizer.path={tokenizer_path} is a file: give the directory that holds tokenizer.json"
                        f" (and tokenizer_config.json), e.g. {os.path.dirname(tokenizer_path) or '.'}")
    elif tokenizer_path is not None and not os.path.isfile(os.path.join(tokenizer_path, "tokenizer.json")):
        problems.append(f"tokenizer.path={tokenizer_path}: no tokenizer.json in that directory")
    if cfg.mode.init_from is not None and not os.path.exists(cfg.mode.init_from):
        problems.append(f"mode.init_from={cfg.mode.init_from}: no such checkpoint or run directory")
    elif cfg.mode.init_from is not None:
        problems += init_from_problems(cfg.mode.init_from, cfg.model)  # a transformers directory's config.json
    resume = train.resume
    if resume not in (None, "auto") and not os.path.isdir(resume):
        problems.append(f"train.resume={resume}: no such checkpoint directory (or use 'auto')")
    return problems


def validate_run(cfg: Config, check_files: bool = True, problems: Sequence[str] = ()) -> None:
    """Raise ConfigError listing every problem of a training run's config: bad values, a bad mixture,
    and (with `check_files`) missing or unusable files. `problems`: found before, reported with the rest."""
    problems = list(problems) + config_problems(cfg) + mixture_problems(cfg.data, cfg.mode.name, check_files)
    if check_files:
        problems += path_problems(cfg)
        if not problems:
            problems += sweep_metric_task_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def sweep_metric_task_problems(cfg: Config) -> list[str]:
    """train.sweep_metric=task/<task>/<metric>: the task must be one of train.eval_tasks' (their files are read)."""
    parts = cfg.train.sweep_metric.split("/")
    if len(parts) != 3 or parts[0] != "task" or not cfg.train.eval_tasks:
        return []
    from zer02llm.evals.tasks import load_all

    try:
        names = [task.name for task in load_all(list(cfg.train.eval_tasks))]
    except ConfigError as e:
        return [str(e)]
    if parts[1] in names:
        return []
    return [f"train.sweep_metric={cfg.train.sweep_metric}: no task {parts[1]!r} among train.eval_tasks "
            f"({', '.join(names)}); task scores it could name: task/core, "
            + ", ".join(f"task/{n}/acc" for n in names)]
