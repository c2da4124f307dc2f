#!/usr/bin/env python3
"""The Python half of scripts/gpu_check.sh (run that; it sets up the environment first).

On a machine with one CUDA GPU: `pytest -m gpu`, then scripts/bench.py at each GPU preset (eager and
compiled, dense and MoE, the transformers Llama peer beside the dense model; batch-1 generation in the
eager runs), then report.json and report.md in --out. With --cpu-smoke the same steps run at a tiny
shape on the CPU (the GPU tests skip, compiled runs use the aot_eager backend) so CI proves the plumbing.

Each benchmark runs in its own process, so a CUDA error, an out-of-memory or a hung compile costs that
run only, and the whole check keeps to --budget-s: a run whose estimated time no longer fits is skipped
and listed as skipped, and a running one is stopped at the deadline.

MFU = tokens/s * flops_per_token / peak; flops_per_token = 6*N_matmul + 12*n_layers*dim*seq_len (bench.py).
Two peaks: the datasheet's dense bf16 tensor-core figure (bench.py's table: 989 TFLOP/s for H100 SXM and
H200) and the bf16 8192^3 matmul this script measures on the machine (~780 TFLOP/s on an H200), the
practical ceiling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench.py"
FORMULA = "flops_per_token = 6*N_matmul + 12*n_layers*dim*seq_len; MFU = tokens/s * flops_per_token / peak"
GPU_PRESETS = ("16gb", "24gb", "40gb")
# a few timed steps after the warm-up (which holds the compile); generation: batch 1, 16-token prompt
GPU_BENCH = ["--device", "cuda", "--dtype", "bfloat16", "--steps", "10", "--warmup", "3", "--gen-tokens", "64"]
SMOKE_BENCH = ["--device", "cpu", "--threads", "1", "--dim", "64", "--n-layers", "2", "--n-heads", "4",
               "--n-kv-heads", "2", "--seq-len", "32", "--batch-size", "2", "--steps", "2", "--warmup", "1",
               "--gen-tokens", "4"]
SMOKE_SHAPE = "dim 64, 2 layers, seq 32, batch 2 (the hardware=cpu preset, its shape overridden)"
# guesses of a run's seconds, by (mode, compiled, model), until one of its kind has run (then the longest
# seen counts); a fresh GPU machine compiles each distinct shape in 30-90 s, and a dense compiled run
# compiles two models (ours and the peer)
COLD_ESTIMATE_S = {("gpu", False, "dense"): 30, ("gpu", False, "moe"): 15, ("gpu", True, "dense"): 150,
                   ("gpu", True, "moe"): 90}
SMOKE_ESTIMATE_S = 30
REPORT_RESERVE_S = 10  # kept free at the end for writing the report


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="directory for report.json, report.md and the logs")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU; CUDA-only parts skipped")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock budget of the whole check, counted from $GPU_CHECK_START (set by gpu_check.sh) "
                        "or this script's start; default 450 on a GPU (under 8 minutes), 240 for --cpu-smoke")
    p.add_argument("--presets", default=",".join(GPU_PRESETS), help="GPU presets to benchmark, comma-separated")
    p.add_argument("--skip-tests", action="store_true", help="skip pytest -m gpu (e.g. a rerun for the benchmarks)")
    p.add_argument("--only", default="", help="run only these benchmark runs (names as in the report, comma-separated, "
                                              "e.g. 24gb-dense-compiled,40gb-moe-compiled)")
    args = p.parse_args(argv)
    args.only = [x for x in args.only.split(",") if x]
    args.presets = [x for x in args.presets.split(",") if x]
    unknown = sorted(set(args.presets) - set(GPU_PRESETS))
    if not args.presets:
        p.error(f"--presets: name at least one of {', '.join(GPU_PRESETS)}")
    if unknown:
        p.error(f"--presets: unknown {', '.join(unknown)}; choose among {', '.join(GPU_PRESETS)}")
    if args.budget_s is None:
        args.budget_s = 240.0 if args.cpu_smoke else 450.0
    return args


class Clock:
    """Seconds since the check started, against its budget."""

    def __init__(self, budget_s: float):
        self.start = float(os.environ.get("GPU_CHECK_START", time.time()))
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.budget_s - REPORT_RESERVE_S - self.elapsed()


# --- machine ------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "cpu_count": os.cpu_count()}
    for name in ("hydra", "omegaconf", "transformers", "triton"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), device_count=torch.cuda.device_count())
    else:
        info["device_name"] = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    info["device_name"] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return info


def measure_matmul_tflops(cuda: bool) -> dict[str, Any]:
    """The practical ceiling MFU can be held against: a large bf16 matmul on the GPU (float32 on the CPU)."""
    import torch

    n, dtype, reps = (8192, torch.bfloat16, 20) if cuda else (512, torch.float32, 5)
    device = "cuda" if cuda else "cpu"
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    seconds = time.perf_counter() - start
    del a, b
    if cuda:
        torch.cuda.empty_cache()
    return {"tflops": 2 * n**3 * reps / seconds / 1e12,
            "how": f"{str(dtype).removeprefix('torch.')} {n}x{n} @ {n}x{n} matmul, mean of {reps}"}


# --- pytest -m gpu ------------------------------------------------------------------------------

def run_tests(out: Path, clock: Clock, smoke: bool) -> dict[str, Any]:
    # -s: the tests print their figures (peak memory per preset, compile time) as they go
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-s", "-p", "no:cacheprovider", "--continue-on-collection-errors",
           "-ra", f"--junitxml={out / 'pytest.xml'}"]
    figures = out / "gpu_figures.jsonl"
    figures.unlink(missing_ok=True)
    env = {**os.environ, "ZER02LLM_GPU_FIGURES": str(figures)}
    timeout = max(30.0, min(clock.left() - 60, 60.0 if smoke else 270.0))  # leave time for the benchmarks
    print(f"\n=== pytest -m gpu (timeout {timeout:.0f} s) ===", flush=True)
    result: dict[str, Any] = {"command": " ".join(["python", *cmd[1:]]).replace(str(out), "$OUT_DIR")}
    result["returncode"], result["seconds"] = run_logged(cmd, out / "pytest.log", timeout, env)
    result["timed_out"] = result["returncode"] is None
    print(tail(out / "pytest.log", 40), flush=True)
    result["cases"] = parse_junit(out / "pytest.xml")
    counts: dict[str, int] = {}
    for case in result["cases"]:
        counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
    result["counts"] = counts
    result["figures"] = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    return result


def run_logged(cmd: list[str], log_path: Path, timeout: float, env: Optional[dict[str, str]] = None
               ) -> tuple[Optional[int], float]:
    """Run cmd with stdout and stderr into log_path; (exit status or None when stopped at timeout, seconds).
    The child leads its own process group, so a stop also ends what it started (compile workers)."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode: Optional[int] = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
    return returncode, time.perf_counter() - start


