"""train.eval_tasks: task figures at eval steps, in the metrics rows, wandb and summary.json, equal to scoring the
final checkpoint with the library; also with the model sharded by FSDP over two processes."""

from __future__ import annotations

import json
import os
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


# a stand-in for the wandb package, found first on the run's PYTHONPATH: every call written to a JSONL file
FAKE_WANDB = """
import json, os

class Run:
    id = "fake-run"

    def __init__(self, **settings):
        self.record({"init": sorted(settings)})

    def record(self, entry):
        with open(os.environ["FAKE_WANDB_CALLS"], "a") as f:
            f.write(json.dumps(entry) + "\\n")

    def log(self, row, step=None):
        self.record({"step": step, "row": row})

    def finish(self):
        self.record({"finish": True})

def init(**settings):
    return Run(**settings)
"""


def test_eval_tasks_are_scored_at_eval_steps_and_logged_to_wandb(tmp_path):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "wandb.py").write_text(FAKE_WANDB)
    calls = tmp_path / "wandb_calls.jsonl"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]),
           "FAKE_WANDB_CALLS": str(calls)}
    run_module("zer02llm.train", [*ARGS, "logger=wandb", "hydra.run.dir=run"], cwd=tmp_path, env=env)
    check(tmp_path / "run")
    # wandb got each evaluation's task figures under the metrics rows' keys (task/<name>/<metric>, task/core:
    # one "task" section of panels), at the evaluation's step, with the rows' values
    entries = [json.loads(line) for line in calls.read_text().splitlines()]
    assert "init" in entries[0] and entries[-1] == {"finish": True}
    logged = {e["step"]: e["row"] for e in entries if "row" in e and "task/core" in e["row"]}
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run") if "task/core" in r}
    assert sorted(logged) == sorted(rows) == [5, 10]
    for step, row in rows.items():
        assert {k: v for k, v in logged[step].items() if k.startswith("task/")} == \
            {k: v for k, v in row.items() if k.startswith("task/")}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k.startswith("task/")} == \
        {k: v for k, v in logged[10].items() if k.startswith("task/")}


def test_eval_tasks_with_a_sharded_model(tmp_path):
    run_module("torch.distributed.run", ["--standalone", "--nproc_per_node=2", "-m", "zer02llm.train", *ARGS,
                                         "train.batch_size=2", "distributed.strategy=fsdp", "hydra.run.dir=fsdp"],
               cwd=tmp_path)
    check(tmp_path / "fsdp")
