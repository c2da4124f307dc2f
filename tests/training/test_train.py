"""The training command end to end: loss goes down, outputs land in the run directory, checkpoints
round-trip, and a run killed with SIGKILL resumes to the same weights as one never interrupted."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zer02llm import checkpoint as ckpt
from zer02llm.config import ConfigError, ModelConfig
from zer02llm.model import Transformer
from zer02llm.training.optim import lr_at

from conftest import REPO, TINY, read_metrics, run_module

STEPS = 200
RESUMABLE = [*TINY, f"train.max_steps={STEPS}", "train.save_interval=10", "train.keep_checkpoints=3"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted run of the default (sample) corpus with the tiny model."""
    work = tmp_path_factory.mktemp("reference")
    run_module("zer02llm.train", [*RESUMABLE, "hydra.run.dir=run"], cwd=work)
    return work / "run"


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))


# --- schedule ---------------------------------------------------------------------------------

def test_lr_schedule_warmup_then_cosine_to_floor():
    lr, warmup, total, ratio = 1e-3, 10, 110, 0.1
    values = [lr_at(s, lr, warmup, total, ratio) for s in range(total + 1)]
    assert values[0] == pytest.approx(lr / warmup)  # starts low, never at 1.1x lr
    assert values[warmup - 1] == pytest.approx(lr)
    assert max(values) == pytest.approx(lr)
    for s in range(warmup, total + 1):  # the closed form after warmup
        progress = (s - warmup) / (total - warmup)
        assert values[s] == pytest.approx(lr * ratio + 0.5 * (lr - lr * ratio) * (1 + math.cos(math.pi * progress)))
    assert values[total] == pytest.approx(lr * ratio)
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1:]))
    assert lr_at(500, lr, warmup, total, ratio) == pytest.approx(lr * ratio)  # stays at the floor


# --- the run ----------------------------------------------------------------------------------

def test_tiny_run_lowers_the_loss_and_writes_its_outputs(reference_run):
    rows = read_metrics(reference_run)
    train = [r["loss"] for r in rows if "loss" in r]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert train[0] > math.log(6400) - 1.0  # starts near ln(vocab)
    assert train[-1] < train[0] - 2.0 and val[-1] < val[0] - 2.0
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})  # one row per logged step
    assert {"lr", "grad_norm", "tokens_per_s", "tokens"} <= rows[-1].keys()
    assert rows[-1]["val_ppl"] == pytest.approx(math.exp(rows[-1]["val_loss"]))
    for name in ("config.yaml", "train.log", "metrics.jsonl", "loss.png", ".hydra/config.yaml"):
        assert (reference_run / name).exists(), name
    assert (reference_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step 200/200: loss" in (reference_run / "train.log").read_text()


def test_only_the_last_k_checkpoints_are_kept(reference_run):
    root = reference_run / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == [f"step_{s:07d}" for s in (180, 190, 200)]
    assert os.readlink(root / "last") == f"step_{STEPS:07d}"
    saved = ckpt.read_checkpoint_config(root / "last")
    assert saved["step"] == STEPS and saved["model"]["dim"] == 32
    assert (root / "last" / "tokenizer" / "tokenizer.json").exists()


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_weights(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "zer02llm.train", *RESUMABLE, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = run_dir / "checkpoints" / "step_0000010" / "trainer.pt"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed: raise STEPS"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert killed_at is not None and killed_at.name != f"step_{STEPS:07d}"

    run_module("zer02llm.train", [*RESUMABLE, f"hydra.run.dir={run_dir}", "train.resume=auto"], cwd=tmp_path)
    assert "resumed from" in (run_dir / "train.log").read_text()
    expected, got = final_weights(reference_run), final_weights(run_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # the metrics file continues: same steps, same losses, no duplicate rows from the killed part
    def losses(run):
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run)]
    assert losses(run_dir) == losses(reference_run)


def test_resume_refuses_a_checkpoint_of_another_model(reference_run, tmp_path):
    proc = run_module("zer02llm.train", [*RESUMABLE, "model.dim=64", "model.n_layers=3",
                                         f"train.resume={reference_run / 'checkpoints' / 'last'}",
                                         "hydra.run.dir=run"], cwd=tmp_path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "model.dim: checkpoint 32, this run 64" in output
    assert "model.n_layers: checkpoint 2, this run 3" in output


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path):
    run_module("zer02llm.train", [*TINY, "train.max_steps=3", "train.resume=auto", "hydra.run.dir=run"],
               cwd=tmp_path)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "no checkpoint" in log and (tmp_path / "run" / "checkpoints" / "last").exists()


# --- checkpoints in-process -------------------------------------------------------------------

def small_model() -> Transformer:
    return Transformer(ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32))


