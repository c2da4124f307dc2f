"""train.eval_tasks: task figures at eval steps, in the metrics rows and summary.json, equal to scoring the
final checkpoint with the library; also with the model sharded by FSDP over two processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, read_metrics, run_module
from zer02llm.evals.runner import flat_scores, run_tasks
from zer02llm.evals.scorer import make_scorer
from zer02llm.evals.tasks import load_all
from zer02llm.inference.loading import load_for_inference

pytestmark = pytest.mark.slow
ARGS = [*TINY, "train.max_steps=10", "train.eval_interval=5", "train.eval_tasks=[sample]", "train.eval_tasks_limit=6"]


def final_scores(run_dir: Path) -> dict[str, float]:
    loaded = load_for_inference(str(run_dir), "cpu", threads=1)
    return flat_scores(run_tasks(make_scorer(loaded.model), loaded.tokenizer, load_all(["sample"]), limit=6))


def check(run_dir: Path) -> None:
    rows = [r for r in read_metrics(run_dir) if "task/core" in r]
    assert [r["step"] for r in rows] == [5, 10]
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = final_scores(run_dir)
    assert {k: v for k, v in rows[-1].items() if k.startswith("task/")} == pytest.approx(expected)
    assert {k: v for k, v in summary.items() if k.startswith("task/")} == pytest.approx(expected)
    assert set(expected) >= {"task/days/acc", "task/days/acc_norm", "task/sums/acc", "task/sums/answered", "task/core"}


def test_eval_tasks_are_scored_at_eval_steps(tmp_path):
    run_module("zer02llm.train", [*ARGS, "hydra.run.dir=run"], cwd=tmp_path)
    check(tmp_path / "run")


def test_eval_tasks_with_a_sharded_model(tmp_path):
    run_module("torch.distributed.run", ["--standalone", "--nproc_per_node=2", "-m", "zer02llm.train", *ARGS,
                                         "train.batch_size=2", "distributed.strategy=fsdp", "hydra.run.dir=fsdp"],
               cwd=tmp_path)
    check(tmp_path / "fsdp")
