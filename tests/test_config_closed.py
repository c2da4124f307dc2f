"""The command line as a user meets it: unknown keys, null, `--cfg`, `--help`, failed sweeps, no
leftover run directories. Each test reproduces a defect found by trying the tool from a fresh clone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from zer02llm.cli import quote_text_overrides, task_overrides, unknown_override_keys
from zer02llm.config import Config, ConfigError, MoEConfig, preset_groups, undeclared_keys
from zer02llm.train import TEXT_KEYS, checked_config

from conftest import REPO, TINY, compose, run_module


# --- every config node is closed --------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("+train.lrr=1e-3", "train.lrr: no such setting; did you mean train.lr?"),
    ("+model.num_expert=8", "did you mean model.num_experts"),
    ("+hardware.threds=2", "did you mean hardware.threads"),
    ("+wandb.projekt=x", "did you mean wandb.project"),
])
def test_an_added_key_that_no_dataclass_declares_is_refused(override, expected):
    """Hydra's hint for a typo (`+train.lrr=...`) used to be accepted, written into config.yaml and ignored."""
    dict_cfg = compose([override, "model=moe"])
    with pytest.raises(ConfigError) as info:
        checked_config(dict_cfg)
    assert expected in str(info.value)


def test_declared_keys_pass_and_nested_additions_are_found():
    assert undeclared_keys(compose(["model=moe", "model.num_experts=8"])) == []
    dict_cfg = compose(["+data.extra.deeper=1", "+top_level_typo=2"])
    problems = undeclared_keys(dict_cfg)
    assert any(p.startswith("data.extra:") for p in problems)
    assert any(p.startswith("top_level_typo:") for p in problems)


