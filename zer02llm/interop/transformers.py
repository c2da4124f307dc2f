"""Hugging Face transformers interop: our model's config and tensor names <-> transformers', both ways.

The one place that knows transformers' names (the model never does); used by `zer02llm.export` and by
`mode.init_from=<a transformers model directory>`. transformers itself is never imported: the files it
reads (config.json, safetensors) are written and read directly. Which architecture a config becomes:

    dense                                                      -> LlamaForCausalLM
    MoE, every layer MoE, top-k > 1 renormalised, no shared    -> MixtralForCausalLM
    MoE, every layer MoE, top-k > 1 renormalised, shared >= 1  -> GraniteMoeSharedForCausalLM
    anything else                                              -> refused, naming the keys to change

Our rotary embedding already rotates the channel pairs (i, i + head_dim/2), as transformers' rotate_half
does, so q/k projections are copied unpermuted (tests/test_interop.py checks the logits).
torch and safetensors are imported inside the functions that move tensors: the config mapping runs in
config.validate() before anything heavy is loaded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from zer02llm.config import ConfigError, ModelConfig, MoEConfig

if TYPE_CHECKING:
    import torch

LLAMA, MIXTRAL, GRANITE_MOE_SHARED = "LlamaForCausalLM", "MixtralForCausalLM", "GraniteMoeSharedForCausalLM"
MODEL_TYPES = {LLAMA: "llama", MIXTRAL: "mixtral", GRANITE_MOE_SHARED: "granitemoeshared"}
WEIGHTS_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"

# per block, the tensors every architecture names alike (ours -> transformers', under model.layers.{i}.)
_ATTENTION = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_DENSE_FFN = {f"ffn.{p}.weight": f"mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}


class InteropError(ConfigError):
    """A model that cannot cross to or from transformers unchanged; the message names the keys."""


# ---------------------------------------------------------------------------------------------- export

def moe_layout_problems(cfg: MoEConfig, target: str, allow_dropless: bool = False) -> list[str]:
    """Why a standard MoE layout (experts in every layer, top-k >= 2 renormalised, dropless), as `target`
    computes it, would not reproduce `cfg`'s forward; the same rules for transformers' and llama.cpp's layers."""
    problems = []
    if cfg.moe_layer_interval != 1:
        problems.append(f"model.moe_layer_interval={cfg.moe_layer_interval} (set 1: {target} put experts in every "
                        f"layer)")
    if cfg.experts_per_token == 1:
        problems.append(f"model.experts_per_token=1 (set >= 2: with one expert per token zer02llm weighs its output "
                        f"by the router probability, {target} by 1)")
    elif not cfg.norm_topk_prob:
        problems.append(f"model.norm_topk_prob=false (set true: {target} renormalise the top-k router "
                        f"probabilities)")
    if cfg.capacity_factor > 0 and not allow_dropless:
        problems.append(f"model.capacity_factor={cfg.capacity_factor} ({target}'s MoE layers are dropless: where "
                        f"an expert overflows, the export would keep the tokens that this model drops; "
                        f"allow_dropless=true exports anyway, as the dropless model)")
    return problems


def export_problems(cfg: ModelConfig, allow_dropless: bool = False) -> list[str]:
    """Why `cfg` has no transformers architecture with exactly its forward (empty: it has one)."""
    if not isinstance(cfg, MoEConfig):
        return []
    return moe_layout_problems(cfg, "Mixtral and GraniteMoeShared", allow_dropless)


def architecture_for(cfg: ModelConfig, allow_dropless: bool = False) -> str:
    """The transformers architecture whose forward is exactly `cfg`'s, or an InteropError naming the keys."""
    problems = export_problems(cfg, allow_dropless)
    if problems:
        raise InteropError("no architecture shipped with transformers reproduces this MoE model's outputs: "
                           + "; ".join(problems) + ". Exportable MoE configurations: docs/interop.md")
    if not isinstance(cfg, MoEConfig):
        return LLAMA
    return GRANITE_MOE_SHARED if cfg.num_shared_experts > 0 else MIXTRAL


