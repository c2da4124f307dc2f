"""The learning-rate schedule across runs whose length changes on resume, and what resuming a run
keeps: its schedule (no jump), its global batch, its cumulative wall time; plus the warnings for a
schedule that never decays and for SFT without pretrained weights, and hardware.threads."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from zer02llm.training import optim
from zer02llm.config import ConfigError
from zer02llm.training.preflight import validate_run

from conftest import TINY, compose, read_metrics, run_module

LR, WARMUP, RATIO = 1e-3, 5, 0.1  # the cpu preset's lr, TINY's warmup, the default min_lr_ratio
FLOOR = LR * RATIO


def schedule(step: int, total: int, anchor: optim.Anchor = None) -> float:
    return optim.lr_at(step, LR, WARMUP, total, RATIO, anchor)


# --- the schedule as a pure function ------------------------------------------------------------

def test_extending_mid_decay_relays_the_cosine_without_a_jump():
    old_total, resumed_at, new_total = 40, 30, 60
    assert schedule(resumed_at, new_total) > schedule(resumed_at, old_total) * 1.5  # why an anchor: the plain jump
    anchor = optim.relaid_anchor(resumed_at, LR, WARMUP, old_total, RATIO, None)
    assert anchor == (resumed_at, schedule(resumed_at, old_total))
    values = [schedule(s, new_total, anchor) for s in range(resumed_at, new_total + 1)]
    assert values[0] == schedule(resumed_at, old_total)  # exactly the lr the old schedule had there
    assert values[-1] == pytest.approx(FLOOR) and schedule(new_total + 50, new_total, anchor) == pytest.approx(FLOOR)
    assert all(a > b for a, b in zip(values, values[1:]))  # decays all the way, never rises
    # no step changes the lr more than the old schedule's steepest step did
    old_steps = [schedule(s, old_total) - schedule(s + 1, old_total) for s in range(WARMUP, old_total)]
    assert max(a - b for a, b in zip(values, values[1:])) <= max(old_steps)
    assert schedule(10, new_total, anchor) == schedule(10, new_total)  # steps before the anchor: unchanged


def test_shortening_decays_faster_to_the_floor():
    anchor = optim.relaid_anchor(20, LR, WARMUP, 60, RATIO, None)
    assert schedule(20, 30, anchor) == schedule(20, 60)
    assert schedule(30, 30, anchor) == pytest.approx(FLOOR)


def test_extending_a_finished_run_stays_at_the_floor():
    anchor = optim.relaid_anchor(40, LR, WARMUP, 40, RATIO, None)
    assert anchor == (40, pytest.approx(FLOOR))
    assert all(schedule(s, 60, anchor) == pytest.approx(FLOOR) for s in range(40, 61))


def test_a_second_change_continues_the_anchored_schedule():
    first = optim.relaid_anchor(30, LR, WARMUP, 40, RATIO, None)
    second = optim.relaid_anchor(45, LR, WARMUP, 60, RATIO, first)
    assert second == (45, schedule(45, 60, first))  # from the anchored schedule, not the plain one
    assert schedule(45, 100, second) == schedule(45, 60, first)
    assert schedule(100, 100, second) == pytest.approx(FLOOR)


def test_a_change_during_warmup_needs_no_anchor():
    assert optim.relaid_anchor(3, LR, WARMUP, 40, RATIO, None) is None
    assert schedule(3, 60) == schedule(3, 40)  # warmup does not depend on the total


# --- in-process trainer: warnings and threads ---------------------------------------------------

@pytest.fixture(autouse=True)
def _restore_threads():
    """A Trainer sets torch's threads for the whole process (the cpu preset: 1): undo it for other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def build_trainer(run_dir: Path, overrides: list[str]):
    from zer02llm.training.trainer import Trainer

    dict_cfg = compose([*TINY, *overrides])
    cfg = OmegaConf.to_object(dict_cfg)
    validate_run(cfg)
    return Trainer(cfg, run_dir, OmegaConf.to_container(dict_cfg, resolve=True))


def test_warmup_as_long_as_the_run_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="zer02llm"):
        build_trainer(tmp_path, ["train.max_steps=5"])  # TINY: warmup_steps=5
    assert "train.warmup_steps=5 >= the run's 5 steps (train.max_steps=5)" in caplog.text
    assert "ends at 1.00e-03, never decaying" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zer02llm"):
        trainer = build_trainer(tmp_path, ["train.max_steps=-1", "train.epochs=0.01", "train.warmup_steps=100"])
    assert f"train.warmup_steps=100 >= the run's {trainer.total_steps} steps (train.epochs=0.01 x" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zer02llm"):
        build_trainer(tmp_path, ["train.max_steps=6"])
    assert "warmup_steps" not in caplog.text


def test_hardware_threads_sets_torch_threads(tmp_path):
    torch.set_num_threads(2)  # stands for torch's default (one per core); the fixture restores the real one
    build_trainer(tmp_path, ["train.max_steps=10", "hardware.threads=0"])  # 0 (or null): left as it is
    assert torch.get_num_threads() == 2
    build_trainer(tmp_path, ["train.max_steps=10", "hardware.threads=1"])
    assert torch.get_num_threads() == 1
    assert compose().hardware.threads == 1  # the cpu preset's default (docs/benchmarks.md: measured on 2 shared cores)
    with pytest.raises(ConfigError, match=r"hardware.threads=-1: must be >= 1, or 0/null"):
        validate_run(OmegaConf.to_object(compose([*TINY, "hardware.threads=-1"])))


# --- end to end: resuming finished, extended and re-batched runs ---------------------------------

RUN = [*TINY, "train.max_steps=40", "train.log_interval=1", "train.save_interval=10", "train.keep_checkpoints=10"]


