"""Smoke test of scripts/bench.py on a tiny shape: it runs, and its JSON has the figures. No timing limits."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from conftest import load_script as load_script_named

REPO_DIR = Path(__file__).resolve().parents[2]
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
        assert result["greedy_match"] is True  # the same weights, greedy: the same tokens as transformers
    else:
        assert "peer" not in result


def test_bench_no_peer_json_stdout() -> None:
    proc = run_bench("--no-peer", "--peak-tflops", "1.0", "--json", "-")
    result = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])  # the table comes first
    assert "peer" not in result and "ratio" not in result
    check_model_entry(result["ours"])
    assert result["peak_tflops"] == 1.0 and result["ours"]["train"]["mfu"] > 0


def test_contention_warning_suggests_one_thread_only_when_not_given() -> None:
    bench = load_bench()
    assert bench.contention_warning(0.05, 2) is None  # a quiet machine: nothing to say
    assert bench.contention_warning(None, 2) is None  # not Linux: unknown
    assert "or try --threads 1 (this run had 2)" in bench.contention_warning(0.4, 2)
    warning = bench.contention_warning(0.4, 1)
    assert "40% of the CPU time" in warning and "try --threads 1" not in warning


def load_bench():
    return load_script_named("bench")


def test_preset_takes_the_composed_shape_and_flags_override_it() -> None:
    from omegaconf import OmegaConf

    from conftest import compose

    bench = load_bench()
    for preset, model in (("16gb", "dense"), ("24gb", "moe"), ("40gb", "dense")):
        cfg = OmegaConf.to_object(compose([f"hardware={preset}", f"model={model}"]))
        args = bench.parse_args(["--preset", preset, *(["--moe"] if model == "moe" else [])])
        m = cfg.model
        assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.vocab_size) == \
            (m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.vocab_size)
        assert (args.seq_len, args.batch_size) == (cfg.data.seq_len, cfg.train.batch_size) and args.seq_len == 512
        if model == "moe":
            assert (args.num_experts, args.experts_per_token, args.num_shared_experts) == \
                (m.num_experts, m.experts_per_token, m.num_shared_experts)
    args = bench.parse_args(["--preset", "16gb", "--batch-size", "3", "--n-layers", "2"])
    assert (args.batch_size, args.n_layers, args.dim) == (3, 2, 512)  # flags win, the rest from the preset
    args = bench.parse_args([])
    assert (args.dim, args.n_layers, args.seq_len, args.batch_size, args.num_experts) == (256, 4, 256, 8, 4)


def test_compile_warmup_is_timed_apart_and_generation_can_be_skipped() -> None:
    # aot_eager: torch.compile's tracing of forward and backward without generating kernels (quick on a CPU)
    proc = run_bench("--compile", "--compile-backend", "aot_eager", "--no-peer", "--no-generate", "--json", "-")
    result = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    train = result["ours"]["train"]
    assert result["ours"]["generate"] is None and "generate tokens/s" not in proc.stdout
    assert result["args"]["compile"] and result["args"]["compile_backend"] == "aot_eager"
    assert train["warmup_s"] >= train["first_step_s"] > 0 and train["steps"] == 2
    assert "compiled (aot_eager)" in proc.stdout and "warm-up s (1 steps, compile)" in proc.stdout
    bad = subprocess.run([sys.executable, str(BENCH), *TINY, "--compile", "--warmup", "0"], capture_output=True,
                         text=True, cwd=REPO_DIR, timeout=120)
    assert bad.returncode == 2 and "--compile needs --warmup >= 1" in bad.stderr