def tail(path: Path, n: int) -> str:
    return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-n:])


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """One entry per test case of pytest's JUnit XML: passed, failed, error or skipped, with the message."""
    if not path.exists():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (found.get("message") or found.text or "").strip()
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}".removeprefix("tests.")
        cases.append({"name": name, "outcome": outcome, "seconds": float(case.get("time") or 0),
                      "message": message.splitlines()[0][:300] if message else ""})
    return cases


# --- the benchmark runs -------------------------------------------------------------------------

def planned_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """In the order they run, which is what a short budget keeps: the first preset eager and compiled
    (a full picture at one size), then the other presets eager (cheap; they also time generation), then
    their compiled runs (a fresh machine spends 30-90 s compiling each distinct shape)."""
    presets = ["cpu"] if args.cpu_smoke else args.presets
    order = [(presets[0], False), (presets[0], True), *((p, False) for p in presets[1:]),
             *((p, True) for p in presets[1:])]
    base = SMOKE_BENCH if args.cpu_smoke else GPU_BENCH
    runs = []
    for preset, compiled in order:
        for model in ("dense", "moe"):
            argv = ["--preset", preset, *base]
            if model == "moe":
                argv.append("--moe")  # bench.py then skips the peer: LlamaForCausalLM has no experts
            if compiled:
                argv += ["--compile", "--no-generate"]  # generation runs eager: the eager run has it
                if args.cpu_smoke:
                    argv += ["--compile-backend", "aot_eager"]
            label = "tiny" if args.cpu_smoke else preset
            runs.append({"name": f"{label}-{model}-{'compiled' if compiled else 'eager'}", "preset": label,
                         "model": model, "compiled": compiled, "argv": argv})
    if args.only:
        unknown = sorted(set(args.only) - {r["name"] for r in runs})
        if unknown:
            sys.exit(f"--only: no run named {', '.join(unknown)}; the runs: {', '.join(r['name'] for r in runs)}")
        runs = [r for r in runs if r["name"] in args.only]
    return runs


