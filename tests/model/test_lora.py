"""Tests of LoRA (zer02llm.model.lora): exactness at step 0, frozen base, merging, adapter files, errors,
torch.compile. Small shapes on CPU; weights re-drawn at unit scale so every layer matters (see test_model.py).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_model, save_model

from zer02llm.config import ModelConfig
from zer02llm.model import Transformer
from zer02llm.model.lora import (LoRALinear, apply_lora, load_adapter, load_lora_state_dict, lora_modules,
                                 lora_parameters, lora_state_dict, merge_lora, save_adapter)

from conftest import randomize

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")
VOCAB = 97


def small_cfg(**overrides) -> ModelConfig:
    values = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=100.0)
    values.update(overrides)
    return ModelConfig(**values)


def build(dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> Transformer:
    """A small model with unit-scale weights (1/sqrt(fan_in)) and norm gains around 1."""
    torch.manual_seed(seed)
    return randomize(Transformer(small_cfg(**overrides)), seed).to(dtype).eval()


def tokens(batch: int = 2, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model: nn.Module, seed: int = 2, std: float = 0.3) -> None:
    """Non-zero B (and a fresh A), so merging and saving are tested on adapters that change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(std * torch.randn(p.shape, generator=gen, dtype=torch.float64))


def train_steps(model: nn.Module, steps: int = 3, lr: float = 1e-2) -> torch.optim.Optimizer:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        x, y = tokens(4, 16, seed=10 + step), tokens(4, 16, seed=20 + step)
        model(x, y).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return optimizer


# --------------------------------------------------------------------------------------------------
# 1. the layer


def test_lora_linear_matches_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(12, 7, bias=True).double()
    layer = LoRALinear(base, rank=3, alpha=6.0)
    assert layer.weight is base.weight and layer.bias is base.bias  # shared, not copied
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_a.shape == (3, 12) and layer.lora_b.shape == (7, 3)
    assert torch.count_nonzero(layer.lora_b) == 0 and torch.count_nonzero(layer.lora_a) > 0
    bound = 1 / math.sqrt(12)  # kaiming-uniform with a=sqrt(5), as nn.Linear draws its weight
    assert layer.lora_a.abs().max() <= bound
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    s = 6.0 / 3
    expected = x @ (base.weight + s * layer.lora_b @ layer.lora_a).T + base.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.merged_weight(), base.weight + s * layer.lora_b @ layer.lora_a,
                               rtol=1e-12, atol=1e-12)
    assert set(dict(layer.named_parameters())) == {"weight", "bias", "lora_a", "lora_b"}


def test_lora_linear_dropout_only_on_the_adapter_branch():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 16, bias=False), rank=4, alpha=4.0, dropout=0.5)
    x = torch.randn(64, 16)
    base_out = x @ layer.weight.T
    assert torch.equal(layer.train()(x), base_out)  # B = 0: dropout cannot show
    with torch.no_grad():
        layer.lora_b.normal_()
    torch.manual_seed(1)
    train_out = layer.train()(x)
    eval_out = layer.eval()(x)
    assert not torch.allclose(train_out, eval_out)
    torch.testing.assert_close(eval_out, x @ layer.merged_weight().T)


# --------------------------------------------------------------------------------------------------
# 2. applying LoRA to the Transformer


def test_step_zero_logits_equal_the_base_model_exactly():
    base = build()
    model = copy.deepcopy(base)
    wrapped = apply_lora(model, rank=4, alpha=8.0)
    assert wrapped == [f"layers.{i}.attn.{p}" for i in range(2) for p in ATTN]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in wrapped)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x).logits, base(x).logits)


