"""LoRA: low-rank adapters on frozen linear layers (Hu et al., 2021).

A wrapped layer computes y = x W^T + b + dropout(x) A^T B^T * (alpha / rank) with W, b frozen and
only A (rank, in) and B (out, rank) trained. B starts at zero, so the model is unchanged at step 0.

    model = Transformer(cfg); load_weights(model, base_checkpoint)
    apply_lora(model, rank=8, alpha=16)                 # wraps q/k/v/o_proj, freezes everything else
    ... train [p for p in model.parameters() if p.requires_grad] ...
    save_adapter(model, "adapter/", {"base": "..."})   # a few hundred KB
    merge_lora(model)                                   # plain nn.Linear layers again, W + s * B @ A

A LoRALinear owns the wrapped layer's `weight` and `bias` Parameters directly (the same objects, not
copies) instead of holding the nn.Linear as a submodule, so every base weight keeps its state_dict
key (`layers.0.attn.q_proj.weight`) and the adapters add `...q_proj.lora_a` / `...q_proj.lora_b`.
No key remapping hooks are needed: a full checkpoint of a LoRA model is the base checkpoint plus the
adapter tensors, and safetensors' save_model / load_model work on it unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_RESERVED_METADATA = ("rank", "alpha", "dropout", "targets")


class LoRALinear(nn.Module):
    """y = base(x) + dropout(x) @ A^T @ B^T * (alpha / rank); base frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.dropout_p = rank, float(alpha), float(dropout)
        self.scale = self.alpha / rank  # a Python float: a constant to torch.compile, no guard on a tensor
        # the base layer's own Parameters (shared, not copied): same state_dict keys, same storage
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        # attributes set on the layer by the model (e.g. is_residual_proj), given back by merge_lora
        self.base_attributes = {k: v for k, v in vars(base).items()
                                if not k.startswith("_") and k not in ("training", "in_features", "out_features")}
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        # nn.Linear's kaiming-uniform (bound 1/sqrt(in)), as loralib and PEFT do: x @ A^T then has
        # entries of the size of x's whatever `in` is, and since B = 0 the output is unchanged
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        # Identity when off: no dropout kernel (and no copy of x) on the common dropout=0 path
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two thin matmuls (in -> rank -> out) rather than forming B @ A (out x in) every step
        update = F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + update * self.scale

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + scale * B @ A in W's dtype (the product is formed in float32 at least, then rounded once)."""
        compute = torch.promote_types(self.weight.dtype, torch.float32)
        delta = self.lora_b.to(compute) @ self.lora_a.to(compute)
        return (self.weight.to(compute) + self.scale * delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout_p:g}")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile's OptimizedModule, so names carry no `_orig_mod.` prefix."""
    return getattr(model, "_orig_mod", model)


