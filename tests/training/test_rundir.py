"""Run directories: a fresh start into another run's directory is refused (or, with train.overwrite=true,
moves that run aside), a refused command leaves the directory byte-identical (.hydra/ and train.log
included), and Ctrl-C before training starts leaves no empty run directory."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zer02llm.training import rundir

from conftest import TINY, read_metrics, run_module, write_jsonl


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every link's target, by path under `directory`."""
    found: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            found[key] = os.readlink(path)
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


def fake_run(run_dir: Path, steps: tuple[int, ...] = (300,), metrics_rows: int = 3) -> Path:
    for step in steps:
        (run_dir / "checkpoints" / f"step_{step:07d}").mkdir(parents=True)
    write_jsonl(run_dir / "metrics.jsonl", [{"step": i, "loss": 1.0} for i in range(metrics_rows)])
    return run_dir


# --- the rules, without a run ---------------------------------------------------------------------

def test_a_fresh_start_into_another_runs_directory_is_refused_with_the_three_ways_on(tmp_path):
    run_dir = fake_run(tmp_path / "sft")
    problem = rundir.fresh_start_problem(run_dir, resume=None, overwrite=False)
    assert problem is not None
    for expected in ("step_0000300", "3 row(s) in metrics.jsonl", "train.resume=auto", "hydra.run.dir=",
                     "train.overwrite=true"):
        assert expected in problem
    assert rundir.fresh_start_problem(run_dir, resume="auto", overwrite=False) is None
    assert rundir.fresh_start_problem(run_dir, resume=None, overwrite=True) is None
    assert "give one of them" in rundir.fresh_start_problem(run_dir, resume="auto", overwrite=True)


@pytest.mark.parametrize("contents", ["nothing", "hydra_and_log", "empty_metrics", "empty_checkpoints"])
def test_a_directory_without_another_runs_checkpoints_or_metrics_takes_a_fresh_start(tmp_path, contents):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if contents == "hydra_and_log":
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text("a: 1\n")
        (run_dir / "train.log").write_text("refused earlier\n")
    elif contents == "empty_metrics":
        (run_dir / "metrics.jsonl").write_text("")
    elif contents == "empty_checkpoints":
        (run_dir / "checkpoints").mkdir()
    assert rundir.previous_run(run_dir) == []
    assert rundir.fresh_start_problem(run_dir, resume=None, overwrite=False) is None


def test_overwrite_never_moves_the_working_directory(tmp_path, monkeypatch):
    run_dir = fake_run(tmp_path / "run")
    monkeypatch.chdir(run_dir)
    assert "working directory" in rundir.fresh_start_problem(run_dir, resume=None, overwrite=True)
    refused = rundir.fresh_start_problem(run_dir, resume=None, overwrite=False)
    assert "move it elsewhere yourself" in refused and "train.overwrite=true to move" not in refused


def test_a_requeued_slurm_job_resumes_so_its_own_checkpoints_are_no_other_run(tmp_path, monkeypatch):
    run_dir = fake_run(tmp_path / "run")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert rundir.effective_resume(None) == "auto"
    assert rundir.fresh_start_problem(run_dir, resume=None, overwrite=False) is None


def test_overwrite_moves_the_old_run_to_a_sibling_and_deletes_nothing(tmp_path):
    run_dir = fake_run(tmp_path / "run", steps=(100, 200))
    before = snapshot(run_dir)
    aside = rundir.move_aside(run_dir)
    assert aside is not None and aside.parent == run_dir.parent and aside.name.startswith("run.replaced-")
    assert snapshot(aside) == before
    assert run_dir.is_dir() and not any(run_dir.iterdir())
    again = rundir.move_aside(fake_run(run_dir))  # the same second: a name of its own
    assert again is not None and again != aside and snapshot(aside) == before
    assert rundir.move_aside(run_dir) is None  # nothing to move