def test_state_dict_keeps_base_keys_and_adds_adapters():
    base = build()
    model = copy.deepcopy(base)
    apply_lora(model, rank=4, alpha=8.0, targets=ATTN + FFN)
    keys, base_keys = set(model.state_dict()), set(base.state_dict())
    adapter_keys = keys - base_keys
    assert base_keys <= keys
    assert adapter_keys == set(lora_state_dict(model))
    assert "layers.0.attn.q_proj.lora_a" in adapter_keys and "layers.1.ffn.down_proj.lora_b" in adapter_keys
    for k in base_keys:
        assert torch.equal(model.state_dict()[k], base.state_dict()[k]), k
    assert model.lm_head.weight is model.tok_embeddings.weight  # the tie survives
    # the layer is still reachable as before (code that reads q_proj.weight keeps working)
    assert model.layers[0].attn.q_proj.weight.shape == base.layers[0].attn.q_proj.weight.shape


def test_only_adapters_train_and_base_weights_stay_bit_identical():
    model = build()
    wrapped = apply_lora(model, rank=4, alpha=8.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{a}" for n in wrapped for a in ("lora_a", "lora_b")}
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    adapters_before = {k: v.clone() for k, v in lora_state_dict(model).items()}

    optimizer = train_steps(model, steps=3)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in lora_parameters(model)}
    assert len(in_optimizer) == 2 * len(wrapped)

    for k, v in model.state_dict().items():
        if k in frozen_before:
            assert torch.equal(v, frozen_before[k]), f"{k} changed"
    after = lora_state_dict(model)
    for k, v in adapters_before.items():
        assert not torch.equal(after[k], v), f"{k} did not change"
    assert all(torch.count_nonzero(after[f"{n}.lora_b"]) > 0 for n in wrapped)


def test_ffn_targets():
    base = build()
    model = copy.deepcopy(base)
    wrapped = apply_lora(model, rank=2, alpha=4.0, targets=FFN)
    assert wrapped == [f"layers.{i}.ffn.{p}" for i in range(2) for p in FFN]
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x).logits, base(x).logits)
    train_steps(model, steps=2)
    with torch.no_grad():
        adapted = model(x).logits
        assert not torch.allclose(adapted, base(x).logits)
        merge_lora(model)
        torch.testing.assert_close(model(x).logits, adapted, rtol=1e-4, atol=1e-4)


def test_targets_match_whole_path_components():
    model = build()
    # a full path picks one layer; a multi-component suffix picks that layer in every block
    assert apply_lora(copy.deepcopy(model), 2, 2.0, targets=["layers.1.attn.v_proj"]) == ["layers.1.attn.v_proj"]
    assert apply_lora(copy.deepcopy(model), 2, 2.0, targets=["ffn.up_proj"]) == ["layers.0.ffn.up_proj",
                                                                               "layers.1.ffn.up_proj"]
    assert apply_lora(copy.deepcopy(model), 2, 2.0, targets="o_proj") == ["layers.0.attn.o_proj",
                                                                        "layers.1.attn.o_proj"]
    with pytest.raises(ValueError, match=r"\['proj'\] match no nn.Linear"):
        apply_lora(copy.deepcopy(model), 2, 2.0, targets=["proj"])  # not a substring match


# --------------------------------------------------------------------------------------------------
# 3. errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), r"rank=0 is invalid: it must be a positive integer"),
    (dict(rank=-2), r"rank=-2 is invalid"),
    (dict(rank=2.5), r"rank=2.5 is invalid"),
    (dict(alpha=0), r"alpha=0 is invalid: it must be a positive number"),
    (dict(alpha=float("nan")), r"alpha=nan is invalid"),
    (dict(dropout=1.0), r"dropout=1.0 is invalid: it must be in \[0, 1\)"),
    (dict(dropout=-0.1), r"dropout=-0.1 is invalid"),
    (dict(targets=["qproj"]), r"targets \['qproj'\] match no nn.Linear in the model; available linear-layer "
                              r"suffixes: \['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', "
                              r"'up_proj', 'v_proj'\]"),
    (dict(targets=["q_proj", "nope"]), r"targets \['nope'\] match no nn.Linear"),
    (dict(targets=["attn"]), r"not nn.Linear modules: \['layers.0.attn \(Attention\)'"),
    (dict(targets=[]), r"targets=\[\] is invalid"),
    (dict(targets=["q_proj", "lm_head"]), r"target 'lm_head' matches lm_head, whose weight is tied to "
                                          r"tok_embeddings.weight"),
])
def test_bad_arguments_are_refused_and_leave_the_model_alone(kwargs, message):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = dict(rank=4, alpha=8.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **args)
    assert not lora_modules(model)
    assert all(p.requires_grad for p in model.parameters())
    assert set(model.state_dict()) == set(before)


