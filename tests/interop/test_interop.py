"""Hugging Face interop: export to transformers with identical outputs, import back bit for bit, refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, randomize, run_module
from zer02llm import export
from zer02llm.interop import transformers as interop
from zer02llm.checkpoint import export_model
from zer02llm.config import ConfigError, ExportConfig, ModelConfig, MoEConfig
from zer02llm.model import Transformer
from zer02llm.resources import shipped_path
from zer02llm.tokenizer import Tokenizer

try:
    import transformers
except ImportError:  # the README's install (.[dev]) has no transformers: only the tests that load it skip
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers is not installed (this test loads "
                                                                    "models in it: pip install transformers)")

SMALL = dict(dim=64, n_layers=2, n_heads=4, max_seq_len=128)
CONFIGS = {
    "gqa": ModelConfig(**SMALL, n_kv_heads=2),
    "mha": ModelConfig(**SMALL, n_kv_heads=4, hidden_dim=96, rope_theta=5e4, norm_eps=1e-6),
    "untied": ModelConfig(**SMALL, n_kv_heads=2, tie_embeddings=False),
    "mixtral": MoEConfig(**SMALL, n_kv_heads=2, num_shared_experts=0, expert_hidden_dim=32),
    "granite_shared": MoEConfig(**SMALL, n_kv_heads=2, num_shared_experts=2, num_experts=3, experts_per_token=2,
                                expert_hidden_dim=32, tie_embeddings=False),
}
ARCHITECTURES = {"gqa": "LlamaForCausalLM", "mha": "LlamaForCausalLM", "untied": "LlamaForCausalLM",
                 "mixtral": "MixtralForCausalLM", "granite_shared": "GraniteMoeSharedForCausalLM"}


def make_checkpoint(directory: Path, cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = randomize(Transformer(cfg), seed).eval()
    export_model(directory, model, {"model": dataclasses.asdict(cfg), "mode": "pretrain"}, shipped_path("tokenizer"))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (our model, its export directory); "gqa" is sharded to check the index."""
    root = tmp_path_factory.mktemp("interop")
    out = {}
    for name, cfg in CONFIGS.items():
        model = make_checkpoint(root / name, cfg)
        shard = "60KB" if name == "gqa" else "5GB"
        export.run(ExportConfig(checkpoint=str(root / name), output=str(root / f"{name}_hf"), max_shard_size=shard))
        out[name] = (model, root / f"{name}_hf")
    return out


