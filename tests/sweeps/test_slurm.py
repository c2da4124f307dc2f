"""Sweeps through `hydra/launcher=slurm` on a real SLURM cluster (scripts/slurm/start.sh): the jobs
run, write their run directories and are COMPLETED in accounting; a job that fails on the node
makes the launching command fail quickly with the job's own error message.

Without a cluster these tests skip on a developer's machine and FAIL in CI (CI=true), where
.ci/run starts the cluster first: CI must never skip them silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_module

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TINY_SWEEP = ["model.n_layers=1", "model.n_heads=4", "data.seq_len=32", "train.batch_size=4",
              "train.max_steps=5"]
# one CPU and a little memory per job, and a time limit well above what 5 steps need
SMALL_JOBS = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
              "hydra.launcher.timeout_min=10"]
SWEEP_TIMEOUT_S = 300  # each launching command; a few steps on the CPU take seconds


def _cluster_problem() -> str | None:
    """None when `sinfo` answers and lists the `debug` partition, else what is wrong."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"sinfo failed: {lines[-1] if lines else f'exit status {proc.returncode}'}"
    if not re.search(r"^debug\*? ", proc.stdout, re.M):
        return f"no 'debug' partition in sinfo's answer: {proc.stdout.strip()!r}"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    reason = f"no SLURM cluster: run scripts/slurm/start.sh ({problem})"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason}; CI must run these tests, not skip them", pytrace=False)
    pytest.skip(reason)


def _array_tasks(sweep: Path) -> list[str]:
    """The job ids (<array id>_<index>) submitit used, from the per-task folders in .submitit/."""
    return sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))


