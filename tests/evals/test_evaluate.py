"""`python -m zer02llm.evaluate`: the table, the results JSON, and refusals in one line with exit status 2."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import randomize, run_module, write_jsonl
from zer02llm.checkpoint import export_model
from zer02llm.config import ModelConfig
from zer02llm.evals.runner import run_tasks
from zer02llm.evals.scorer import ModelScorer
from zer02llm.evals.tasks import load_all
from zer02llm.model import Transformer
from zer02llm.resources import shipped_path
from zer02llm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256)
    model = randomize(Transformer(cfg), seed=1).eval()
    directory = tmp_path_factory.mktemp("evaluate") / "model"
    export_model(directory, model, {"model": dataclasses.asdict(cfg), "mode": "pretrain"}, shipped_path("tokenizer"))
    return directory, model


def test_evaluate_prints_the_table_and_writes_what_the_library_computes(checkpoint, tmp_path):
    directory, model = checkpoint
    task = write_jsonl(tmp_path / "colours.jsonl", [
        {"context": "Grass is", "choices": ["green", "red", "blue"], "answer": 0},
        {"context": "Snow is", "choices": ["black", "white"], "answer": 1},
        {"context": "The sky is", "choices": ["blue", "brown"], "answer": 0}])
    proc = run_module("zer02llm.evaluate", [f"checkpoint={directory}", f"tasks={task}", "output=out/results.json"],
                      cwd=tmp_path)
    assert "| colours | multiple_choice | 3 | 0 |" in proc.stdout and "CORE" in proc.stdout
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    (expected,) = run_tasks(ModelScorer(model), Tokenizer.load(), load_all([str(task)]))
    got = written["tasks"]["colours"]
    assert got["metrics"] == pytest.approx(expected.metrics)
    # to float32 rounding: the subprocess and this process may split the matmuls over different thread counts
    for mine, theirs in zip(got["examples"], expected.examples, strict=True):
        assert mine["logprobs"] == pytest.approx(theirs["logprobs"], rel=1e-6, abs=1e-6)
    assert written["core"] == pytest.approx(expected.centered)


def test_the_sample_suite_runs_and_results_land_beside_a_loose_checkpoint(checkpoint, tmp_path):
    directory, _ = checkpoint
    proc = run_module("zer02llm.evaluate", [f"checkpoint={directory}", "tasks=sample", "limit=2"], cwd=tmp_path)
    for name in ("days", "months", "colours", "animals", "sums"):
        assert f"| {name} |" in proc.stdout
    assert set(json.loads((directory / "eval_results.json").read_text())["tasks"]) == \
        {"days", "months", "colours", "animals", "sums"}


@pytest.mark.parametrize("args, message", [
    (["tasks=sample"], "checkpoint=<dir> is required"),
    (["checkpoint=CKPT", "tasks=missing.jsonl"], "tasks=[missing.jsonl]: no such file"),
    (["checkpoint=CKPT", "limit=0"], "limit=0: must be > 0"),
    (["checkpoint=CKPT", "num_fewshot=-1"], "num_fewshot=-1: must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_status_2(checkpoint, tmp_path, args, message):
    args = [a.replace("CKPT", str(checkpoint[0])) for a in args]
    proc = run_module("zer02llm.evaluate", args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