def load_hf(directory: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def tokens(cfg: ModelConfig, length: int = 48, batch: int = 2) -> torch.Tensor:
    return torch.randint(3, cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


@needs_transformers
@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_logits_and_loss_match(exported, name):
    model, directory = exported[name]
    hf = load_hf(directory)
    assert type(hf).__name__ == ARCHITECTURES[name]
    ids = tokens(model.cfg)
    targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
    with torch.no_grad():
        ours = model(ids, targets=targets)
        theirs = hf(ids, labels=ids)
    assert (ours.logits - theirs.logits).abs().max().item() < 1e-4
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5


@needs_transformers
def test_rotary_convention_is_checked_by_the_logits(exported):
    """Negative control: the interleaved pairing (2i, 2i+1) would not match, so the test above sees rotary."""
    model, directory = exported["gqa"]
    hf = load_hf(directory)
    hd = model.cfg.head_dim
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
    with torch.no_grad():
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                w = proj.weight.view(-1, hd, proj.weight.size(1))
                proj.weight.copy_(w[:, perm].reshape_as(proj.weight))
        diff = (model(tokens(model.cfg)).logits - hf(tokens(model.cfg)).logits).abs().max().item()
    assert diff > 1e-2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_is_bit_identical(exported, name):
    model, directory = exported[name]
    state = interop.from_transformers(interop.read_transformers_weights(directory), model.cfg)
    imported = interop.model_config_from_transformers(json.loads((directory / "config.json").read_text()))
    assert interop.config_differences(model.cfg, imported) == []
    original = model.state_dict()
    assert set(state) == set(original)
    for key, tensor in original.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key


def test_sharded_export_has_an_index(exported):
    directory = exported["gqa"][1]
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((directory / s).is_file() for s in shards)
    assert not (directory / "model.safetensors").exists()
    config = json.loads((directory / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == "float32" and config["head_dim"] == 16
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == Tokenizer.load().eos_id
    card = (directory / "README.md").read_text()
    assert "LlamaForCausalLM" in card and "## Training" in card


@needs_transformers
@pytest.mark.parametrize("name", ["gqa", "mixtral"])
def test_greedy_generation_is_identical(exported, name):
    from zer02llm.inference.sampling import SamplingParams, generate

    model, directory = exported[name]
    hf = load_hf(directory)
    prompt = tokens(model.cfg, length=8, batch=1)[0].tolist()
    eos = Tokenizer.load().eos_id
    ours = list(generate(model, prompt, 32, SamplingParams(temperature=0.0), eos_id=eos))
    theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32)[0, len(prompt):].tolist()
    assert ours == theirs and len(ours) >= 1


@needs_transformers
def test_tokenizer_and_chat_template_match(exported):
    from zer02llm.data.sft import ChatTemplate

    directory = exported["gqa"][1]
    ours = Tokenizer.load()
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    for text in ["Hello world, 你好！", "  spaces\tand\nnewlines", "<|im_start|>user\nhi<|im_end|>"]:
        assert theirs(text, add_special_tokens=True)["input_ids"] == ours.encode(text)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (ours.bos_id, ours.eos_id, ours.pad_id)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    rendered = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == ChatTemplate(ours).render(messages, add_generation_prompt=True)


@needs_transformers
def test_pipeline_runs(exported):
    pipe = transformers.pipeline("text-generation", model=str(exported["gqa"][1]), device="cpu")
    out = pipe("Once upon a time", max_new_tokens=5, do_sample=False)
    assert isinstance(out[0]["generated_text"], str)


def test_unexportable_moe_is_refused_naming_the_keys():
    problems = interop.export_problems(MoEConfig(**SMALL, moe_layer_interval=2, experts_per_token=1,
                                                 capacity_factor=1.25))
    text = "; ".join(problems)
    for key in ("model.moe_layer_interval=2", "model.experts_per_token=1", "model.capacity_factor=1.25"):
        assert key in text
    assert "model.norm_topk_prob=false" in interop.export_problems(MoEConfig(**SMALL, norm_topk_prob=False))[0]
    assert interop.export_problems(MoEConfig(**SMALL, capacity_factor=1.25), allow_dropless=True) == []
    with pytest.raises(ConfigError, match="moe_layer_interval"):
        interop.architecture_for(MoEConfig(**SMALL, moe_layer_interval=2))


def llama_config(**overrides):
    return {**transformers.LlamaConfig(vocab_size=6400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=64).to_dict(), "architectures": ["LlamaForCausalLM"],
            **overrides}


@needs_transformers
def test_unsupported_transformers_features_are_refused_listed():
    config = llama_config(attention_bias=True, mlp_bias=True, sliding_window=16,
                          rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(ConfigError) as e:
        interop.model_config_from_transformers(config)
    for feature in ("attention_bias=True", "mlp_bias=True", "sliding_window=16", "rope_type='linear'"):
        assert feature in str(e.value)
    with pytest.raises(ConfigError, match="architectures"):
        interop.model_config_from_transformers({**config, "architectures": ["Qwen3ForCausalLM"]})


@needs_transformers
def test_config_differences_name_the_overrides():
    imported = interop.model_config_from_transformers(llama_config())
    overrides = interop.config_differences(ModelConfig(), imported)
    assert "model.dim=32" in overrides and "model.hidden_dim=64" in overrides and "model.max_seq_len=64" in overrides
    assert "model.tie_embeddings=false" in overrides
    assert interop.config_differences(imported, imported) == []


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A randomly initialised LlamaForCausalLM saved with save_pretrained, with our tokenizer beside it."""
    directory = tmp_path_factory.mktemp("llama") / "llama"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: v for k, v in llama_config().items()
                                                                      if k not in ("architectures",)}))
    model.save_pretrained(directory)
    for file in shipped_path("tokenizer").iterdir():
        shutil.copy2(file, directory / file.name)
    return directory


@needs_transformers
def test_import_of_a_transformers_llama_gives_its_logits(llama_dir):
    cfg = interop.model_config_from_transformers(json.loads((llama_dir / "config.json").read_text()))
    ours = Transformer(cfg).eval()
    interop.load_transformers_weights(ours, llama_dir)
    hf = load_hf(llama_dir)
    ids = tokens(cfg, length=32)
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() < 1e-4


def assert_refused(proc, *fragments):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    for fragment in fragments:
        assert fragment in out, out


@pytest.mark.slow
def test_export_refusals_exit_2_without_traceback(tmp_path):
    proc = run_module("zer02llm.export", [f"checkpoint={tmp_path / 'nothing'}", f"output={tmp_path / 'out'}"],
                      cwd=tmp_path, check=False)
    assert_refused(proc, "no checkpoint at")
    make_checkpoint(tmp_path / "moe", MoEConfig(**SMALL, n_kv_heads=2, moe_layer_interval=2))
    proc = run_module("zer02llm.export", [f"checkpoint={tmp_path / 'moe'}", f"output={tmp_path / 'out'}"],
                      cwd=tmp_path, check=False)
    assert_refused(proc, "model.moe_layer_interval=2")
    make_checkpoint(tmp_path / "dense", ModelConfig(**SMALL, n_kv_heads=2))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    args = [f"checkpoint={tmp_path / 'dense'}", f"output={tmp_path / 'busy'}"]
    assert_refused(run_module("zer02llm.export", args, cwd=tmp_path, check=False), "exists and is not empty",
                   "overwrite=true")
    assert (tmp_path / "busy" / "keep.txt").is_file()
    run_module("zer02llm.export", [*args, "overwrite=true"], cwd=tmp_path)
    assert (tmp_path / "busy" / "config.json").is_file() and not (tmp_path / "busy" / "keep.txt").exists()


@needs_transformers
@pytest.mark.slow
def test_import_lora_sft_then_export_chain(llama_dir, tmp_path):
    """transformers Llama -> mode.init_from -> a few LoRA SFT steps -> export: what LoRA did not train is
    bit-identical to the original, and the export's logits are the trained checkpoint's."""
    base = [*TINY, "mode=sft", f"mode.init_from={llama_dir}", f"tokenizer.path={llama_dir}", "train.max_steps=3",
            "train.save_interval=3", "lora.rank=4", "hydra.run.dir=run"]
    proc = run_module("zer02llm.train", base, cwd=tmp_path, check=False)
    assert_refused(proc, "model.hidden_dim=64", "model.max_seq_len=64", "model.tie_embeddings=false")
    fix = ["model.hidden_dim=64", "model.max_seq_len=64", "model.rope_theta=10000.0", "model.norm_eps=1e-06",
           "model.tie_embeddings=false"]
    run_module("zer02llm.train", [*base, *fix], cwd=tmp_path)
    run_module("zer02llm.export", ["checkpoint=run", "output=exported"], cwd=tmp_path)
    original = interop.read_transformers_weights(llama_dir)
    exported_weights = interop.read_transformers_weights(tmp_path / "exported")
    assert set(original) == set(exported_weights)
    changed = {k for k in original if not torch.equal(original[k], exported_weights[k])}
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed)
    from zer02llm.inference.loading import load_for_inference

    ours = load_for_inference(str(tmp_path / "run"), "cpu").model
    hf = load_hf(tmp_path / "exported")
    ids = tokens(ours.cfg, length=32)
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() < 1e-4
    assert "lora" in (tmp_path / "exported" / "README.md").read_text().lower()


def test_console_script_is_declared():
    assert 'zer02llm-export = "zer02llm.export:cli"' in (REPO / "pyproject.toml").read_text()