def transformers_config(cfg: ModelConfig, dtype: str, bos_id: int, eos_id: int, pad_id: int,
                        allow_dropless: bool = False) -> dict[str, Any]:
    """config.json of the exported model (`dtype`: the weights' dtype name, e.g. "float32")."""
    arch = architecture_for(cfg, allow_dropless)
    config: dict[str, Any] = {
        "architectures": [arch], "model_type": MODEL_TYPES[arch],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        # rope_parameters is transformers 5's form; rope_theta the one older readers (vLLM, llama.cpp) take
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "attention_dropout": 0.0,
        "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
        "torch_dtype": dtype, "dtype": dtype,
    }
    if arch == LLAMA:
        config.update(intermediate_size=cfg.ffn_dim, mlp_bias=False, pretraining_tp=1)
        return config
    config.update(intermediate_size=cfg.expert_ffn_dim, num_local_experts=cfg.num_experts,
                  num_experts_per_tok=cfg.experts_per_token, router_aux_loss_coef=cfg.aux_loss_alpha,
                  output_router_logits=False)
    if arch == MIXTRAL:
        config.update(sliding_window=None, router_jitter_noise=0.0)
    else:  # Granite's scalings set to what Llama does; its shared MLP is our shared experts side by side
        config.update(shared_intermediate_size=cfg.num_shared_experts * cfg.expert_ffn_dim, embedding_multiplier=1.0,
                      residual_multiplier=1.0, logits_scaling=1.0, attention_multiplier=cfg.head_dim ** -0.5)
    return config


