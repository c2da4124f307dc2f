"""scripts/bench_rollout.py: its baseline does the engine's work (greedy, the same completions), a small run
prints both tables and writes the JSON, a bad override is one clear line and exit 2. No timing limits."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from zer02llm.config import ModelConfig
from zer02llm.model import Transformer
from zer02llm.training.rollout import rollout

from conftest import randomize, load_script as load_script_named

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_rollout.py"


def load_script():
    return load_script_named("bench_rollout")


@torch.no_grad()
def test_the_baseline_decodes_what_the_engine_decodes_greedily():
    torch.manual_seed(0)
    model = randomize(Transformer(ModelConfig(vocab_size=64, dim=16, n_layers=2, n_heads=2, n_kv_heads=1,
                                              max_seq_len=64)).double())
    prompts = [[1, 5, 7], [2, 9], [4, 4, 6, 8, 10, 12], [7, 1, 2]]  # two of one length: decoded together
    eos = rollout(model, prompts[:1], 1, 3, 0.0, None, [0])[0][2]  # prompt 0's third greedy token ends it
    baseline = load_script().fixed_batch_rollout(model.eval(), prompts, 3, 12, 0.0, eos, [0] * 4,
                                                  contextlib.nullcontext)
    assert baseline == rollout(model, prompts, 3, 12, 0.0, eos, [0] * 4)
    assert len(baseline[0]) <= 3 and baseline[0][-1] == eos and any(len(row) == 12 for row in baseline)


def test_a_small_run_prints_both_tables_and_writes_json(tmp_path):
    overrides = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "mode.group_size=2",
                 "mode.max_new_tokens=4", "train.batch_size=2"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *overrides, "--rollouts", "1", "--steps", "1",
                           "--json", str(tmp_path / "bench.json")], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    for row in ("| fixed batch (before)", "| engine, kept (GRPO)", "| engine, new per rollout", "load average"):
        assert row in proc.stdout
    assert "generating share" in proc.stdout and "2 prompts x 2 completions" in proc.stdout
    result = json.loads((tmp_path / "bench.json").read_text())
    assert set(result["samplers"]) == {"fixed batch (before)", "engine, kept (GRPO)", "engine, new per rollout"}
    assert set(result["steps"]) == {"fixed batch (before)", "engine, kept (GRPO)"}
    assert all(0 < r["tokens_per_rollout"] <= 2 * 2 * 4 for r in result["samplers"].values())
    assert all(0 < r["rollout_share"] < 1 for r in result["steps"].values())


def test_a_bad_override_is_one_clear_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "mode.group_size=1"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "mode.group_size=1" in proc.stderr