@pytest.fixture(scope="module")
def run40(tmp_path_factory) -> Path:
    """A finished 40-step run, every step's lr logged, a checkpoint every 10 steps."""
    work = tmp_path_factory.mktemp("run40")
    run_module("zer02llm.train", [*RUN, "hydra.run.dir=run"], cwd=work)
    return work / "run"


def lrs(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(run_dir) if "lr" in r}


def trainer_state(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"step_{step:07d}" / "trainer.pt", weights_only=True)


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_leaves_its_summary(run40, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(run40, run_dir, symlinks=True)
    summary = (run_dir / "summary.json").read_bytes()
    proc = run_module("zer02llm.train", [*RUN, f"hydra.run.dir={run_dir}", "train.resume=auto"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "the run is already complete (checkpoint at step 40, the run's 40 steps)" in output
    assert "raise train.max_steps, e.g. train.max_steps=80" in output
    assert (run_dir / "summary.json").read_bytes() == summary


@pytest.mark.slow
def test_extending_a_finished_run_trains_on_at_the_floor_and_sums_wall_time(run40, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(run40, run_dir, symlinks=True)
    proc = run_module("zer02llm.train", [*RUN, "train.max_steps=60", f"hydra.run.dir={run_dir}",
                                         "train.resume=auto"], cwd=tmp_path)
    assert "re-laid from step 40" in proc.stdout + proc.stderr
    logged = lrs(run_dir)
    assert sorted(logged) == list(range(1, 61))
    assert all(logged[s] == lrs(run40)[s] for s in range(1, 41))
    # row s holds the lr of step s - 1: the 20 extra steps stay at the floor the run had reached
    assert all(logged[s] == pytest.approx(FLOOR) for s in range(41, 61))
    # wall time: up to the checkpoint resumed from, plus this invocation's
    summary = json.loads((run_dir / "summary.json").read_text())
    before = trainer_state(run40, 40)["wall_seconds"]
    assert before > 0 and summary["steps"] == 60 and summary["steps_this_session"] == 20
    assert summary["wall_seconds"] == pytest.approx(before + summary["wall_seconds_this_session"], abs=0.02)
    assert trainer_state(run_dir, 60)["wall_seconds"] > before


@pytest.mark.slow
def test_extending_mid_run_relays_the_cosine_and_resumes_exactly(run40, tmp_path):
    """From step 30 of 40 to 60 steps: continuous at 30, cosine to the floor at 60; a resume of that
    extended run (from its step 50) ends with the same weights and the same lrs."""
    extended, again = tmp_path / "extended", tmp_path / "again"
    longer = [*RUN, "train.max_steps=60"]
    run_module("zer02llm.train", [*longer, f"train.resume={run40 / 'checkpoints' / 'step_0000030'}",
                                  f"hydra.run.dir={extended}"], cwd=tmp_path)
    logged = lrs(extended)
    assert sorted(logged) == list(range(31, 61))
    assert logged[31] == lrs(run40)[31]  # the step after the resume keeps the old schedule's lr
    anchor = (30, optim.lr_at(30, LR, WARMUP, 40, RATIO))
    assert trainer_state(extended, 60)["lr_anchor"] == anchor
    for s in range(31, 61):
        assert logged[s] == optim.lr_at(s - 1, LR, WARMUP, 60, RATIO, anchor), s
    assert all(a > b for a, b in zip(list(logged.values()), list(logged.values())[1:]))
    assert optim.lr_at(60, LR, WARMUP, 60, RATIO, anchor) == pytest.approx(FLOOR)

    run_module("zer02llm.train", [*longer, f"train.resume={extended / 'checkpoints' / 'step_0000050'}",
                                  f"hydra.run.dir={again}"], cwd=tmp_path)
    assert all(lrs(again)[s] == logged[s] for s in range(51, 61))
    expected = load_file(str(extended / "checkpoints" / "step_0000060" / "model.safetensors"))
    got = load_file(str(again / "checkpoints" / "step_0000060" / "model.safetensors"))
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.mark.slow
def test_resume_with_another_global_batch_is_refused(run40, tmp_path):
    checkpoint = run40 / "checkpoints" / "step_0000030"
    proc = run_module("zer02llm.train", [*RUN, "train.batch_size=2", f"train.resume={checkpoint}",
                                         "hydra.run.dir=refused/run"], cwd=tmp_path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    assert ("trained with 4 sequences per optimizer step (train.batch_size=4 x 1 rank(s) x train.grad_accum=1), "
            "this run would take 2 (train.batch_size=2 x 1 rank(s) x train.grad_accum=1)") in output
    assert "Resume with train.batch_size=4 or train.grad_accum=2" in output
    # the same 4 sequences per step, split into 2 micro-batches: accepted
    proc = run_module("zer02llm.train", [*RUN, "train.batch_size=2", "train.grad_accum=2",
                                         f"train.resume={checkpoint}", "hydra.run.dir=split"], cwd=tmp_path)
    assert "the same 4 sequences per optimizer step" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["steps"] == 40


@pytest.mark.slow
def test_sft_without_init_from_warns(run40, tmp_path):
    sft = [*TINY, "mode=sft", "data.seq_len=128", "train.max_steps=2"]
    proc = run_module("zer02llm.train", [*sft, "hydra.run.dir=scratch"], cwd=tmp_path)
    assert "mode=sft without mode.init_from: fine-tuning RANDOMLY INITIALISED weights" in proc.stdout + proc.stderr
    proc = run_module("zer02llm.train", [*sft, f"mode.init_from={run40}", "hydra.run.dir=pretrained"], cwd=tmp_path)
    assert "without mode.init_from" not in proc.stdout + proc.stderr