def run_bench(run: dict[str, Any], out: Path, clock: Clock, seen: dict[tuple, float], mode: str) -> None:
    """Run one benchmark configuration in its own process; fills run["status"] and its figures."""
    key = (mode, run["compiled"], run["model"])
    estimate = seen.get(key, COLD_ESTIMATE_S.get(key, SMOKE_ESTIMATE_S))
    left = clock.left()
    if estimate > left:
        run.update(status="skipped", reason=f"time budget: ~{estimate:.0f} s needed, {max(0, left):.0f} s left "
                                             f"of --budget-s {clock.budget_s:.0f}")
        print(f"\n=== {run['name']}: skipped ({run['reason']}) ===", flush=True)
        return
    bench_dir = out / "bench"
    bench_dir.mkdir(exist_ok=True)
    json_path = bench_dir / f"{run['name']}.json"
    cmd = [sys.executable, str(BENCH), *run["argv"], "--json", str(json_path)]
    run["command"] = " ".join(["python scripts/bench.py", *run["argv"]])
    print(f"\n=== {run['name']}: {run['command']} ===", flush=True)
    log_path = bench_dir / f"{run['name']}.log"
    run["returncode"], run["seconds"] = run_logged(cmd, log_path, left)
    print(tail(log_path, 30), flush=True)
    seen[key] = max(seen.get(key, 0.0), run["seconds"])
    if run["returncode"] is None:
        run.update(status="timeout", reason=f"stopped at the budget's deadline after {run['seconds']:.0f} s")
    elif run["returncode"] != 0 or not json_path.exists():
        last = tail(log_path, 3).replace("\n", " | ")
        run.update(status="error", reason=f"exit status {run['returncode']}: {last[-400:]}")
    else:
        run["status"] = "ok"
        run["result_file"] = str(json_path.relative_to(out))
        run.update(summarize_bench(json.loads(json_path.read_text())))
    if run["status"] != "ok":
        print(f"--- {run['name']}: {run['status']}: {run['reason']}", flush=True)