def test_the_run_log_holds_records_until_accepted_and_drops_them_when_refused(tmp_path):
    logger = logging.getLogger("zer02llm.test_rundir")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    refused, accepted = rundir.RunLogHandler(str(tmp_path / "refused.log")), rundir.RunLogHandler(str(tmp_path / "a.log"))
    try:
        for handler in (refused, accepted):
            logger.addHandler(handler)
        logger.info("checking")
        assert not (tmp_path / "refused.log").exists() and not (tmp_path / "a.log").exists()
        refused.discard()
        accepted.accept()
        logger.info("training")
    finally:
        for handler in (refused, accepted):
            logger.removeHandler(handler)
            handler.close()
    assert not (tmp_path / "refused.log").exists()
    assert (tmp_path / "a.log").read_text().splitlines() == ["checking", "training"]


# --- the training command -------------------------------------------------------------------------

@pytest.mark.slow
def test_a_refused_fresh_start_leaves_the_directory_byte_identical_and_overwrite_moves_it_aside(finished_run,
                                                                                              tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    before = snapshot(run_dir)
    assert ".hydra/overrides.yaml" in before and "train.log" in before
    proc = run_module("zer02llm.train", [*TINY, "train.max_steps=20", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: hydra.run.dir=") and "already holds another run" in proc.stderr
    assert "train.resume=auto" in proc.stderr and "train.overwrite=true" in proc.stderr
    assert snapshot(run_dir) == before

    run_module("zer02llm.train", [*TINY, "train.max_steps=5", "train.save_interval=5", "train.overwrite=true",
                                  f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    (aside,) = tmp_path.glob("run.replaced-*")
    assert snapshot(aside) == before  # the old run whole, nothing deleted
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_0000005"]
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == [5]
    assert "train.overwrite=true" in (run_dir / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow
def test_a_refused_resume_leaves_hydra_record_and_log_byte_identical(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    before = snapshot(run_dir)
    proc = run_module("zer02llm.train", [*TINY, "train.max_steps=10", "model.dim=64", "train.resume=auto",
                                         f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "model.dim: checkpoint 32, this run 64" in proc.stdout + proc.stderr
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_an_accepted_resume_writes_hydras_record_of_this_command(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    run_module("zer02llm.train", [*TINY, "train.max_steps=15", "train.resume=auto", f"hydra.run.dir={run_dir}"],
               cwd=tmp_path)
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "train.max_steps=15" in overrides and "train.resume='auto'" in overrides  # text keys are quoted
    assert "max_steps: 15" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert "output_dir" in (run_dir / ".hydra" / "hydra.yaml").read_text()


@pytest.mark.slow
def test_ctrl_c_while_tokenizing_says_so_in_one_line_and_leaves_no_run_directory(tmp_path):
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "token"]
    corpus = write_jsonl(tmp_path / "big.jsonl", ({"text": " ".join(f"{words[(i * j) % 8]}{(i + j) % 997}"
                                                                   for j in range(60))} for i in range(150_000)))
    cache, run_dir = tmp_path / "cache", tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    proc = subprocess.Popen([sys.executable, "-m", "zer02llm.train", *TINY, f"data.train_path={corpus}",
                             f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (cache.is_dir() and any(p.name.endswith(".part") for p in cache.iterdir())):
        assert proc.poll() is None and time.time() < deadline, "tokenization never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr
    said = [line for line in stdout.splitlines() if "interrupted" in line]
    assert len(said) == 1 and "the next run continues" in said[0] and "no run directory is left" in said[0]
    assert not (tmp_path / "outputs" / "2026-01-01").exists()  # nor the date directory made for it


@pytest.mark.slow
def test_a_sweep_run_again_into_its_directory_refuses_each_job_and_leaves_it_as_it_was(tmp_path):
    sweep = ["-m", f"hydra.sweep.dir={tmp_path / 'sw'}", *TINY, "train.max_steps=5", "train.save_interval=5",
             "train.lr=1e-3"]
    run_module("zer02llm.train", sweep, cwd=tmp_path)
    job = tmp_path / "sw" / "0"
    before = snapshot(job)
    assert ".hydra/overrides.yaml" in before and "checkpoints/step_0000005/model.safetensors" in before
    proc = run_module("zer02llm.train", sweep, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "already holds another run" in proc.stdout + proc.stderr
    assert snapshot(job) == before