def _matches(name: str, target: str) -> bool:
    # whole path components only: "q_proj" matches "layers.0.attn.q_proj", "proj" matches nothing
    return name == target or name.endswith("." + target)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of the model by module path, in module order."""
    return {name: m for name, m in _unwrap(model).named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets: Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """Wrap every nn.Linear whose name ends with one of `targets` (module path suffix, e.g. "q_proj" matches
    "layers.0.attn.q_proj"); freeze all other parameters; return the wrapped names.

    Everything is checked before the model is touched, so an error leaves it as it was. Call it after
    loading the base weights and before torch.compile and building the optimizer.
    """
    model = _unwrap(model)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"LoRA rank={rank!r} is invalid: it must be a positive integer (e.g. 8)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha={alpha!r} is invalid: it must be a positive number (scale = alpha / rank)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout={dropout!r} is invalid: it must be in [0, 1)")
    if isinstance(targets, str):  # "q_proj" would otherwise be read as the targets q, _, p, ...
        targets = (targets,)
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"LoRA targets={targets!r} is invalid: give module names or path suffixes, "
                         f"e.g. {list(DEFAULT_TARGETS)}")
    if lora_modules(model):
        raise ValueError(f"the model already has LoRA adapters on {list(lora_modules(model))}: "
                         f"merge_lora() it (or build a fresh model) before applying LoRA again")

    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    available = sorted({name.rsplit(".", 1)[-1] for name in linears})
    unmatched = [t for t in targets if not any(_matches(name, t) for name in linears)]
    if unmatched:
        # e.g. an MoE layer's routed experts: stacked Parameters named gate_proj, not nn.Linear modules
        others = [f"{n} ({type(v).__name__})" for n, v in [*model.named_modules(), *model.named_parameters()]
                  if n not in linears and any(_matches(n, t) for t in unmatched)]
        hint = f" (these names are not nn.Linear modules: {others[:4]})" if others else ""
        raise ValueError(f"LoRA targets {unmatched} match no nn.Linear in the model{hint}; "
                         f"available linear-layer suffixes: {available}")
    chosen = [name for name in linears if any(_matches(name, t) for t in targets)]

    # A tied weight is used elsewhere too (lm_head.weight is tok_embeddings.weight): merging would
    # change the embedding as well, so the merged model would not equal the adapted one.
    names_of: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(pname)
    for name in chosen:
        shared = [n for n in names_of[id(linears[name].weight)] if n != f"{name}.weight"]
        if shared:
            hit = [t for t in targets if _matches(name, t)]
            raise ValueError(f"LoRA target {hit[0]!r} matches {name}, whose weight is tied to {shared[0]}; "
                             f"LoRA cannot adapt a tied weight: drop it from the targets "
                             f"(untied linear layers: {sorted(set(available) - {name.rsplit('.', 1)[-1]})})")

    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        # a new module starts in training mode: take the replaced layer's, or an eval model gets dropout
        setattr(parent, child, LoRALinear(linears[name], rank, alpha, dropout).train(linears[name].training))
    return chosen


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter Parameters (A and B of every LoRALinear), the only ones apply_lora leaves trainable."""
    return [p for m in lora_modules(model).values() for p in (m.lora_a, m.lora_b)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, keyed like the model's state_dict ("layers.0.attn.q_proj.lora_a")."""
    state = {}
    for name, m in lora_modules(model).items():
        state[f"{name}.lora_a"] = m.lora_a.detach()
        state[f"{name}.lora_b"] = m.lora_b.detach()
    return state


def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy adapter tensors into the model's LoRALinear layers; every key and shape must fit exactly."""
    own = lora_state_dict(model)
    if not own:
        raise ValueError("the model has no LoRA adapters to load into: apply_lora() it first "
                         "with the adapter's rank, alpha and targets")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: adapter {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if unexpected:
            problems.append(f"unexpected {unexpected}")
        if mismatched:
            problems.append(f"shape mismatch {mismatched}")
        raise ValueError("LoRA adapter does not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for k, tensor in own.items():
            tensor.copy_(state[k])  # casts to the model's dtype and device


def merge_lora(model: nn.Module) -> nn.Module:
    """In place: replace each LoRALinear by an nn.Linear holding W + scale * B @ A (W's dtype and device,
    the base bias, the base's requires_grad); returns the model."""
    root = _unwrap(model)
    for name, m in lora_modules(root).items():
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        # built on the meta device: no throwaway random init of a full-size weight
        linear = nn.Linear(m.in_features, m.out_features, bias=False, device="meta")
        linear.weight = nn.Parameter(m.merged_weight(), requires_grad=m.weight.requires_grad)
        linear.register_parameter("bias", m.bias)
        for key, value in m.base_attributes.items():
            setattr(linear, key, value)
        setattr(parent, child, linear.train(m.training))
    return model


def save_adapter(model: nn.Module, directory: str | os.PathLike, metadata: Mapping[str, Any]) -> Path:
    """Write directory/adapter.safetensors and directory/adapter.json ({rank, alpha, dropout, targets,
    **metadata}) atomically: into a temporary directory that is renamed into place.

    `targets` are the wrapped module paths, so apply_lora(model, rank, alpha, dropout, targets) on a fresh
    base model wraps exactly the same layers. An existing adapter directory is replaced; a directory
    holding anything else is refused rather than deleted. The trainer's metadata is {step, mode, model}:
    `mode` ("pretrain" or "sft") is what the adapter was trained for, so loading it on a base of another
    mode (an SFT adapter on a pretrained base) takes the adapter's.
    """
    modules = lora_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA adapters to save: apply_lora() it first")
    settings = {(m.rank, m.alpha, m.dropout_p) for m in modules.values()}
    if len(settings) > 1:
        raise ValueError(f"LoRA layers have differing (rank, alpha, dropout) {sorted(settings)}; "
                         f"an adapter file records one setting")
    clash = sorted(set(metadata) & set(_RESERVED_METADATA))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved for the adapter's own settings "
                         f"{list(_RESERVED_METADATA)}")
    rank, alpha, dropout = settings.pop()
    config = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(modules), **metadata}
    text = json.dumps(config, indent=2, default=str)  # before touching the disk: a bad value fails here

    final = Path(directory)
    adapter_files = {ADAPTER_WEIGHTS, ADAPTER_CONFIG}
    if final.exists() and not (final.is_dir() and {p.name for p in final.iterdir()} <= adapter_files):
        raise FileExistsError(f"{final} exists and is not an adapter directory (only {ADAPTER_WEIGHTS} and "
                              f"{ADAPTER_CONFIG}); refusing to replace it: choose a new directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (tmp / ADAPTER_CONFIG).write_text(text + "\n")
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # the old adapter stays on disk until the new one is in place
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_adapter(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(adapter tensors on the CPU, adapter.json) of a directory written by save_adapter; no pickle."""
    directory = Path(directory)
    weights, config_path = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
    absent = [p.name for p in (weights, config_path) if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"no LoRA adapter at {directory}: {', '.join(absent)} not found "
                                f"(save_adapter writes {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or any(k not in config for k in _RESERVED_METADATA):
        raise ValueError(f"{config_path} lacks the adapter settings {list(_RESERVED_METADATA)}")
    return load_file(str(weights), device="cpu"), config
