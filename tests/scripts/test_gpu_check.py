"""scripts/gpu_check.sh (with scripts/gpu_report.py): the CPU smoke run end to end, as CI runs it, and the
report's pieces on made-up GPU figures, since its GPU branches cannot run on a machine without one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script as load_script_named

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None  # not in the README's install (.[dev])
GPU_TESTS = {"test_bf16_training_steps_agree_with_float32", "test_float16_grad_scaler_trains_and_skips_an_inf_step",
             "test_compiled_training_matches_eager", "test_grouped_mm_expert_mlp_matches_per_expert_loop_on_cuda",
             "test_grouped_mm_moe_model_matches_per_expert_loop_on_cuda",
             "test_kv_cache_generation_matches_recomputation_on_cuda", "test_preset_training_step_fits_its_card",
             "test_flex_matches_math_logits_and_gradients_on_cuda"}


def report_module():
    return load_script_named("gpu_report")


def run_check(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    if "GPU_CHECK_START" not in (env or {}):  # the budget counts from the script's own start
        full_env.pop("GPU_CHECK_START", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_cpu_smoke_writes_json_and_markdown_reports(tmp_path):
    out = tmp_path / "out"
    proc = run_check("--cpu-smoke", "--out", str(out))
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads((out / "report.json").read_text())
    assert {"mode", "started", "seconds", "budget_s", "ok", "machine", "formula", "peaks", "tests", "bench",
            "notes"} <= report.keys()
    assert report["mode"] == "cpu-smoke" and report["ok"] is True
    assert report["seconds"] < report["budget_s"]
    assert report["peaks"]["datasheet_tflops"] is None and report["peaks"]["measured_tflops"] > 0

    # pytest -m gpu ran; every GPU test was collected and skipped because there is no GPU (none for a missing
    # optional package: test modules skip per test, so `-m gpu` deselects the rest)
    tests = report["tests"]
    assert tests["returncode"] == 0 and not tests["timed_out"]
    assert {case["outcome"] for case in tests["cases"]} == {"skipped"}
    assert all(case["message"] == "needs CUDA" for case in tests["cases"])
    assert {case["name"].split("::")[-1].split("[")[0] for case in tests["cases"]} >= GPU_TESTS

    runs = {run["name"]: run for run in report["bench"]}
    assert list(runs) == ["tiny-dense-eager", "tiny-moe-eager", "tiny-dense-compiled", "tiny-moe-compiled"]
    for run in runs.values():
        assert run["status"] == "ok", run
        assert (out / run["result_file"]).exists()
        ours = run["train"]["ours"]
        assert ours["tokens_per_s"] > 0 and ours["ms_per_step_median"] > 0 and ours["peak_mem_mb"] > 0
        assert ours["mfu"] is None and ours["mfu_measured"] > 0  # no datasheet peak for a CPU
        assert ours["warmup_s"] > 0 and run["flops_per_token"] > 0
    for name in ("tiny-dense-eager", "tiny-dense-compiled"):  # the transformers peer in the same run, if installed
        if HAS_TRANSFORMERS:
            assert runs[name]["train"]["peer"]["tokens_per_s"] > 0 and runs[name]["train"]["ratio"] > 0
        else:
            assert "peer" not in runs[name]["train"]
    assert "peer" not in runs["tiny-moe-eager"]["train"]
    for name in ("tiny-dense-compiled", "tiny-moe-compiled"):
        assert {"--compile", "--no-generate", "aot_eager"} <= set(runs[name]["argv"]) and runs[name]["generate"] is None
    generation = runs["tiny-dense-eager"]["generate"]
    assert generation["ours"]["tokens_per_s"] > 0 and generation["ours"]["new_tokens"] == 4
    if HAS_TRANSFORMERS:  # the same weights, greedy: the same tokens as transformers
        assert generation["peer"]["tokens_per_s"] > 0 and generation["greedy_match"] is True
    assert runs["tiny-moe-eager"]["active_params"] < runs["tiny-moe-eager"]["params"]

    markdown = (out / "report.md").read_text()
    for text in ("# zer02llm GPU check (CPU smoke)", "## Summary", "## MFU: formula and peaks", report["formula"],
                 "## GPU tests (`pytest -m gpu`)", "needs CUDA", "## Training throughput", "## Batch-1 generation",
                 "tokens/s", "MFU datasheet", "MFU measured", "peak mem MB", "ours/peer", "warm-up s", "aot_eager",
                 "Skipped because they need CUDA", "**PASS**", *runs):
        assert text in markdown, text
    assert markdown in proc.stdout  # the report ends the command's output too
    for name in ("gpu_check.log", "pytest.log", "pytest.xml", "bench/tiny-dense-eager.log"):
        assert (out / name).exists(), name


def test_usage_errors_exit_2():
    proc = run_check("--bogus")
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr and "--cpu-smoke" in proc.stderr
    proc = run_check("--out")
    assert proc.returncode == 2 and "--out needs a directory" in proc.stderr
    assert run_check("--help").returncode == 0


def test_missing_hydra_without_wheels_names_the_fix(tmp_path):
    """A CUDA machine without hydra: without wheels to install, a clear message instead of a traceback."""
    (tmp_path / "hydra.py").write_text("raise ImportError('not on this machine')\n")
    proc = run_check("--cpu-smoke", env={"PYTHONPATH": str(tmp_path), "WHEEL_DIR": str(tmp_path / "none")})
    assert proc.returncode == 2
    assert "hydra-core is not importable" in proc.stderr and "--fetch-wheels" in proc.stderr


def test_planned_runs_cover_each_gpu_preset_eager_and_compiled_dense_and_moe(tmp_path):
    gpu_report = report_module()
    runs = gpu_report.planned_runs(gpu_report.parse_args(["--out", str(tmp_path)]))
    # the first preset eager and compiled, then the others eager, then their compiled runs
    order = [("16gb", "eager"), ("16gb", "compiled"), ("24gb", "eager"), ("40gb", "eager"), ("24gb", "compiled"),
             ("40gb", "compiled")]
    assert [r["name"] for r in runs] == [f"{p}-{m}-{c}" for p, c in order for m in ("dense", "moe")]
    for run in runs:
        argv = run["argv"]
        assert argv[:2] == ["--preset", run["preset"]] and {"--device", "cuda", "bfloat16"} <= set(argv)
        assert ("--moe" in argv) == (run["model"] == "moe")
        assert ("--compile" in argv) == ("--no-generate" in argv) == run["compiled"]
        assert "--compile-backend" not in argv  # inductor on the GPU
    only = gpu_report.planned_runs(gpu_report.parse_args(["--out", str(tmp_path), "--presets", "40gb",
                                                          "--only", "40gb-moe-compiled"]))
    assert [r["name"] for r in only] == ["40gb-moe-compiled"]
    with pytest.raises(SystemExit):
        gpu_report.parse_args(["--out", str(tmp_path), "--presets", "80gb"])


def test_a_run_that_no_longer_fits_the_budget_is_skipped_not_started(tmp_path):
    gpu_report = report_module()
    run = gpu_report.planned_runs(gpu_report.parse_args(["--out", str(tmp_path)]))[-1]  # 40gb-moe-compiled
    clock = gpu_report.Clock(budget_s=60)  # less than a cold compiled run's estimate
    gpu_report.run_bench(run, tmp_path, clock, {}, "gpu")
    assert run["status"] == "skipped" and "time budget" in run["reason"] and "seconds" not in run
    assert not (tmp_path / "bench").exists()


def test_junit_outcomes_are_read(tmp_path):
    xml = tmp_path / "pytest.xml"
    xml.write_text("""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_gpu" name="test_a" time="1.5"/>
