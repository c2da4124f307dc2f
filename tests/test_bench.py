"""Smoke test of scripts/bench.py on a tiny shape: it runs, and its JSON has the figures. No timing limits."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
BENCH = REPO_DIR / "scripts" / "bench.py"
TINY = ["--dim", "64", "--n-layers", "2", "--n-heads", "4", "--n-kv-heads", "2", "--seq-len", "32",
        "--batch-size", "2", "--steps", "2", "--warmup", "1", "--gen-tokens", "4", "--device", "cpu",
        "--threads", "1"]
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def run_bench(*extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH), *TINY, *extra], capture_output=True, text=True,
                          cwd=REPO_DIR, timeout=600)
    assert proc.returncode == 0, f"bench.py failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def check_model_entry(entry: dict) -> None:
    assert entry["params"] > 0
    train, gen = entry["train"], entry["generate"]
    assert {"tokens_per_s", "ms_per_step", "ms_per_step_median", "mfu", "peak_mem_mb", "mem_method",
            "loss_first"} <= train.keys()
    assert train["tokens_per_s"] > 0 and train["ms_per_step"] > 0 and train["peak_mem_mb"] > 0
    assert train["steps"] == 2 and train["warmup"] == 1
    assert gen["tokens_per_s"] > 0 and gen["new_tokens"] == 4 and len(gen["tokens"]) == 4


def test_bench_json_file(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_bench("--json", str(out))
    assert "train tokens/s" in proc.stdout and "6*N_matmul + 12*n_layers*dim*seq_len" in proc.stdout
    result = json.loads(out.read_text())
    assert {"machine", "args", "formula", "flops_per_token", "peak_tflops", "ours"} <= result.keys()
    assert {"torch", "device", "device_name", "cpu_count", "threads", "dtype"} <= result["machine"].keys()
    assert result["machine"]["threads"] == 1 and result["machine"]["dtype"] == "float32"
    assert result["flops_per_token"] > 0
    check_model_entry(result["ours"])
    assert result["ours"]["train"]["mfu"] is None  # CPU without --peak-tflops: n/a
    if HAS_TRANSFORMERS:
        peer = result["peer"]
        check_model_entry(peer)
        assert peer["params"] == result["ours"]["params"]  # same architecture, so a fair comparison
        # same initial weights and batch: same loss (up to float32 summation order)
        assert abs(peer["train"]["loss_first"] - result["ours"]["train"]["loss_first"]) < 1e-3
        assert result["ratio"]["train"] > 0 and result["ratio"]["generate"] > 0
        assert isinstance(result["greedy_match"], bool)
    else:
        assert "peer" not in result


def test_bench_no_peer_json_stdout() -> None:
    proc = run_bench("--no-peer", "--peak-tflops", "1.0", "--json", "-")
    result = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])  # the table comes first
    assert "peer" not in result and "ratio" not in result
    check_model_entry(result["ours"])
    assert result["peak_tflops"] == 1.0 and result["ours"]["train"]["mfu"] > 0