def test_untied_lm_head_can_be_adapted():
    model = build(tie_embeddings=False)
    assert apply_lora(model, 2, 2.0, targets=["lm_head"]) == ["lm_head"]
    assert not model.tok_embeddings.weight.requires_grad


def test_applying_twice_is_refused():
    model = build()
    apply_lora(model, 2, 2.0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, 2, 2.0, targets=FFN)


def test_load_lora_state_dict_is_strict():
    model = build()
    apply_lora(model, rank=4, alpha=8.0)
    good = {k: v.clone() for k, v in lora_state_dict(model).items()}
    missing = dict(good)
    del missing["layers.0.attn.q_proj.lora_a"]
    with pytest.raises(ValueError, match=r"missing \['layers.0.attn.q_proj.lora_a'\]"):
        load_lora_state_dict(model, missing)
    with pytest.raises(ValueError, match=r"unexpected \['layers.0.ffn.up_proj.lora_a'\]"):
        load_lora_state_dict(model, {**good, "layers.0.ffn.up_proj.lora_a": torch.zeros(4, 32)})
    with pytest.raises(ValueError, match=r"shape mismatch \['layers.1.attn.k_proj.lora_b: adapter \(16, 8\), "
                                         r"model \(16, 4\)'\]"):
        load_lora_state_dict(model, {**good, "layers.1.attn.k_proj.lora_b": torch.zeros(16, 8)})
    with pytest.raises(ValueError, match="no LoRA adapters to load into"):
        load_lora_state_dict(build(), good)


# --------------------------------------------------------------------------------------------------
# 4. merging


def test_merged_model_equals_the_lora_model():
    model = build(torch.float64)
    base_keys = set(model.state_dict())
    apply_lora(model, rank=4, alpha=8.0, targets=ATTN + FFN)
    randomize_adapters(model)
    x = tokens()
    with torch.no_grad():
        adapted = model(x).logits
    assert merge_lora(model) is model
    assert not lora_modules(model) and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == base_keys
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(type(m) is nn.Linear and m.weight.dtype == torch.float64 for m in linears)
    assert model.layers[0].attn.o_proj.is_residual_proj and model.layers[1].ffn.down_proj.is_residual_proj
    assert model.lm_head.weight is model.tok_embeddings.weight
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, adapted, rtol=1e-10, atol=1e-10)


def test_merge_keeps_the_dtype():
    model = build(torch.bfloat16)
    apply_lora(model, rank=4, alpha=8.0)
    randomize_adapters(model, std=0.05)
    expected = model.layers[0].attn.q_proj.merged_weight()
    merge_lora(model)
    weight = model.layers[0].attn.q_proj.weight
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, expected)


# --------------------------------------------------------------------------------------------------
# 5. files


