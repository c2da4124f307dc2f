"""`python -m zer02llm.evaluate checkpoint=<run or checkpoint> tasks=[...]`: what a model can do, task by task.

Prints a table of each task's accuracy (acc_norm for multiple choice), its chance level and centred accuracy,
and the CORE aggregate; writes the results as JSON (eval_results.json in the run directory by default) and
refreshes the run's report card. `compare=[<run>,<run>,...]` instead sets runs' report cards side by side.
docs/evaluation.md describes the task files and the shipped suite (`tasks=[sample]`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import OmegaConf

from zer02llm.cli import quote_text_overrides, run_reporting_errors
from zer02llm.config import CHAT_MODES, ConfigError, EvaluateConfig, evaluate_problems, register_configs

register_configs()
TEXT_KEYS = ("checkpoint", "adapter", "tokenizer_path", "output", "tasks", "compare")
LIST_KEYS = ("tasks", "compare")


def run(cfg: EvaluateConfig) -> Optional[dict[str, Any]]:
    """Evaluate (or compare); the results as written to the JSON file."""
    if problems := evaluate_problems(cfg):
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    if cfg.compare:
        from zer02llm.evals.report import compare_reports

        print(compare_reports([Path(p) for p in cfg.compare]))
        return None
    from zer02llm.evals.runner import format_table, results_dict, run_tasks
    from zer02llm.evals.scorer import make_scorer
    from zer02llm.evals.tasks import load_all
    from zer02llm.inference.loading import load_for_inference

    tasks = load_all(list(cfg.tasks))  # before the model: a bad task file fails at once
    loaded = load_for_inference(cfg.checkpoint, cfg.device, cfg.adapter, cfg.tokenizer_path, False, cfg.threads)
    chat = cfg.chat if cfg.chat is not None else loaded.mode in CHAT_MODES
    # the model never saw positions past the length it was trained on
    max_len = min(loaded.trained_seq_len or loaded.model.cfg.max_seq_len, loaded.model.cfg.max_seq_len)
    results = run_tasks(make_scorer(loaded.model, max_len), loaded.tokenizer, tasks, cfg.seed, chat, cfg.limit,
                        cfg.num_fewshot)
    print(format_table(results))
    record = {"checkpoint": str(loaded.checkpoint), "mode": loaded.mode, "chat": chat, "seed": cfg.seed,
              "limit": cfg.limit, **results_dict(results)}
    run_dir = run_dir_of(loaded.checkpoint)
    output = Path(cfg.output) if cfg.output else (run_dir or loaded.checkpoint) / "eval_results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results: {output}", file=sys.stderr)
    if run_dir is not None and (run_dir / "report.md").is_file() and output == run_dir / "eval_results.json":
        from zer02llm.evals.report import write_report

        write_report(run_dir)  # the report card shows the new scores
    return record


def run_dir_of(checkpoint: Path) -> Optional[Path]:
    """The run directory a checkpoint belongs to (…/<run>/checkpoints/step_N), or None for a loose one."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


@hydra.main(version_base="1.3", config_path=None, config_name="evaluate")
def main(dict_cfg) -> None:
    run_reporting_errors(run, OmegaConf.to_object(dict_cfg))


def as_lists(argv: list[str]) -> list[str]:
    """`tasks=sample` as `tasks=[sample]`: a list key given one value."""
    fixed = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in LIST_KEYS and value and value[0] not in "['\"" and value != "null":
            arg = f"{key}=[{value}]"
        fixed.append(arg)
    return fixed


def cli() -> None:
    """Console entry: paths need no Hydra quoting, a single task needs no brackets."""
    sys.argv[1:] = quote_text_overrides(as_lists(sys.argv[1:]), TEXT_KEYS)
    main()


if __name__ == "__main__":
    cli()