def summarize_bench(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the report shows, from bench.py's JSON."""
    ours, peer = result["ours"], result.get("peer")
    args = result["args"]
    summary: dict[str, Any] = {
        "shape": {k: args[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "seq_len", "batch_size", "vocab_size")},
        "params": ours["params"], "active_params": ours["active_params"], "flops_per_token": result["flops_per_token"],
        "dtype": result["machine"]["dtype"], "datasheet_tflops": result["peak_tflops"],
        "datasheet_source": result["peak_source"], "train": {}, "generate": None}
    for who, entry in (("ours", ours), ("peer", peer)):
        if entry is None:
            continue
        t = entry["train"]
        summary["train"][who] = {k: t.get(k) for k in ("tokens_per_s", "ms_per_step_median", "mfu", "peak_mem_mb",
                                                       "warmup_s", "first_step_s", "loss_first")}
    if "ratio" in result:
        summary["train"]["ratio"] = result["ratio"].get("train")
    if ours.get("generate"):
        g = {"ours": {k: ours["generate"][k] for k in ("tokens_per_s", "ms_per_token", "new_tokens", "prompt_tokens")}}
        if peer and peer.get("generate"):
            g["peer"] = {k: peer["generate"][k] for k in ("tokens_per_s", "ms_per_token")}
            g["ratio"] = result["ratio"].get("generate")
            g["greedy_match"] = result.get("greedy_match")
        summary["generate"] = g
    if peer:
        summary["peer_transformers"] = peer.get("transformers")
    return summary


def add_measured_mfu(runs: list[dict[str, Any]], measured_tflops: Optional[float]) -> None:
    for run in runs:
        for entry in run.get("train", {}).values():
            if isinstance(entry, dict):
                entry["mfu_measured"] = (entry["tokens_per_s"] * run["flops_per_token"] / (measured_tflops * 1e12)
                                         if measured_tflops else None)


# --- the report ---------------------------------------------------------------------------------

def smoke_notes() -> list[str]:
    return [
        "CPU smoke: the same steps as on a GPU, at a tiny shape on the CPU, to prove the script works; "
        "no figure here says anything about GPU speed.",
        "Skipped because they need CUDA: every `pytest -m gpu` test (they ran and skipped: needs CUDA), the GPU "
        f"presets {', '.join(GPU_PRESETS)} (a tiny shape stands in: {SMOKE_SHAPE}), bf16 autocast (float32 here), "
        "inductor kernels (compiled runs use torch.compile's aot_eager backend: traced forward and backward, no "
        "generated kernels), and MFU against a datasheet peak (n/a on a CPU).",
        "MFU (measured) divides by this CPU's float32 512^3 matmul rate; memory is the process's peak RSS.",
    ]


def fmt(value: Any, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def render_markdown(report: dict[str, Any]) -> str:
    m, peaks = report["machine"], report["peaks"]
    smoke = report["mode"] == "cpu-smoke"
    device = m["device_name"]
    if m.get("capability"):
        device += f" (sm {m['capability']}, {m['memory_gib']} GiB)"
    lines = [f"# zer02llm GPU check{' (CPU smoke)' if smoke else ''}", "",
             f"{report['started']}, {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget; {device}; "
             f"torch {m['torch']} (CUDA {m['cuda'] or 'none'}), Python {m['python']}, transformers "
             f"{m.get('transformers') or 'missing'}, hydra {m.get('hydra') or 'missing'}.", ""]
    lines += [f"- {note}" for note in report["notes"]] + ([""] if report["notes"] else [])

    lines += ["## Summary", ""]
    tests = report.get("tests")
    if tests:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(tests["counts"].items())) or "no test cases reported"
        extra = " (timed out)" if tests.get("timed_out") else ""
        lines.append(f"- `pytest -m gpu`: {counts}, exit status {tests['returncode']}{extra}, {tests['seconds']:.0f} s")
    else:
        lines.append("- `pytest -m gpu`: not run (--skip-tests)")
    by_status: dict[str, list[str]] = {}
    for run in report["bench"]:
        by_status.setdefault(run["status"], []).append(run["name"])
    lines.append("- benchmark runs: " + "; ".join(f"{len(v)} {k}" + (f" ({', '.join(v)})" if k != "ok" else "")
                                                for k, v in by_status.items()))
    lines.append(f"- result: **{'PASS' if report['ok'] else 'FAIL'}**")
    lines += ["", "## MFU: formula and peaks", "", f"`{FORMULA}`", "",
              "N_matmul: non-embedding parameters plus the tied LM head (for MoE the active ones per token); the "
              "second term is attention's QK^T and AV.", "",
              f"- datasheet: {fmt(peaks['datasheet_tflops'], '.0f')} TFLOP/s ({peaks['datasheet_source']}): "
              f"the `MFU datasheet` columns" if peaks["datasheet_tflops"] else
              f"- datasheet: none for this device ({peaks['datasheet_source']}): the `MFU datasheet` columns are n/a",
              f"- measured on this machine: {fmt(peaks['measured_tflops'], '.4g')} TFLOP/s ({peaks['measured_how']}): "
              f"the `MFU measured` columns",
              ""]

    if tests:
        lines += ["## GPU tests (`pytest -m gpu`)", "", "| test | outcome | s | message |", "|---|---|---:|---|"]
        for case in tests["cases"]:
            lines.append(f"| `{case['name']}` | {case['outcome']} | {case['seconds']:.1f} | "
                         f"{case['message'].replace('|', '/')} |")
        memory = [f for f in tests["figures"] if f.get("check") == "preset_memory"]
        if memory:
            lines += ["", "Peak training memory per preset (torch.cuda.max_memory_allocated over two optimizer "
                          "steps, bf16, seq 512, the preset's batch and accumulation):", "",
                      "| preset | model | params | batch x accum | peak allocated GiB | peak reserved GiB | limit GiB | s/step |",
                      "|---|---|---:|---|---:|---:|---:|---:|"]
            for f in memory:
                lines.append(f"| {f['preset']} | {f['model']} | {f['params'] / 1e6:.1f}M | {f['batch_size']} x "
                             f"{f['grad_accum']} | {f['peak_allocated_gib']:.2f} | {f['peak_reserved_gib']:.2f} | "
                             f"{f['limit_gib']} | {f['seconds_per_step']:.2f} |")
        others = [f for f in tests["figures"] if f.get("check") != "preset_memory"]
        if others:
            lines += ["", "Other figures from the tests:", ""]
            for f in others:
                values = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in f.items() if k != "check")
                lines.append(f"- {f['check']}: {values}")
        lines.append("")

    ok_runs = [r for r in report["bench"] if r["status"] == "ok"]
    lines += ["## Training throughput (scripts/bench.py)", "",
              "Random tokens; one step = forward, loss, backward, clip, AdamW. Warm-up steps (the compile among "
              "them) are not timed; their seconds are the `warm-up s` column.", "",
              "| run | shape (dim x layers, batch x seq) | params (active) | tokens/s | ms/step | MFU datasheet | "
              "MFU measured | peak mem MB | warm-up s | peer tokens/s | ours/peer |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in ok_runs:
        s, ours, peer = run["shape"], run["train"]["ours"], run["train"].get("peer")
        active = f" ({run['active_params'] / 1e6:.1f}M)" if run["active_params"] != run["params"] else ""
        lines.append(
            f"| {run['name']} | {s['dim']} x {s['n_layers']}, {s['batch_size']} x {s['seq_len']} | "
            f"{run['params'] / 1e6:.1f}M{active} | {ours['tokens_per_s']:,.0f} | {ours['ms_per_step_median']:.1f} | "
            f"{fmt(ours['mfu'], '.1%')} | {fmt(ours['mfu_measured'], '.1%')} | {ours['peak_mem_mb']:,.0f} | "
            f"{ours['warmup_s']:.1f} | {fmt(peer and peer['tokens_per_s'], ',.0f', '-')} | "
            f"{fmt(run['train'].get('ratio'), '.2f', '-')}{'x' if run['train'].get('ratio') else ''} |")
    peers = [r for r in ok_runs if r["train"].get("peer")]
    if peers:
        lines += ["", "The peer (transformers LlamaForCausalLM, sdpa attention, same shape and initial weights), "
                      "per dense run: MFU datasheet / measured, peak mem MB, warm-up s:", ""]
        for run in peers:
            p = run["train"]["peer"]
            lines.append(f"- {run['name']} (transformers {run.get('peer_transformers')}): {fmt(p['mfu'], '.1%')} / "
                         f"{fmt(p['mfu_measured'], '.1%')}, {p['peak_mem_mb']:,.0f} MB, {p['warmup_s']:.1f} s")

    gens = [r for r in ok_runs if r.get("generate")]
    lines += ["", "## Batch-1 generation (greedy, KV cache, eager)", ""]
    if gens:
        lines += ["| run | prompt + new tokens | tokens/s | ms/token | peer tokens/s | ours/peer | greedy tokens match peer |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for run in gens:
            g = run["generate"]
            match = {True: "yes", False: "no", None: "-"}[g.get("greedy_match")]
            lines.append(f"| {run['name']} | {g['ours']['prompt_tokens']} + {g['ours']['new_tokens']} | "
                         f"{g['ours']['tokens_per_s']:,.0f} | {g['ours']['ms_per_token']:.2f} | "
                         f"{fmt(g.get('peer') and g['peer']['tokens_per_s'], ',.0f', '-')} | "
                         f"{fmt(g.get('ratio'), '.2f', '-')}{'x' if g.get('ratio') else ''} | {match} |")
    else:
        lines.append("No generation figures (no eager run finished).")

    not_ok = [r for r in report["bench"] if r["status"] != "ok"]
    if not_ok:
        lines += ["", "## Runs not done", ""]
        lines += [f"- {r['name']}: {r['status']}: {r['reason']}" for r in not_ok]
        lines += ["", "To run just these: `bash scripts/gpu_check.sh --skip-tests --only "
                      f"{','.join(r['name'] for r in not_ok)}`" + (" --cpu-smoke" if smoke else "")]
    lines += ["", "Files: report.json (everything above), pytest.log / pytest.xml, bench/<run>.json and .log, "
                  "gpu_check.log.", ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    machine = machine_info()
    if not args.cpu_smoke and not machine["cuda_available"]:
        print("error: torch.cuda.is_available() is False on this machine: run on a GPU machine, or use --cpu-smoke",
              file=sys.stderr)
        return 2
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"zer02llm GPU check ({mode}), budget {args.budget_s:.0f} s, report in {args.out}", flush=True)
    print(json.dumps(machine), flush=True)
    probe = measure_matmul_tflops(cuda=not args.cpu_smoke)
    print(f"matmul ceiling: {probe['tflops']:,.1f} TFLOP/s ({probe['how']})", flush=True)

    tests = None if args.skip_tests else run_tests(args.out, clock, args.cpu_smoke)
    runs = planned_runs(args)
    seen: dict[tuple, float] = {}
    for run in runs:
        run_bench(run, args.out, clock, seen, mode)
    add_measured_mfu(runs, probe["tflops"])

    datasheet = next((r for r in runs if r.get("datasheet_tflops")), None)
    tests_ok = tests is None or (tests["returncode"] == 0 and not tests.get("timed_out")
                                 and not {"failed", "error"} & set(tests["counts"]))
    bench_ok = all(r["status"] in ("ok", "skipped") for r in runs)
    if args.cpu_smoke:  # the smoke run must show that every part works
        bench_ok = bench_ok and all(r["status"] == "ok" for r in runs)
    report = {
        "mode": mode, "started": started, "seconds": clock.elapsed(), "budget_s": args.budget_s, "ok": tests_ok and bench_ok,
        "machine": machine, "formula": FORMULA,
        "peaks": {"datasheet_tflops": datasheet["datasheet_tflops"] if datasheet else None,
                  "datasheet_source": datasheet["datasheet_source"] if datasheet else
                  (runs[0].get("datasheet_source", "n/a") if runs else "n/a"),
                  "measured_tflops": probe["tflops"], "measured_how": probe["how"]},
        "tests": tests, "bench": runs, "notes": smoke_notes() if args.cpu_smoke else [],
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (args.out / "report.md").write_text(markdown)
    print("\n" + markdown, flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