def test_checkpoint_round_trip(tmp_path):
    model = small_model()
    state = {"step": 7, "rng": {"torch": torch.get_rng_state()}, "sampler": {"epoch": 1, "offset": 8}}
    path = ckpt.save_checkpoint(tmp_path, 7, model, state, {"model": {"dim": 16}}, REPO / "tokenizer", keep=2)
    clone = small_model()
    assert not torch.equal(clone.layers[0].attn.q_proj.weight, model.layers[0].attn.q_proj.weight)
    ckpt.load_weights(clone, path)
    for (name, a), (_, b) in zip(model.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(a, b), name
    assert clone.lm_head.weight is clone.tok_embeddings.weight  # still tied after loading
    loaded = ckpt.load_trainer_state(path)  # weights_only=True inside
    assert loaded["step"] == 7 and torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert ckpt.resolve_checkpoint(tmp_path) == path.resolve()


def test_half_written_checkpoint_is_never_the_latest(tmp_path):
    model = small_model()
    ckpt.save_checkpoint(tmp_path, 10, model, {"step": 10}, {}, REPO / "tokenizer", keep=3)
    crashed = tmp_path / ".step_0000020.tmp"  # what a crash during the next save leaves
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000010"
    assert ckpt.resolve_checkpoint(tmp_path / "last").name == "step_0000010"
    ckpt.save_checkpoint(tmp_path, 20, model, {"step": 20}, {}, REPO / "tokenizer", keep=3)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000020" and not crashed.exists()


def test_model_config_mismatch_names_the_keys(tmp_path):
    saved = {**ModelConfig().__dict__, "dim": 256, "n_layers": 4}
    with pytest.raises(ConfigError) as info:
        ckpt.check_model_config(saved, ModelConfig(), tmp_path)
    assert "model.dim: checkpoint 256, this run 512" in str(info.value)
    assert "model.n_layers: checkpoint 4, this run 8" in str(info.value)
    ckpt.check_model_config(dict(ModelConfig().__dict__), ModelConfig(), tmp_path)  # equal: no error


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.resolve_checkpoint(tmp_path)


# --- wandb ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_wandb_goes_offline_without_key_and_never_writes_the_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc with a key
    base = [sys.executable, "-m", "zer02llm.train", *TINY, "train.max_steps=3", "logger=wandb"]
    proc = subprocess.run([*base, "hydra.run.dir=nokey"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list((tmp_path / "nokey" / "wandb").glob("offline-run-*"))

    secret = "zer02llm-test-secret-0123456789abcdef0123"
    env.update(WANDB_API_KEY=secret, WANDB_MODE="offline")
    proc = subprocess.run([*base, "hydra.run.dir=withkey"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (tmp_path / "withkey").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_usr2_saves_a_checkpoint_at_the_current_step_then_stops(reference_run, tmp_path):
    """SLURM's warning signal (USR2): the step in progress is finished and saved before the process goes."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "zer02llm.train", *RESUMABLE, "train.save_interval=1000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run_dir / "train.log"
    deadline = time.time() + 240
    while not (log.exists() and "step 10/" in log.read_text()) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before the signal"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGUSR2)
    assert proc.wait(timeout=120) == -signal.SIGUSR2  # then the default action of USR2, as without submitit
    saved = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert saved is not None and 10 <= int(saved.name.split("_")[1]) < STEPS
    assert "received SIGUSR2" in log.read_text()
    run_module("zer02llm.train", [*RESUMABLE, "train.save_interval=1000", f"hydra.run.dir={run_dir}",
                                  "train.resume=auto"], cwd=tmp_path)
    expected, got = final_weights(reference_run), final_weights(run_dir)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_the_step_is_described_by_its_global_batch():
    from zer02llm.training.trainer import describe_step

    assert describe_step(4, 2, 3, "sequence") == "24 sequences (train.batch_size=4 x 2 ranks x train.grad_accum=3)"
    assert describe_step(4, 1, 1, "pair") == "4 pairs (train.batch_size=4 x train.grad_accum=1)"


def test_epochs_set_the_number_of_steps(tmp_path):
    """train.max_steps=-1: as many optimizer steps as train.epochs passes over the packed windows."""
    import json as _json

    from zer02llm.resources import sample_data_path
    from zer02llm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load()
    lines = sample_data_path("pretrain.jsonl").read_text(encoding="utf-8").splitlines()
    n_tokens = sum(len(tokenizer.encode(_json.loads(line)["text"])) + 2 for line in lines if line.strip())
    windows = (n_tokens - 1) // 32  # TINY: data.seq_len=32
    expected = math.ceil(0.05 * (windows // 4))  # batch 4, one micro-batch per step
    run_module("zer02llm.train", [*TINY, "train.max_steps=-1", "train.epochs=0.05", "hydra.run.dir=run"],
               cwd=tmp_path)
    assert _json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == expected


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    args = [*TINY, "train.max_steps=10"]
    run_module("zer02llm.train", [*args, "hydra.run.dir=eager"], cwd=tmp_path)
    run_module("zer02llm.train", [*args, "hardware.compile=true", "hydra.run.dir=compiled"], cwd=tmp_path)
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert [r["step"] for r in eager] == [r["step"] for r in compiled]
    for a, b in zip(eager, compiled):
        for key in ("loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4)
