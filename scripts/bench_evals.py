#!/usr/bin/env python3
"""Items per second of task evaluation: zer02llm's scorer against lm-evaluation-harness on the same model, and
greedy replies through the batched engine against batch-1 decoding.

Runs the multiple-choice tasks of a suite (default: the shipped `sample` suite) on a checkpoint these ways, in
this process, one after the other:
  ours      zer02llm.evals (python -m zer02llm.evaluate's code): one context pass per item, choices batched
  LLM.score the same requests through the engine's LLM.score (a forward per choice, the context's blocks shared
            by the prefix cache): the alternative that ModelScorer's packed rows are measured against
  zer02llm  lm-eval with `--model zer02llm` (zer02llm/evals/lm_eval_model.py) on the checkpoint
  hf        lm-eval with `--model hf` (add_bos_token=True) on the checkpoint exported to transformers
(for lm-eval, the time inside the model's loglikelihood calls: tokenizing and scoring, as ours counts)
and checks that they agree on the accuracies. lm-eval is optional (pip install 'zer02llm[evals]'): without it
only ours and LLM.score run. Then the suite's generative tasks two ways, checking that every reply is the same:
  batch 1   each prompt decoded alone (sampling.generate through a KV cache)
  engine    all of a task's prompts at once through the batched engine (what zer02llm.evals runs)

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


class EngineScores:
    """LanguageModel.loglikelihoods through the engine's LLM.score: one request per (context, choice), the
    context's cache blocks shared between its choices by the prefix cache."""

    def __init__(self, model):
        from zer02llm.inference.engine.llm import LLM

        self.llm = LLM.from_model(model, None, max_batch=64, kv_budget_tokens=32768, cuda_graphs=False)
        self.max_len = model.cfg.max_seq_len

    def loglikelihoods(self, requests):
        from zer02llm.evals.scorer import Score

        contexts = [context for context, continuations in requests for _ in continuations]
        scores = iter(self.llm.score(contexts, [c for _, continuations in requests for c in continuations]))
        return [[Score(s.logprob, s.is_greedy, s.num_tokens) for _, s in zip(continuations, scores)]
                for _, continuations in requests]


def bench_generative(model, tokenizer, tasks, repeat: int) -> None:
    """Items/s of the generative tasks, batch 1 against the engine; exit 1 when a reply differs."""
    from zer02llm.evals.runner import TaskRunner
    from zer02llm.evals.scorer import ModelScorer

    items = sum(len(t.items) for t in tasks)
    rows = []
    for name, batched in (("batch 1 (sampling.generate, one prompt at a time)", False),
                          ("engine (all of a task's prompts at once)", True)):
        seconds = float("inf")
        for _ in range(repeat):
            runner = TaskRunner(ModelScorer(model, batched_replies=batched), tokenizer, shown=None)
            started = time.perf_counter()
            results = [runner.run(t) for t in tasks]
            seconds = min(seconds, time.perf_counter() - started)
        replies = [e["reply"] for r in results for e in r.examples]
        rows.append((name, seconds, {r.name: r.metrics["acc"] for r in results}, replies))
    print(f"\n{items} generative items ({', '.join(t.name for t in tasks)}), greedy replies")
    print("| replies | seconds | items/s | accuracies |\n| --- | ---: | ---: | --- |")
    for name, secs, accs, _ in rows:
        print(f"| {name} | {secs:.2f} | {items / secs:.1f} | {', '.join(f'{k} {v:.3f}' for k, v in accs.items())} |")
    print(f"engine / batch 1: {rows[0][1] / rows[1][1]:.2f}x")
    if rows[0][3] != rows[1][3]:
        print("the replies differ between batch 1 and the engine", file=sys.stderr)
        sys.exit(1)


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

    suite = load_all([args.tasks])
    tasks = [t for t in suite if t.kind == "multiple_choice" and t.num_fewshot == 0]
    items = sum(len(t.items) for t in tasks)
    loaded = load_for_inference(args.checkpoint, "cpu", threads=args.threads)
    run_tasks(make_scorer(loaded.model), loaded.tokenizer, tasks[:1])  # warm-up: torch's first calls, lazy imports
    seconds = float("inf")
    for _ in range(args.repeat):  # the best of a few: the machine may be shared
        started = time.perf_counter()
        results = run_tasks(make_scorer(loaded.model), loaded.tokenizer, tasks)
        seconds = min(seconds, time.perf_counter() - started)
    rows = [("ours", seconds, {r.name: r.metrics["acc"] for r in results})]
    seconds = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        results = run_tasks(EngineScores(loaded.model), loaded.tokenizer, tasks)
        seconds = min(seconds, time.perf_counter() - started)
    rows.append(("ours, through LLM.score", seconds, {r.name: r.metrics["acc"] for r in results}))
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
    generative = [t for t in suite if t.kind == "generative"]
    if generative:
        bench_generative(loaded.model, loaded.tokenizer, generative, args.repeat)


if __name__ == "__main__":
    main()