def to_transformers(state: dict[str, "torch.Tensor"], cfg: ModelConfig,
                    allow_dropless: bool = False) -> dict[str, "torch.Tensor"]:
    """Our state dict -> transformers' tensors (contiguous copies where the layout differs)."""
    import torch

    arch = architecture_for(cfg, allow_dropless)
    out = {"model.embed_tokens.weight": state["tok_embeddings.weight"], "model.norm.weight": state["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for a, b in _ATTENTION.items():
            out[theirs + b] = state[ours + a]
        if arch == LLAMA:
            for a, b in _DENSE_FFN.items():
                out[theirs + b] = state[ours + a]
            continue
        gate, up, down = (state[f"{ours}ffn.{p}"] for p in ("gate_proj", "up_proj", "down_proj"))  # (E, in, out)
        if arch == MIXTRAL:
            moe = theirs + "block_sparse_moe."
            out[moe + "gate.weight"] = state[ours + "ffn.router.weight"]
            for e in range(cfg.num_experts):  # the per-expert layout of Mixtral checkpoints on the Hub
                out[f"{moe}experts.{e}.w1.weight"] = gate[e].t().contiguous()
                out[f"{moe}experts.{e}.w2.weight"] = down[e].t().contiguous()
                out[f"{moe}experts.{e}.w3.weight"] = up[e].t().contiguous()
            continue
        moe = theirs + "block_sparse_moe."
        out[moe + "router.layer.weight"] = state[ours + "ffn.router.weight"]
        out[moe + "input_linear.weight"] = torch.cat([gate.transpose(1, 2), up.transpose(1, 2)], dim=1).contiguous()
        out[moe + "output_linear.weight"] = down.transpose(1, 2).contiguous()
        shared = [f"{ours}ffn.shared_experts.{j}." for j in range(cfg.num_shared_experts)]
        out[theirs + "shared_mlp.input_linear.weight"] = torch.cat(
            [state[s + "gate_proj.weight"] for s in shared] + [state[s + "up_proj.weight"] for s in shared])
        out[theirs + "shared_mlp.output_linear.weight"] = torch.cat([state[s + "down_proj.weight"] for s in shared], 1)
    return out


# ---------------------------------------------------------------------------------------------- import

def read_config_json(directory: str | Path) -> Optional[dict[str, Any]]:
    """The directory's config.json when it is a transformers model (has "architectures", no zer02llm
    "model" section), else None."""
    file = Path(directory) / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # not ours to judge: the checkpoint reader names the damage
    if not isinstance(config, dict) or "architectures" not in config or "model" in config:
        return None
    return config


def is_transformers_dir(directory: str | Path) -> bool:
    return read_config_json(directory) is not None


def _rope_theta(config: dict[str, Any], unsupported: list[str]) -> float:
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    if isinstance(params, dict):
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            unsupported.append(f"rope_parameters.rope_type={kind!r} (only plain rotary embeddings)")
        extra = sorted(set(params) - {"rope_type", "type", "rope_theta", "partial_rotary_factor"})
        if extra and kind == "default":
            unsupported.append(f"rope_parameters keys {extra}")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            unsupported.append(f"partial_rotary_factor={params['partial_rotary_factor']}")
        theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    else:
        theta = config.get("rope_theta", 10000.0)
    if scaling not in (None, {}) and not (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type"))
                                          == "default"):
        unsupported.append(f"rope_scaling={scaling!r}")
    return float(theta)


def model_config_from_transformers(config: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """A transformers config.json -> our ModelConfig; features we have not are refused, listed."""
    archs = config.get("architectures") or []
    arch = archs[0] if len(archs) == 1 else None
    if arch not in MODEL_TYPES:
        raise InteropError(f"{where}: architectures={archs}: mode.init_from reads {', '.join(MODEL_TYPES)} "
                           f"directories")
    unsupported = []
    for key, fine in (("hidden_act", ("silu",)), ("attention_bias", (False, None)), ("mlp_bias", (False, None)),
                      ("sliding_window", (None,)), ("use_sliding_window", (False, None)),
                      ("partial_rotary_factor", (1.0, None)), ("pretraining_tp", (1, None))):
        if config.get(key) not in fine:
            unsupported.append(f"{key}={config.get(key)!r}")
    for key in ("qk_layernorm", "use_qk_norm", "clip_qkv"):
        if config.get(key):
            unsupported.append(f"{key}={config[key]!r}")
    if any(t != "full_attention" for t in config.get("layer_types") or []):
        unsupported.append(f"layer_types={config['layer_types']} (every layer full attention only)")
    theta = _rope_theta(config, unsupported)
    dim, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if not all(isinstance(config.get(k), int) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                        "num_attention_heads", "intermediate_size")):
        raise InteropError(f"{where}: vocab_size, hidden_size, num_hidden_layers, num_attention_heads and "
                           f"intermediate_size must be integers")
    head_dim = config.get("head_dim") or dim // heads
    if head_dim * heads != dim:
        unsupported.append(f"head_dim={head_dim} with hidden_size={dim}, num_attention_heads={heads} "
                           f"(zer02llm's head_dim is hidden_size / num_attention_heads)")
    values = dict(vocab_size=config["vocab_size"], dim=dim, n_layers=config["num_hidden_layers"], n_heads=heads,
                  n_kv_heads=config.get("num_key_value_heads") or heads,
                  max_seq_len=config.get("max_position_embeddings", 2048), rope_theta=theta,
                  norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                  tie_embeddings=bool(config.get("tie_word_embeddings", arch != LLAMA)))
    if arch == LLAMA:
        cfg: ModelConfig = ModelConfig(hidden_dim=config["intermediate_size"], **values)
    else:
        top_k, shared = config.get("num_experts_per_tok", 2), 0
        if top_k == 1:
            unsupported.append("num_experts_per_tok=1 (its expert weighs 1 there, its router probability here)")
        if arch == GRANITE_MOE_SHARED:
            for key in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
                if config.get(key, 1.0) != 1.0:
                    unsupported.append(f"{key}={config[key]}")
            if not math.isclose(config.get("attention_multiplier", 1.0), head_dim ** -0.5, rel_tol=1e-6):
                unsupported.append(f"attention_multiplier={config.get('attention_multiplier', 1.0)} "
                                   f"(only 1/sqrt(head_dim) = {head_dim ** -0.5:.6g})")
            shared_width = config.get("shared_intermediate_size", 0)
            if shared_width % config["intermediate_size"]:
                unsupported.append(f"shared_intermediate_size={shared_width} (a multiple of intermediate_size="
                                   f"{config['intermediate_size']}: zer02llm's shared experts are expert-sized)")
            shared = shared_width // config["intermediate_size"]
        cfg = MoEConfig(num_experts=config.get("num_local_experts", 8), experts_per_token=top_k,
                        num_shared_experts=shared, norm_topk_prob=True, moe_layer_interval=1,
                        expert_hidden_dim=config["intermediate_size"],
                        aux_loss_alpha=float(config.get("router_aux_loss_coef", 0.01)), **values)
    if unsupported:
        raise InteropError(f"{where} ({arch}) uses what zer02llm's model does not have: " + ", ".join(unsupported))
    return cfg


def architecture_values(cfg: ModelConfig) -> dict[str, Any]:
    """The model keys that fix the weights and the outputs (training-only keys like dropout left out)."""
    values = {k: getattr(cfg, k) for k in ("name", "vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads",
                                           "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings")}
    moe = isinstance(cfg, MoEConfig)
    if not moe or any(not cfg.is_moe_layer(i) for i in range(cfg.n_layers)):
        values["hidden_dim"] = cfg.ffn_dim  # the dense width, where some layer is dense
    if moe:
        values.update(num_experts=cfg.num_experts, experts_per_token=cfg.experts_per_token,
                      num_shared_experts=cfg.num_shared_experts, moe_layer_interval=cfg.moe_layer_interval,
                      expert_hidden_dim=cfg.expert_ffn_dim,
                      norm_topk_prob=cfg.norm_topk_prob or cfg.experts_per_token == 1)
    return values


def config_differences(run: ModelConfig, imported: ModelConfig) -> list[str]:
    """`key=value` overrides that make the run's model config the imported one ([] when they agree)."""
    mine, theirs = architecture_values(run), architecture_values(imported)
    if mine["name"] != theirs["name"]:
        return [f"model={theirs['name']}"] + [f"model.{k}={_override(v)}" for k, v in theirs.items() if k != "name"]
    return [f"model.{k}={_override(theirs[k])}" for k in theirs if k != "name" and mine.get(k) != theirs[k]]


def _override(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def init_from_problems(directory: str, run: ModelConfig) -> list[str]:
    """What keeps `mode.init_from=<directory>` from starting this run ([] for a zer02llm checkpoint)."""
    config = read_config_json(directory)
    if config is None:
        return []
    try:
        imported = model_config_from_transformers(config, f"mode.init_from={directory}: config.json")
    except InteropError as e:
        return [str(e)]
    differences = config_differences(run, imported)
    if not differences:
        return []
    return [f"mode.init_from={directory} is a {config['architectures'][0]} whose config differs from this run's "
            f"model config: give " + " ".join(differences)]


def read_transformers_weights(directory: str | Path) -> dict[str, "torch.Tensor"]:
    """Every tensor of a transformers directory: model.safetensors, or the shards its index lists."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        found = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt*"))
        raise InteropError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}" + (
            f" (only {', '.join(found)}: save it with save_pretrained(safe_serialization=True))" if found else ""))
    tensors = {}
    for name in files:
        try:
            tensors.update(load_file(str(directory / name)))
        except (SafetensorError, FileNotFoundError) as e:
            raise InteropError(f"{directory / name}: cannot read the weights ({e})") from None
    return tensors


def from_transformers(tensors: dict[str, "torch.Tensor"], cfg: ModelConfig) -> dict[str, "torch.Tensor"]:
    """transformers' tensors -> our state dict (both head names when tied); missing or extra tensors refused."""
    import torch

    arch = architecture_for(cfg, allow_dropless=True)
    left = dict(tensors)

    def take(name: str) -> "torch.Tensor":
        if name not in left:
            raise InteropError(f"the transformers weights lack {name}")
        return left.pop(name)

    state = {"tok_embeddings.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if cfg.tie_embeddings:
        left.pop("lm_head.weight", None)  # some writers store the tied head as well
        state["lm_head.weight"] = state["tok_embeddings.weight"]
    else:
        state["lm_head.weight"] = take("lm_head.weight")
    H = cfg.expert_ffn_dim if isinstance(cfg, MoEConfig) else 0
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for a, b in _ATTENTION.items():
            state[ours + a] = take(theirs + b)
        left.pop(f"{theirs}self_attn.rotary_emb.inv_freq", None)  # old checkpoints carry it; recomputed here
        if arch == LLAMA:
            for a, b in _DENSE_FFN.items():
                state[ours + a] = take(theirs + b)
            continue
        moe = theirs + "block_sparse_moe."
        if arch == MIXTRAL:
            state[ours + "ffn.router.weight"] = take(moe + "gate.weight")
            for ours_name, theirs_name in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
                state[f"{ours}ffn.{ours_name}"] = torch.stack(
                    [take(f"{moe}experts.{e}.{theirs_name}.weight").t() for e in range(cfg.num_experts)]).contiguous()
            continue
        state[ours + "ffn.router.weight"] = take(moe + "router.layer.weight")
        gate_up = take(moe + "input_linear.weight")  # (E, 2H, D)
        state[ours + "ffn.gate_proj"] = gate_up[:, :H].transpose(1, 2).contiguous()
        state[ours + "ffn.up_proj"] = gate_up[:, H:].transpose(1, 2).contiguous()
        state[ours + "ffn.down_proj"] = take(moe + "output_linear.weight").transpose(1, 2).contiguous()
        if cfg.num_shared_experts:
            n = cfg.num_shared_experts
            shared_in, shared_out = take(theirs + "shared_mlp.input_linear.weight"), take(theirs + "shared_mlp.output_linear.weight")
            for j in range(n):
                s = f"{ours}ffn.shared_experts.{j}."
                state[s + "gate_proj.weight"] = shared_in[j * H:(j + 1) * H].clone()
                state[s + "up_proj.weight"] = shared_in[(n + j) * H:(n + j + 1) * H].clone()
                state[s + "down_proj.weight"] = shared_out[:, j * H:(j + 1) * H].contiguous()
    if left:
        shown = sorted(left)[:5]
        raise InteropError(f"the transformers weights hold tensors zer02llm's model has no place for: {shown}"
                           + (f" and {len(left) - 5} more" if len(left) > 5 else ""))
    return state


def load_transformers_weights(model: "torch.nn.Module", directory: str | Path) -> None:
    """Weights of a transformers directory into `model` (a Transformer of the matching config)."""
    directory = Path(directory)
    config = read_config_json(directory)
    imported = model_config_from_transformers(config, f"{directory}/config.json")
    differences = config_differences(model.cfg, imported)
    if differences:
        raise InteropError(f"{directory} holds another model config than this run's: give " + " ".join(differences))
    state = from_transformers(read_transformers_weights(directory), model.cfg)
    expected = model.state_dict()
    for name, tensor in state.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise InteropError(f"{directory}: {name} has shape {tuple(tensor.shape)}, the model "
                               f"{tuple(expected[name].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InteropError(f"{directory} does not fit the model: missing {missing}, unexpected {unexpected}")


# ------------------------------------------------------------------------------------------ safetensors

def parse_size(size: int | str) -> int:
    """Bytes in "5GB", "500MB", "2GiB" or an int (transformers' units: GB = 10**9, GiB = 2**30)."""
    if isinstance(size, int):
        return size
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*", str(size), re.I)
    if not found:
        raise InteropError(f"max_shard_size={size!r}: give bytes or a size like 5GB, 500MB, 2GiB")
    number, unit = float(found.group(1)), (found.group(2) or "B").upper()
    powers = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
              "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}
    return int(number * powers[unit])


def save_sharded(tensors: dict[str, "torch.Tensor"], directory: Path, max_shard_size: int | str) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json when the
    tensors exceed max_shard_size (a tensor larger than the limit gets a shard of its own), as transformers
    writes them; returns the files written."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file({k: v.contiguous() for k, v in shards[0].items()}, str(directory / WEIGHTS_FILE), metadata)
        return [WEIGHTS_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file({k: v.contiguous() for k, v in shard.items()}, str(directory / name), metadata)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                   indent=2) + "\n")
    return [*names, INDEX_FILE]