def test_save_and_load_adapter_round_trip(tmp_path):
    model = build()
    apply_lora(model, rank=4, alpha=8.0, dropout=0.1, targets=ATTN + ("down_proj",))
    train_steps(model, steps=2)
    path = save_adapter(model, tmp_path / "adapter", {"base_checkpoint": "step_0000400", "step": 2})
    assert path == tmp_path / "adapter"
    assert sorted(p.name for p in path.iterdir()) == ["adapter.json", "adapter.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary directory left behind

    state, meta = load_adapter(path)
    assert json.loads((path / "adapter.json").read_text()) == meta
    assert meta["rank"] == 4 and meta["alpha"] == 8.0 and meta["dropout"] == 0.1
    assert meta["base_checkpoint"] == "step_0000400" and meta["step"] == 2
    assert set(state) == set(lora_state_dict(model))

    fresh = build()  # the same base weights, new adapters
    apply_lora(fresh, meta["rank"], meta["alpha"], meta["dropout"], meta["targets"])
    assert list(lora_modules(fresh)) == list(lora_modules(model))
    load_lora_state_dict(fresh, state)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, model(x).logits)

    # saving again replaces the adapter; a directory with other files is refused, not deleted
    randomize_adapters(model, seed=5)
    save_adapter(model, path, {})
    assert torch.equal(load_adapter(path)[0]["layers.0.attn.q_proj.lora_a"], model.layers[0].attn.q_proj.lora_a)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "model.safetensors").write_text("x")
    with pytest.raises(FileExistsError, match="not an adapter directory"):
        save_adapter(model, tmp_path / "checkpoint", {})
    assert (tmp_path / "checkpoint" / "model.safetensors").read_text() == "x"
    with pytest.raises(ValueError, match=r"metadata keys \['rank'\] are reserved"):
        save_adapter(model, tmp_path / "other", {"rank": 3})
    with pytest.raises(ValueError, match="no LoRA adapters to save"):
        save_adapter(build(), tmp_path / "other", {})


def test_load_adapter_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"no LoRA adapter at .*nowhere: adapter.safetensors, adapter.json not found"):
        load_adapter(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="adapter.safetensors not found"):
        load_adapter(tmp_path / "half")


def test_full_safetensors_checkpoint_of_a_lora_model(tmp_path):
    """checkpoint.py's save_model/load_model work on a LoRA model: base keys as before plus the adapters."""
    model = build()
    apply_lora(model, rank=4, alpha=8.0)
    randomize_adapters(model)
    save_model(model, str(tmp_path / "model.safetensors"))
    fresh = build(seed=3)
    apply_lora(fresh, rank=4, alpha=8.0)
    missing, unexpected = load_model(fresh, str(tmp_path / "model.safetensors"), strict=True)
    assert not missing and not unexpected
    x = tokens()
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, model(x).logits)


def test_adapter_is_orders_of_magnitude_smaller_than_the_model(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, max_seq_len=256)
    model = Transformer(cfg)
    save_model(model, str(tmp_path / "model.safetensors"))
    apply_lora(model, rank=8, alpha=16.0)
    save_adapter(model, tmp_path / "adapter", {})
    full = (tmp_path / "model.safetensors").stat().st_size
    adapter = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    ratio = adapter / full
    print(f"\nfull model {full:,} bytes, adapter {adapter:,} bytes, ratio 1/{1 / ratio:.0f}")
    assert ratio < 1 / 20


# --------------------------------------------------------------------------------------------------
# 6. torch.compile


def test_no_graph_breaks_and_compiled_training_matches_eager():
    torch._dynamo.reset()
    model = build()
    apply_lora(model, rank=4, alpha=8.0, dropout=0.1, targets=ATTN + FFN)
    randomize_adapters(model)
    model.train()
    x, y = tokens(2, 16), tokens(2, 16, seed=3)
    explanation = torch._dynamo.explain(model)(x, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    # the compiled forward and backward (aot_eager: autograd traced, no C++ toolchain needed) agree with eager
    model.eval()  # no dropout, so both runs see the same function
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert list(lora_state_dict(compiled)) == list(lora_state_dict(model))  # no "_orig_mod." prefix
    eager_loss = model(x, y).loss
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in lora_parameters(model)]
    model.zero_grad(set_to_none=True)
    compiled_loss = compiled(x, y).loss
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss)
    for p, g in zip(lora_parameters(model), eager_grads):
        torch.testing.assert_close(p.grad, g)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    torch._dynamo.reset()
