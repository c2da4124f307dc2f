"""Checkpoints under damage and interruption: truncated or unsafe files are refused in one line (or
skipped by train.resume=auto), pruning never leaves a half directory (a refused resume: test_rundir.py),
and Ctrl-C checkpoints like TERM."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zer02llm import checkpoint as ckpt
from zer02llm.config import ModelConfig
from zer02llm.model import Transformer
from zer02llm.training.signals import StopSignals

from conftest import REPO, TINY, read_metrics, run_module

MODEL = ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32)


class Opaque:
    """A custom class: weights_only=True must refuse to rebuild it."""


def save(root: Path, step: int, keep: int = 3, state: dict | None = None) -> Path:
    torch.manual_seed(step)
    model = Transformer(MODEL)
    return ckpt.save_checkpoint(root, step, model, state or {"step": step, "rng": {"torch": torch.get_rng_state()}},
                                {"model": dataclasses.asdict(MODEL)}, REPO / "tokenizer", keep=keep)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def one_line(message: str) -> bool:
    return "\n" not in message.strip()


# --- another model ---------------------------------------------------------------------------

def test_a_dense_run_from_an_moe_checkpoint_is_told_to_add_model_moe(tmp_path):
    from zer02llm.config import ConfigError, MoEConfig

    moe = MoEConfig(**{**dataclasses.asdict(MODEL), "name": "moe"}, num_experts=4)
    saved = dataclasses.asdict(moe)
    with pytest.raises(ConfigError) as info:
        ckpt.check_model_config(saved, MODEL, tmp_path)
    assert str(info.value) == f"checkpoint {tmp_path} is MoE and this run's model is dense: add model=moe"
    with pytest.raises(ConfigError) as info:  # the other way, with a key that differs besides
        ckpt.check_model_config(dataclasses.asdict(MODEL), dataclasses.replace(moe, dim=32), tmp_path)
    assert str(info.value).splitlines() == [
        f"checkpoint {tmp_path} is dense and this run's model is MoE: add model=dense and match its other model keys:",
        "  - model.dim: checkpoint 16, this run 32"]


# --- damaged and unsafe files -----------------------------------------------------------------

@pytest.mark.parametrize("damaged_file", ["model.safetensors", "trainer.pt"])
def test_auto_resume_skips_a_damaged_checkpoint_and_an_explicit_one_is_refused(tmp_path, caplog, damaged_file):
    save(tmp_path, 10)
    newest = save(tmp_path, 20)
    truncate(newest / damaged_file)
    with caplog.at_level(logging.WARNING, logger="zer02llm.checkpoint"):
        found = ckpt.latest_resumable(tmp_path, MODEL, "cpu")
    assert found is not None and found.path.name == "step_0000010" and found.trainer_state["step"] == 10
    assert str(newest / damaged_file) in caplog.text  # the warning names what was skipped

    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.read_for_resume(newest, MODEL, "cpu")
    message = str(info.value)
    assert str(newest / damaged_file) in message and "damaged" in message and one_line(message)


def test_loading_damaged_weights_for_inference_names_the_file(tmp_path):
    newest = save(tmp_path, 10)
    truncate(newest / "model.safetensors")
    resolved = ckpt.resolve_checkpoint(tmp_path)  # follows `last`
    assert resolved == newest.resolve()
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_weights(Transformer(MODEL), resolved)
    assert str(resolved / "model.safetensors") in str(info.value) and one_line(str(info.value))


def test_auto_resume_refuses_when_every_checkpoint_is_damaged(tmp_path):
    for step in (10, 20):
        truncate(save(tmp_path, step) / "trainer.pt")
    with pytest.raises(ckpt.CheckpointError, match="no intact checkpoint"):
        ckpt.latest_resumable(tmp_path, MODEL, "cpu")


def test_auto_resume_without_checkpoints_is_a_fresh_start(tmp_path):
    assert ckpt.latest_resumable(tmp_path / "checkpoints", MODEL, "cpu") is None


def test_trainer_state_with_a_pickled_object_is_refused_as_unsafe_in_one_line(tmp_path):
    unsafe = save(tmp_path, 10, state={"step": 10, "extra": Opaque()})
    with pytest.raises(ckpt.UnsafeCheckpoint) as info:
        ckpt.load_trainer_state(unsafe)
    message = str(info.value)
    assert str(unsafe / "trainer.pt") in message and "unsafe" in message and "Opaque" in message
    assert one_line(message) and "\x1b" not in message
    # a tampered file is not skipped silently by resume=auto: it is refused
    with pytest.raises(ckpt.UnsafeCheckpoint):
        ckpt.latest_resumable(tmp_path, MODEL, "cpu")


# --- pruning ----------------------------------------------------------------------------------

class Crash(BaseException):
    """The process dying in the middle of a delete."""


def test_a_crash_while_pruning_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    for step in (10, 20):
        save(tmp_path, step, keep=2)
    real_rmtree = shutil.rmtree

    def rmtree_then_crash(path, *args, **kwargs):
        if not (Path(path) / "model.safetensors").exists():
            return real_rmtree(path, *args, **kwargs)
        (Path(path) / "model.safetensors").unlink()  # some files gone, trainer.pt still there
        raise Crash

    monkeypatch.setattr(shutil, "rmtree", rmtree_then_crash)
    with pytest.raises(Crash):
        save(tmp_path, 30, keep=2)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)

    steps = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step_"))
    assert steps == ["step_0000020", "step_0000030"]  # the half-deleted step_10 is out of sight
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == steps
    save(tmp_path, 40, keep=2)  # the next prune finishes the job
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step_0000030", "step_0000040"]


def test_pruning_cleans_up_leftovers_of_killed_runs(tmp_path):
    save(tmp_path, 10)
    (tmp_path / "step_0000003").mkdir()  # emptied by a delete that was killed
    (tmp_path / "step_0000004").mkdir()
    (tmp_path / "step_0000004" / "config.json").write_text("{}")  # everything else already gone
    (tmp_path / ".step_0000005.tmp").mkdir()  # a save that was killed
    (tmp_path / ".step_0000005.tmp" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".deleting.step_0000002").mkdir()
    (tmp_path / "notes.txt").write_text("mine")  # not ours to delete
    save(tmp_path, 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "notes.txt", "step_0000010", "step_0000020"]


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    save(tmp_path, 10)
    again = save(tmp_path, 10, state={"step": 10, "again": True})
    assert ckpt.load_trainer_state(again)["again"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step_0000010"]


# --- signals ----------------------------------------------------------------------------------

def test_first_ctrl_c_is_recorded_and_the_second_interrupts():
    stop = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- the training command ---------------------------------------------------------------------

LONG = [*TINY, "train.max_steps=200", "train.save_interval=1000"]


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to, symlinks=True)  # `last` stays a relative link
    return to


def start_training(args: list[str], cwd: Path, log: Path, until: str) -> subprocess.Popen:
    """Start the training command and return once its log shows `until`."""
    proc = subprocess.Popen([sys.executable, "-m", "zer02llm.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (log.exists() and until in log.read_text()):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"the run ended or stalled before {until!r}:\n{proc.communicate()[1]}")
        time.sleep(0.01)
    return proc


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_at_the_stop_step_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    # every step logged: the step the signal stopped is the last one the log shows
    proc = start_training([*LONG, "train.log_interval=1", f"hydra.run.dir={run_dir}"], tmp_path,
                          run_dir / "train.log", "step 5/")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    log = (run_dir / "train.log").read_text()
    assert "received SIGINT" in log
    logged = [int(line.split("step ")[1].split("/")[0]) for line in log.splitlines() if "/200: loss" in line]
    stop_step = logged[-1]
    assert 5 <= stop_step < 200
    saved = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert saved is not None and saved.name == f"step_{stop_step:07d}"  # exactly the step it stopped at
    assert torch.load(saved / "trainer.pt", weights_only=True)["step"] == stop_step
    assert read_metrics(run_dir)[-1]["step"] == stop_step
    assert "stopped at step" not in log  # nothing trained after the checkpoint


@pytest.mark.slow
def test_a_fresh_start_after_a_kill_before_the_first_checkpoint_keeps_no_old_rows(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_training([*LONG, f"hydra.run.dir={run_dir}"], tmp_path, run_dir / "train.log", "step 15/")
    proc.kill()
    proc.communicate()
    assert ckpt.latest_checkpoint(run_dir / "checkpoints") is None
    assert {r["step"] for r in read_metrics(run_dir)} >= {5, 10, 15}
    run_module("zer02llm.train", [*TINY, "train.max_steps=15", "train.resume=auto", f"hydra.run.dir={run_dir}"],
               cwd=tmp_path)
    assert [r["step"] for r in read_metrics(run_dir)] == [5, 10, 15]  # once each


@pytest.mark.slow
def test_generate_on_a_damaged_checkpoint_exits_2_naming_the_file(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "run")
    weights = (run_dir / "checkpoints" / "last").resolve() / "model.safetensors"
    truncate(weights)
    proc = run_module("zer02llm.generate", [f"checkpoint={run_dir}", "prompt=hi", "max_new_tokens=2"], cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2, proc.stderr
    assert str(weights) in proc.stderr and "Traceback" not in proc.stderr