def _sacct(job_ids: list[str], want: str, timeout_s: float = 60) -> dict[str, tuple[str, str]]:
    """{job id: (state, exit code)} once every job shows `want` (slurmctld reports to slurmdbd
    asynchronously, so a record can lag the job's end by a moment)."""
    array_ids = sorted({j.split("_")[0] for j in job_ids})
    deadline = time.monotonic() + timeout_s
    while True:
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(array_ids), "-o", "JobID,State,ExitCode"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"sacct failed: {proc.stderr}"
        rows = {f[0]: (f[1], f[2]) for f in (line.split("|") for line in proc.stdout.splitlines()) if len(f) == 3}
        states = {j: rows.get(j, ("(no record)", "")) for j in job_ids}
        if all(state == want for state, _ in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def test_sweep_runs_both_jobs_on_slurm(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"  # a fresh folder: submitit must never see an older job's result (same id)
    proc = run_module("zer02llm.train",
                      ["-m", *SMALL_JOBS, "model.dim=32,48", *TINY_SWEEP, f"hydra.sweep.dir={sweep}"],
                      cwd=tmp_path, timeout=SWEEP_TIMEOUT_S, check=False)
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert "Submitit 'slurm'" in proc.stdout + proc.stderr, output  # it went through the SLURM launcher

    for n, dim in ((0, 32), (1, 48)):
        run = sweep / str(n)
        assert (run / "checkpoints" / "last" / "model.safetensors").is_file(), f"{run}: no final checkpoint\n{output}"
        assert (run / "metrics.jsonl").read_text().strip(), f"{run}: empty metrics.jsonl"
        assert yaml.safe_load((run / "config.yaml").read_text())["model"]["dim"] == dim  # its own override

    tasks = _array_tasks(sweep)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks  # one job array, 2 tasks
    for task in tasks:
        log = sweep / ".submitit" / task / f"{task}_0_log.out"
        assert log.is_file(), f"no job log {log}"
        assert "Job completed successfully" in log.read_text(), log.read_text()
    states = _sacct(tasks, "COMPLETED")
    assert all(s == ("COMPLETED", "0:0") for s in states.values()), states


def test_failed_job_fails_the_launching_command_with_its_error(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    # composes fine on the submitting side; validate() refuses it on the node, where the job ends with
    # its failure recorded (JobFailed): the result comes back to the launching command, which fails
    start = time.monotonic()
    proc = run_module("zer02llm.train",
                      ["-m", *SMALL_JOBS, "data.train_path=/nonexistent.jsonl", "model.dim=32,48", *TINY_SWEEP,
                       f"hydra.sweep.dir={sweep}"],
                      cwd=tmp_path, timeout=SWEEP_TIMEOUT_S, check=False)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert elapsed < 180, f"took {elapsed:.0f} s to report a job that failed at once"
    assert "data.train_path=/nonexistent.jsonl: no such file" in output, output  # the reason itself
    for job in ("0", "1"):  # both jobs ran and were recorded as failed, with the message
        status = json.loads((sweep / job / "job_status.json").read_text())
        assert status["status"] == "FAILED" and "no such file" in status["error"], status
    summary = (sweep / "summary.md").read_text()
    assert "2 jobs (2 failed)" in summary and "data.train_path=/nonexistent.jsonl: no such file" in summary

    tasks = _array_tasks(sweep)
    assert len(tasks) == 2, tasks
    # each task ran to its end and handed its failed result back: SLURM accounts it as completed
    states = _sacct(tasks, "COMPLETED")
    assert all(s == ("COMPLETED", "0:0") for s in states.values()), states
    assert not (sweep / "0" / "checkpoints").exists()  # nothing heavy ran


def _weights(run: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))


ONE_THREAD = ['hydra.launcher.setup=["export OMP_NUM_THREADS=1"]']  # the same float sums as the local reference


def test_two_task_job_trains_with_gloo_ddp(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    # AdamW: Muon's bf16 Newton-Schulz turns the all-reduce's last-bit differences into ~1e-3 in the weights,
    # and this test is about SLURM's two tasks, not the optimizer (tests/training covers Muon with DDP and FSDP)
    common = ["model.dim=32", "model.n_layers=1", "model.n_heads=4", "data.seq_len=32", "train.max_steps=10",
              "train.eval_batches=-1", "optim=adamw"]
    proc = run_module("zer02llm.train", ["-m", *SMALL_JOBS, "hydra.launcher.tasks_per_node=2", *ONE_THREAD, *common,
                                         "train.batch_size=2", f"hydra.sweep.dir={sweep}"],
                      cwd=tmp_path, timeout=SWEEP_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (sweep / "0" / "train.log").read_text()
    assert "(2 ranks)" in log and log.count("saved checkpoint") == 1, log
    # the same global batch in one local process gives the same weights (float tolerance)
    run_module("zer02llm.train", [*common, "train.batch_size=4", "hydra.run.dir=single"], cwd=tmp_path,
               env={"OMP_NUM_THREADS": "1"})
    import torch

    ddp, single = _weights(sweep / "0", 10), _weights(tmp_path / "single", 10)
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)


def test_signalled_job_checkpoints_requeues_and_ends_like_an_uninterrupted_run(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    common = ["model.dim=32", "model.n_layers=1", "model.n_heads=4", "data.seq_len=32", "train.batch_size=4",
              "train.max_steps=1500", "train.save_interval=25", "train.log_interval=25", "train.eval_interval=500"]
    # timeout_min above 10, so that submitit treats the signal as a preemption (see slurm.yaml)
    args = [sys.executable, "-m", "zer02llm.train", "-m", *SMALL_JOBS, "hydra.launcher.timeout_min=30", *ONE_THREAD,
            *common, f"hydra.sweep.dir={sweep}"]
    launcher = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = sweep / "0" / "checkpoints" / "step_0000025" / "trainer.pt"
        deadline = time.monotonic() + 180
        while not first.exists():
            assert launcher.poll() is None and time.monotonic() < deadline, "the job never reached step 25"
            time.sleep(0.1)
        (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)][:1]
        subprocess.run(["scancel", "--signal=USR2", job_id.split("_")[0]], check=True, timeout=30)
        output, _ = launcher.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, output
    log = (sweep / "0" / "train.log").read_text()
    assert "received SIGUSR2" in log and "resumed from" in log, log

    run_module("zer02llm.train", [*common, "hydra.run.dir=reference"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    import torch

    got, expected = _weights(sweep / "0", 1500), _weights(tmp_path / "reference", 1500)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