<testcase classname="tests.test_gpu" name="test_b[16gb]" time="0.2"><failure message="assert 17.1 &lt; 16">tb</failure></testcase>
<testcase classname="tests.test_gpu" name="test_c" time="0"><skipped type="pytest.skip" message="needs CUDA">x</skipped></testcase>
<testcase classname="" name="tests.test_x" time="0"><error message="collection failure">ImportError</error></testcase>
</testsuite></testsuites>""")
    cases = report_module().parse_junit(xml)
    assert [(c["name"], c["outcome"], c["message"]) for c in cases] == [
        ("test_gpu::test_a", "passed", ""), ("test_gpu::test_b[16gb]", "failed", "assert 17.1 < 16"),
        ("test_gpu::test_c", "skipped", "needs CUDA"), ("::tests.test_x", "error", "collection failure")]


def fake_bench_json(moe: bool, compiled: bool) -> dict:
    """What bench.py writes on an H200, with made-up figures."""
    train = {"tokens_per_s": 1.5e6, "ms_per_step_median": 5.4, "mfu": 0.31, "peak_mem_mb": 5300.0,
             "warmup_s": 41.0 if compiled else 0.9, "first_step_s": 40.0 if compiled else 0.5, "loss_first": 8.77}
    generate = None if compiled else {"tokens_per_s": 650.0, "ms_per_token": 1.54, "new_tokens": 64,
                                      "prompt_tokens": 16, "tokens": [1] * 64}
    result = {"args": {"dim": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 2, "seq_len": 512, "batch_size": 16,
                       "vocab_size": 6400},
              "machine": {"dtype": "bfloat16"}, "flops_per_token": 205_000_000, "peak_tflops": 989.0,
              "peak_source": "table: H200, dense bf16",
              "ours": {"params": 60_000_000 if moe else 26_000_000, "active_params": 40_000_000 if moe else 26_000_000,
                       "train": dict(train), "generate": generate}}
    if not moe:
        result["peer"] = {"params": 26_000_000, "train": {**train, "tokens_per_s": 1.2e6}, "transformers": "5.2.0",
                          "generate": None if compiled else {**generate, "tokens_per_s": 100.0}}
        result["ratio"] = {"train": 1.25, **({} if compiled else {"generate": 6.5})}
        if not compiled:
            result["greedy_match"] = True
    return result


def test_gpu_report_markdown_from_made_up_gpu_figures():
    """The GPU branches of the report (datasheet MFU, preset memory, compile figures, skipped runs)."""
    gpu_report = report_module()
    runs = []
    for moe, compiled in ((False, False), (True, False), (False, True)):
        name = f"16gb-{'moe' if moe else 'dense'}-{'compiled' if compiled else 'eager'}"
        runs.append({"name": name, "preset": "16gb", "model": "moe" if moe else "dense", "compiled": compiled,
                     "status": "ok", **gpu_report.summarize_bench(fake_bench_json(moe, compiled))})
    runs.append({"name": "40gb-moe-compiled", "preset": "40gb", "model": "moe", "compiled": True, "status": "skipped",
                 "reason": "time budget: ~90 s needed, 12 s left of --budget-s 450"})
    gpu_report.add_measured_mfu(runs, 780.0)
    assert runs[0]["train"]["ours"]["mfu_measured"] == pytest.approx(1.5e6 * 205e6 / 780e12)
    figures = [{"check": "preset_memory", "preset": "16gb", "model": "dense", "limit_gib": 16, "peak_allocated_gib": 3.2,
                "peak_reserved_gib": 3.9, "params": 26_000_000, "batch_size": 16, "grad_accum": 16, "seq_len": 512,
                "seconds_per_step": 0.4, "loss": 8.7},
               {"check": "compile", "first_step_s_compiled": 38.5, "first_step_s_eager": 0.6}]
    report = {"mode": "gpu", "started": "2026-12-02T10:00:00+00:00", "seconds": 441.0, "budget_s": 450.0, "ok": True,
              "machine": {"device_name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8, "torch": "2.11.0",
                          "cuda": "13.0", "python": "3.12.3", "transformers": "5.2.0", "hydra": "1.3.8"},
              "formula": gpu_report.FORMULA,
              "peaks": {"datasheet_tflops": 989.0, "datasheet_source": "table: H200, dense bf16",
                        "measured_tflops": 780.0, "measured_how": "bfloat16 8192x8192 @ 8192x8192 matmul, mean of 20"},
              "tests": {"returncode": 0, "timed_out": False, "seconds": 150.0, "counts": {"passed": 1},
                        "cases": [{"name": "test_gpu::test_a", "outcome": "passed", "seconds": 1.0, "message": ""}],
                        "figures": figures},
              "bench": runs, "notes": []}
    markdown = gpu_report.render_markdown(report)
    for text in ("# zer02llm GPU check\n", "NVIDIA H200 (sm 9.0, 139.8 GiB)", "989 TFLOP/s (table: H200, dense bf16)",
                 "780 TFLOP/s (bfloat16 8192x8192", "| 16gb | dense | 26.0M | 16 x 16 | 3.20 | 3.90 | 16 | 0.40 |",
                 "compile: first_step_s_compiled 38.5", "| 16gb-dense-eager | 512 x 8, 16 x 512 | 26.0M | 1,500,000 |",
                 "31.0%", "39.4%", "1.25x", "| 16gb-dense-eager | 16 + 64 | 650 | 1.54 | 100 | 6.50x | yes |",
                 "60.0M (40.0M)", "40gb-moe-compiled: skipped: time budget",
                 "--skip-tests --only 40gb-moe-compiled", "**PASS**"):
        assert text in markdown, text
    assert "CPU smoke" not in markdown
