"""Config groups compose into the typed Config; bad values are refused with a message that names them."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from zer02llm.cli import hydra_quote, quote_text_overrides
from zer02llm.config import Config, ConfigError, ModelConfig
from zer02llm.training.preflight import validate_run
from zer02llm.hardware import resolve_device

from conftest import REPO, TINY, compose, run_module

PRESETS = {  # the seed's numbers: dim, layers, batch, accumulation
    "16gb": (512, 8, 16, 16),
    "24gb": (768, 12, 24, 8),
    "40gb": (1024, 16, 32, 4),
}


def to_config(overrides=()) -> Config:
    return OmegaConf.to_object(compose(overrides))


def test_default_composition_is_the_cpu_preset_of_the_dense_model():
    cfg = to_config()
    assert isinstance(cfg, Config) and isinstance(cfg.model, ModelConfig)
    assert (cfg.model.name, cfg.mode.name, cfg.hardware.name) == ("dense", "pretrain", "cpu")
    assert (cfg.model.dim, cfg.model.n_layers, cfg.model.n_heads, cfg.data.seq_len) == (128, 2, 4, 128)
    assert cfg.hardware.device == "cpu" and cfg.hardware.dtype == "float32"
    # minimind's model defaults
    m = cfg.model
    assert (m.n_kv_heads, m.vocab_size, m.rope_theta, m.norm_eps, m.dropout, m.tie_embeddings) == \
        (2, 6400, 1e6, 1e-5, 0.0, True)
    assert m.ffn_dim == 64 * math.ceil(8 * 128 / 3 / 64)
    validate_run(cfg)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_gpu_presets_carry_the_seed_numbers(preset):
    cfg = to_config([f"hardware={preset}"])
    dim, layers, batch, accum = PRESETS[preset]
    assert (cfg.model.dim, cfg.model.n_layers, cfg.train.batch_size, cfg.train.grad_accum) == (dim, layers, batch, accum)
    assert cfg.model.n_heads == 8 and cfg.hardware.device == "cuda" and cfg.hardware.dtype == "auto"
    assert cfg.hardware.compile  # GPU presets compile by default
    if torch.cuda.is_available():
        validate_run(cfg)
    else:  # valid but for the missing GPU, which validation names with the other problems
        with pytest.raises(ConfigError) as info:
            validate_run(cfg)
        assert str(info.value).count("\n  - ") == 1 and "needs a CUDA GPU" in str(info.value)


def test_every_group_option_composes():
    """Every preset file of every group (read from conf/, so a new one is covered), each a valid config."""
    from zer02llm.config import MoEConfig

    options = {group: sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
               for group in ("model", "mode", "hardware", "optim", "reward")}
    assert options["model"] == ["dense", "moe"] and options["mode"] == ["dpo", "grpo", "pretrain", "sft"]
    assert set(options["hardware"]) == {"cpu", *PRESETS} and options["optim"] == ["adamw", "muon"]
    assert {"numeric", "gsm8k", "exact", "regex", "function"} <= set(options["reward"])
    # what the preset asks of the command line
    needs = {"dpo": ["mode.init_from=sft_run"], "grpo": ["mode.init_from=sft_run"],
             "function": ["mode=grpo", "reward.function._target_=my_rewards.score"],
             **{name: ["mode=grpo"] for name in options["reward"] if name != "function"}}
    for group, names in options.items():
        for option in names:
            cfg = to_config([f"{group}={option}", *needs.get(option, [])])
            assert getattr(cfg, group).name == option, (group, option)
            if group != "hardware":  # a preset leaves nothing to refuse (a GPU preset needs its GPU)
                validate_run(cfg, check_files=False)
    assert isinstance(to_config(["model=moe"]).model, MoEConfig)


def test_command_line_overrides_beat_presets():
    cfg = to_config(["hardware=24gb", "model.dim=256", "train.batch_size=3"])
    assert (cfg.model.dim, cfg.model.n_layers, cfg.train.batch_size) == (256, 12, 3)


@pytest.mark.parametrize("overrides, expected", [
    (["model.dim=100", "model.n_heads=8"], "model.dim=100 is not divisible by model.n_heads=8"),
    (["model.n_heads=8", "model.n_kv_heads=3"], "model.n_heads=8 is not divisible by model.n_kv_heads=3"),
    (["model.dim=120", "model.n_heads=8"], "= 15 is odd"),
    (["model.n_layers=0"], "model.n_layers=0: must be > 0"),
    (["model.dim=-8"], "model.dim=-8: must be > 0"),
    (["train.lr=0"], "train.lr=0.0: must be > 0"),
    (["train.batch_size=0"], "train.batch_size=0: must be > 0"),
    (["data.seq_len=4096", "model.max_seq_len=2048"], "data.seq_len=4096 exceeds model.max_seq_len=2048"),
    (["data.train_path=/nonexistent/train.jsonl"], "data.train_path=/nonexistent/train.jsonl: no such file"),
    (["data.val_path=missing_val.jsonl"], "data.val_path=missing_val.jsonl: no such file"),
    (["tokenizer.path=/nonexistent"], "tokenizer.path=/nonexistent: no tokenizer.json"),
    (["train.resume=/nonexistent/ckpt"], "train.resume=/nonexistent/ckpt: no such checkpoint"),
    (["hardware.dtype=fp8"], "hardware.dtype='fp8': must be one of"),
    (["hardware.device=tpu"], "hardware.device='tpu'"),
    (["model.attention=flash"], "model.attention='flash': must be one of sdpa, math"),
    (["logger=tensorboard"], "logger='tensorboard': must be one of none, wandb"),
    (["train.max_steps=0"], "train.max_steps=0"),
    (["model.dropout=1.5"], "model.dropout=1.5"),
    (["hardware.dtype=float16"], "float16 on hardware.device=cpu"),
])
def test_bad_values_are_refused_with_key_and_value(overrides, expected):
    with pytest.raises(ConfigError) as info:
        validate_run(to_config(overrides))
    assert expected in str(info.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        validate_run(to_config(["model.n_layers=0", "train.lr=-1", "logger=x"]))
    message = str(info.value)
    assert "model.n_layers" in message and "train.lr" in message and "logger" in message


@pytest.mark.parametrize("override, error", [
    ("model.dimm=3", ConfigCompositionException),  # unknown key
    ("model.dim=abc", ConfigCompositionException),  # wrong type
    ("model=transformer9000", ConfigCompositionException),  # unknown group option
])
def test_hydra_refuses_unknown_keys_types_and_options(override, error):
    with pytest.raises((error, ConfigKeyError, ValidationError)):
        to_config([override])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_gpu_preset_without_gpu_says_so(preset):
    cfg = to_config([f"hardware={preset}"])
    with pytest.raises(ConfigError, match=f"hardware={preset} .*needs a CUDA GPU"):
        resolve_device(cfg.hardware)


def test_auto_device_falls_back_to_cpu_in_float32():
    cfg = to_config(["hardware.device=auto", "hardware.dtype=auto"])
    device, dtype = resolve_device(cfg.hardware)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.type == expected
    if expected == "cpu":
        assert dtype == torch.float32


def test_cli_prints_composed_config(tmp_path):
    proc = run_module("zer02llm.train", ["--cfg", "job", "model.dim=256"], cwd=tmp_path)
    printed = OmegaConf.create(proc.stdout)
    assert printed.model.dim == 256 and printed.hardware.name == "cpu"
    assert not (tmp_path / "outputs").exists()


def test_cli_bad_config_exits_2_with_message_before_any_work(tmp_path):
    proc = run_module("zer02llm.train", ["model.dim=100", "model.n_heads=8"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "model.dim=100 is not divisible by model.n_heads=8" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("checkpoints"))


@pytest.mark.skipif(shutil.which("zer02llm-train") is None, reason="package not installed (pip install -e .)")
def test_console_script(tmp_path):
    proc = subprocess.run(["zer02llm-train", "--cfg", "job", "hardware=16gb", "hardware.device=auto"], cwd=tmp_path,
                          capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.create(proc.stdout).model.dim == 512


@pytest.mark.parametrize("text", ["星期三，天气很好", "a, b [c] {d}", "it's \"quoted\"", "back\\slash\\", "x=y,z",
                                  "tail quote'", "\\'mixed\\\\'"])
def test_free_text_overrides_reach_the_config_verbatim(text):
    (override,) = quote_text_overrides([f"prompt={text}"], ("prompt",))
    cfg = compose([override], config_name="generate")
    assert cfg.prompt == text
    assert hydra_quote(text).startswith("'")


def test_already_quoted_and_other_keys_are_left_alone():
    argv = ["prompt='already'", "top_k=5", "-m", "checkpoint=a,b"]
    assert quote_text_overrides(argv, ("prompt",)) == argv


@pytest.mark.slow
def test_non_editable_install_runs_from_another_directory(tmp_path):
    """A wheel carries conf/, tokenizer/ and the sample corpus: training works outside the checkout."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheel_dir.glob("zer02llm-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {"PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", "import zer02llm.resources as r; print(r.shipped_path('conf'));"
                           "print(r.shipped_path('tokenizer')); print(r.sample_data_path('pretrain.jsonl'))"],
                          cwd=workdir, env={**os.environ, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert all(line.startswith(str(site)) for line in proc.stdout.split()), proc.stdout
    run_module("zer02llm.train", [*TINY, "train.max_steps=3", "hydra.run.dir=run"], cwd=workdir, env=env)
    assert (workdir / "run" / "checkpoints" / "last" / "model.safetensors").exists()
