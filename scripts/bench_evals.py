#!/usr/bin/env python3
"""Items per second of multiple-choice scoring: zer02llm's scorer against lm-evaluation-harness on the same model.

Runs the multiple-choice tasks of a suite (default: the shipped `sample` suite) on a checkpoint three ways, in
this process, one after the other:
  ours      zer02llm.evals (python -m zer02llm.evaluate's code): one context pass per item, choices batched
(for lm-eval, the time inside the model's loglikelihood calls: tokenizing and scoring, as ours counts)
  zer02llm  lm-eval with `--model zer02llm` (zer02llm/evals/lm_eval_model.py) on the checkpoint
  hf        lm-eval with `--model hf` (add_bos_token=True) on the checkpoint exported to transformers
and checks that the three agree on the accuracies. lm-eval is optional (pip install 'zer02llm[evals]'): without
it only `ours` runs.

    python scripts/bench_evals.py --checkpoint outputs/<date>/<time> [--tasks sample] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LM_EVAL_TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: {delimiter}
metric_list:
  - metric: acc
"""


def lm_eval_run(model: str, model_args: str, names: list[str], include: Path, batch_size: int) -> tuple[float, dict]:
    """(seconds inside the model's loglikelihood calls, accuracy per task): lm-eval's task building and metrics
    are left out, its tokenizing and scoring counted, as ours are."""
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    import zer02llm.evals.lm_eval_model  # noqa: F401 - registers zer02llm

    lm = get_model(model).create_from_arg_string(model_args, {"batch_size": batch_size})
    spent = [0.0]
    score = lm.loglikelihood

    def timed(requests, *rest, **kwargs):
        started = time.perf_counter()
        try:
            return score(requests, *rest, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    lm.loglikelihood = timed
    out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(include)),
                                  bootstrap_iters=0)
    return spent[0], {n.removeprefix("bench_"): out["results"][n]["acc,none"] for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tasks", default="sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hf-batch-sizes", default="1,16")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scorer; the fastest counts")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from zer02llm.evals.runner import run_tasks
    from zer02llm.evals.scorer import make_scorer
    from zer02llm.evals.tasks import load_all
    from zer02llm.inference.loading import load_for_inference

    tasks = [t for t in load_all([args.tasks]) if t.kind == "multiple_choice" and t.num_fewshot == 0]
    items = sum(len(t.items) for t in tasks)
    loaded = load_for_inference(args.checkpoint, "cpu", threads=args.threads)
    run_tasks(make_scorer(loaded.model), loaded.tokenizer, tasks[:1])  # warm-up: torch's first calls, lazy imports
    seconds = float("inf")
    for _ in range(args.repeat):  # the best of a few: the machine may be shared
        started = time.perf_counter()
        results = run_tasks(make_scorer(loaded.model), loaded.tokenizer, tasks)
        seconds = min(seconds, time.perf_counter() - started)
    rows = [("ours", seconds, {r.name: r.metrics["acc"] for r in results})]
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("lm-eval is not installed: only zer02llm's own scorer was timed", file=sys.stderr)
    else:
        from zer02llm import export
        from zer02llm.config import ExportConfig

        with tempfile.TemporaryDirectory() as tmp:
            include = Path(tmp) / "tasks"
            include.mkdir()
            for t in tasks:
                (include / f"{t.name}.yaml").write_text(LM_EVAL_TASK.format(
                    name=f"bench_{t.name}", path=t.path, delimiter=json.dumps(t.delimiter)))
            names = [f"bench_{t.name}" for t in tasks]
            def best(model: str, model_args: str, batch: int) -> tuple[float, dict]:
                runs = [lm_eval_run(model, model_args, names, include, batch) for _ in range(args.repeat)]
                return min(r[0] for r in runs), runs[0][1]

            rows.append(("lm-eval zer02llm", *best("zer02llm", f"checkpoint={args.checkpoint},device=cpu,"
                                                   f"threads={args.threads}", 1)))
            export.run(ExportConfig(checkpoint=args.checkpoint, output=str(Path(tmp) / "hf")))
            for batch in (int(b) for b in args.hf_batch_sizes.split(",")):
                rows.append((f"lm-eval hf (batch {batch})", *best(
                    "hf", f"pretrained={Path(tmp) / 'hf'},add_bos_token=True,dtype=float32,device=cpu", batch)))
    print(f"{items} multiple-choice items ({', '.join(t.name for t in tasks)}), {args.threads} thread(s)")
    print("| scorer | seconds | items/s | accuracies |\n| --- | ---: | ---: | --- |")
    for name, secs, accs in rows:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in accs.items())
        print(f"| {name} | {secs:.2f} | {items / secs:.1f} | {shown} |")
    if any(accs != rows[0][2] for _, _, accs in rows[1:]):
        print("the accuracies differ between scorers", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