def test_a_typo_without_plus_names_the_nearest_key_instead_of_hydras_trap(tmp_path):
    proc = run_module("zer02llm.train", ["train.lrr=1e-3"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "train.lrr: no such setting; did you mean train.lr?" in proc.stderr
    assert "+train.lrr" not in proc.stdout + proc.stderr  # Hydra's suggestion, which then did nothing
    assert "Traceback" not in proc.stderr


def test_a_typo_with_and_without_plus_is_reported_alike(tmp_path):
    """`train.lrr=` is caught before Hydra composes, `+train.lrr=` after: the user sees one message."""
    outputs = []
    for override in ("train.lrr=1e-3", "+train.lrr=1e-3"):
        proc = run_module("zer02llm.train", [override], cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        outputs.append((proc.stdout, proc.stderr))
    assert outputs[0] == outputs[1] == ("", "error: invalid configuration:\n  - train.lrr: no such setting; did you "
                                            "mean train.lr?\n")
    assert not any((tmp_path / "outputs").rglob("*"))  # nor a run directory left behind


def test_override_precheck_knows_the_moe_keys_and_skips_what_hydra_checks():
    argv = ["model.num_experts=8", "model.dimm=3", "+train.extra=1", "model=moe", "hydra.run.dir=x",
            "--cfg", "job", "train.lr=1"]
    problems = unknown_override_keys(argv, Config, {"model": (MoEConfig,)})
    assert problems == ["model.dimm: no such setting; did you mean model.dim?"]
    assert task_overrides(["-m", "a=1", "--cfg", "job", "hydra/launcher=slurm", "+hydra.x=1", "b=2"]) == ["a=1", "b=2"]


# --- null stays null --------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["data.val_path", "train.resume", "data.train_path", "tokenizer.path"])
def test_null_on_the_command_line_stays_null(key):
    (override,) = quote_text_overrides([f"{key}=null"], TEXT_KEYS)
    section, name = key.split(".")
    assert getattr(getattr(checked_config(compose([override])), section), name) is None


@pytest.mark.slow
def test_val_path_null_turns_validation_off_with_the_sample_corpus(tmp_path):
    run_module("zer02llm.train", [*TINY, "train.max_steps=10", "data.val_path=null",
                                  "hydra.run.dir=run"], cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any("val_loss" in r for r in rows)
    run_module("zer02llm.train", [*TINY, "train.max_steps=10", "hydra.run.dir=auto"], cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in rows)  # the default: the sample's own validation file


# --- --cfg job and the GPU check -------------------------------------------------------------

def test_cfg_job_prints_the_config_and_says_what_is_wrong(tmp_path):
    proc = run_module("zer02llm.train", ["--cfg", "job", "model.dim=100"], cwd=tmp_path, check=False)
    assert OmegaConf.create(proc.stdout).model.dim == 100  # still printed
    assert proc.returncode == 2
    assert "model.dim / model.n_heads = 25 is odd" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_cfg_job_of_a_valid_config_exits_0(tmp_path):
    proc = run_module("zer02llm.train", ["--cfg", "job", "model=moe"], cwd=tmp_path)
    assert OmegaConf.create(proc.stdout).model.num_experts == 4 and proc.stderr == ""


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_is_listed_with_the_other_problems():
    with pytest.raises(ConfigError) as info:
        checked_config(compose(["hardware=16gb", "train.lr=-1"]))
    message = str(info.value)
    assert "needs a CUDA GPU" in message and "train.lr=-1.0: must be > 0" in message


# --- help and completion offer only what a user can choose -----------------------------------

def _completions(script: str, line: str, cwd) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", script, "-sc", "query=bash"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COMP_LINE": line})
    return proc.stdout.split()


def test_help_lists_the_yaml_presets_and_no_schemas(tmp_path):
    text = run_module("zer02llm.train", ["--help"], cwd=tmp_path).stdout
    groups = {line.split(":")[0]: line.split(": ")[1].split(", ") for line in preset_groups().splitlines()}
    assert groups["model"] == ["dense", "moe"] and groups["mode"] == ["dpo", "grpo", "pretrain", "sft"]
    assert groups["reward"] == ["exact", "function", "gsm8k", "numeric", "regex", "sums"]
    assert set(groups["hardware"]) == {p.stem for p in (REPO / "conf" / "hardware").glob("*.yaml")}
    for group, options in groups.items():
        assert f"{group}: {', '.join(options)}" in text
    assert "schema" not in text


@pytest.mark.parametrize("module", ["zer02llm.generate", "zer02llm.eval", "zer02llm.evaluate"])
def test_generate_and_eval_help_offer_no_training_groups(module, tmp_path):
    text = run_module(module, ["--help"], cwd=tmp_path).stdout
    assert "checkpoint: null" in text
    for word in ("hardware", "mode:", "model:", "schema", "Configuration groups"):
        assert word not in text


def test_completion_offers_presets_not_schemas(tmp_path):
    assert sorted(_completions("zer02llm.train", "zer02llm-train model=", tmp_path)) == ["model=dense", "model=moe"]
    assert "schema=" not in " ".join(_completions("zer02llm.train", "zer02llm-train ", tmp_path))
    words = _completions("zer02llm.generate", "zer02llm-generate ", tmp_path)
    assert "checkpoint=" in words and not {"hardware=", "mode=", "model="} & set(words)


# --- sweeps: a bad job is a failed job, not the end of the sweep -----------------------------

@pytest.mark.slow
def test_an_invalid_job_fails_alone_and_the_sweep_says_so(tmp_path):
    proc = run_module("zer02llm.train", ["-m", *TINY, "model.dim=30,32", "train.max_steps=4",
                                         "hydra.sweep.dir=sweep"], cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr  # the command still says that a job failed
    sweep = tmp_path / "sweep"
    status = json.loads((sweep / "0" / "job_status.json").read_text())
    assert status["status"] == "FAILED"
    assert "model.dim=30 is not divisible by model.n_heads=4" in status["error"]
    assert json.loads((sweep / "1" / "job_status.json").read_text())["status"] == "COMPLETED"
    assert (sweep / "1" / "summary.json").exists()  # job 1 ran
    summary = (sweep / "summary.md").read_text()
    assert "| 0 | model.dim=30 |" in summary and "failed" in summary and "is not divisible" in summary
    assert "Traceback" not in proc.stderr


def test_a_single_bad_run_keeps_exit_status_2_and_leaves_no_directory(tmp_path):
    for args in (["model.dim=100"], ["data.train_path=missing.jsonl"], ["+train.lrr=1"]):
        proc = run_module("zer02llm.train", args, cwd=tmp_path, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
    leftovers = [p for p in (tmp_path / "outputs").rglob("*")] if (tmp_path / "outputs").exists() else []
    assert leftovers == []


def test_a_refused_resume_keeps_the_existing_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "train.log").write_text("an earlier run\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    proc = run_module("zer02llm.train", ["model.dim=100", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert (run_dir / "metrics.jsonl").exists() and "an earlier run" in (run_dir / "train.log").read_text()


def test_a_refused_run_in_a_plain_directory_never_removes_the_working_directory(tmp_path):
    work = tmp_path / "empty_work_dir"
    work.mkdir()
    proc = run_module("zer02llm.train", ["model.dim=100", "hydra.run.dir=run"], cwd=work, check=False)
    assert proc.returncode == 2
    assert work.is_dir() and not (work / "run").exists()


@pytest.mark.slow
def test_compile_warm_up_is_logged_apart_from_tokens_per_second(tmp_path):
    run_module("zer02llm.train", [*TINY, "train.max_steps=6", "train.log_interval=3", "hardware.compile=true",
                                  "data.val_path=null", "hydra.run.dir=run"], cwd=tmp_path)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "compile warm-up (first step):" in log
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all(r["tokens_per_s"] > 0 for r in rows)


@pytest.mark.parametrize("override", ["data.packing=bos_aligned", "data.document_mask=true"])
def test_pretraining_layouts_are_refused_for_sft(override):
    with pytest.raises(ConfigError, match="is for pretraining"):
        checked_config(compose(["mode=sft", override]))
    checked_config(compose([override]))  # fine for pretraining


def test_an_unknown_packing_is_refused():
    with pytest.raises(ConfigError, match="data.packing='shuffled': must be one of concat, bos_aligned"):
        checked_config(compose(["data.packing=shuffled"]))
