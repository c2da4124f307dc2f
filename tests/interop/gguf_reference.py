"""Independent readers of a GGUF file for tests/interop/test_gguf.py: GGUFReader's fields and tensors as numpy
(q8_0 and bf16 decoded here), the rotary row order undone with its own index formula, and llama.cpp's llama
graph written out in numpy (adjacent rotary pairs; softmax, top-k, renormalised experts). Nothing here
imports zer02llm.interop.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType

from zer02llm.config import ModelConfig, MoEConfig
from zer02llm.model import Transformer


# ------------------------------------------------------------------------------------- reading a GGUF

def field_value(reader: GGUFReader, key: str):
    field = reader.fields[key]

    def one(index: int, kind: GGUFValueType):
        part = field.parts[index]
        return bytes(part).decode("utf-8") if kind == GGUFValueType.STRING else part.tolist()[0]

    if field.types[0] == GGUFValueType.ARRAY:
        return [one(i, field.types[-1]) for i in field.data]
    return one(field.data[0], field.types[0])


def dequantize_q8_0(raw: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """q8_0 bytes -> (values, per-value block scale): each block is a float16 scale and 32 int8."""
    blocks = raw.reshape(-1, 34)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float64)  # (blocks, 1)
    quants = blocks[:, 2:].copy().view(np.int8).astype(np.float64)  # (blocks, 32)
    return (scale * quants).reshape(rows, -1), np.repeat(scale, 32, axis=1).reshape(rows, -1)


def read_tensors(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (float64 values, stored type name), q8_0 dequantized here."""
    out = {}
    for tensor in GGUFReader(str(path)).tensors:
        kind = tensor.tensor_type.name
        data = np.asarray(tensor.data)
        if kind == "Q8_0":
            values = dequantize_q8_0(data, int(np.prod(tensor.shape[1:])))[0]
            values = values.reshape(tuple(int(n) for n in reversed(tensor.shape)))
        elif kind == "BF16":
            # the top half of a float32's bits (the reader hands over the raw bytes)
            values = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            values = data.astype(np.float64)
        out[tensor.name] = (values, kind)
    return out


def pairs_to_rotate_half(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row order: in each head, row 2i + c holds our row c * head_dim/2 + i."""
    head_dim = weight.shape[0] // n_heads
    ours = np.empty_like(weight)
    for h in range(n_heads):
        for i in range(head_dim // 2):
            for c in (0, 1):
                ours[h * head_dim + c * head_dim // 2 + i] = weight[h * head_dim + 2 * i + c]
    return ours


def expected_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """llama.cpp's name for each of our tensors, in our layout (q/k rows and experts as our model has them)."""
    cfg, state = model.cfg, {k: v.double().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": state["tok_embeddings.weight"], "output_norm.weight": state["norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    names = {"attn_norm": "attn_norm.weight", "attn_q": "attn.q_proj.weight", "attn_k": "attn.k_proj.weight",
             "attn_v": "attn.v_proj.weight", "attn_output": "attn.o_proj.weight", "ffn_norm": "ffn_norm.weight"}
    if isinstance(cfg, MoEConfig):
        names |= {"ffn_gate_inp": "ffn.router.weight", "ffn_gate_exps": "ffn.gate_proj",
                  "ffn_up_exps": "ffn.up_proj", "ffn_down_exps": "ffn.down_proj"}
    else:
        names |= {"ffn_gate": "ffn.gate_proj.weight", "ffn_up": "ffn.up_proj.weight",
                  "ffn_down": "ffn.down_proj.weight"}
    for i in range(cfg.n_layers):
        for theirs, ours in names.items():
            out[f"blk.{i}.{theirs}.weight"] = state[f"layers.{i}.{ours}"]
    return out


def to_our_layout(name: str, values: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    if name.endswith("attn_q.weight"):
        return pairs_to_rotate_half(values, cfg.n_heads)
    if name.endswith("attn_k.weight"):
        return pairs_to_rotate_half(values, cfg.n_kv_heads)
    if name.endswith("_exps.weight"):  # llama.cpp (E, out, in), ours (E, in, out)
        return values.transpose(0, 2, 1)
    return values


# --------------------------------------------------------------------- llama.cpp's llama graph in numpy

def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def rope_adjacent_pairs(x: np.ndarray, base: float) -> np.ndarray:
    """llama.cpp's normal rotary (llama): channels (2i, 2i + 1) of each head turn by pos * base^(-2i/d)."""
    T, _, d = x.shape
    angles = np.arange(T)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]  # (T, d/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def llama_cpp_logits(path: Path, ids: list[int], tensors: dict | None = None) -> np.ndarray:
    """Logits (T, vocab) of the GGUF's llama graph on `ids`, from the file's metadata and tensors."""
    reader = GGUFReader(str(path))
    meta = {key: field_value(reader, key) for key in reader.fields if key.startswith("llama.")}
    w = {name: values for name, (values, _) in (tensors or read_tensors(path)).items()}
    H, KV = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    eps, base = meta["llama.attention.layer_norm_rms_epsilon"], meta["llama.rope.freq_base"]
    T = len(ids)
    x = w["token_embd.weight"][ids]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(meta["llama.block_count"]):
        b = lambda n: w[f"blk.{i}.{n}.weight"]  # noqa: E731
        h = rms_norm(x, b("attn_norm"), eps)
        q = rope_adjacent_pairs((h @ b("attn_q").T).reshape(T, H, -1), base)
        k = rope_adjacent_pairs((h @ b("attn_k").T).reshape(T, KV, -1), base)
        v = (h @ b("attn_v").T).reshape(T, KV, -1)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)  # query head j reads kv head j // (H/KV)
        scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(q.shape[-1])
        attn = softmax(np.where(causal, scores, -np.inf))
        x = x + np.einsum("hts,shd->thd", attn, v).reshape(T, -1) @ b("attn_output").T
        h = rms_norm(x, b("ffn_norm"), eps)
        if "llama.expert_count" in meta:
            k_used = meta["llama.expert_used_count"]
            probs = softmax(h @ b("ffn_gate_inp").T)  # (T, E)
            chosen = np.argsort(-probs, axis=-1, kind="stable")[:, :k_used]
            out = np.zeros_like(h)
            for t in range(T):
                weights = probs[t, chosen[t]] / probs[t, chosen[t]].sum()
                for e, weight in zip(chosen[t], weights):
                    act = silu(b("ffn_gate_exps")[e] @ h[t]) * (b("ffn_up_exps")[e] @ h[t])
                    out[t] += weight * (b("ffn_down_exps")[e] @ act)
            x = x + out
        else:
            x = x + (silu(h @ b("ffn_gate").T) * (h @ b("ffn_up").T)) @ b("ffn_down").T
    head = w.get("output.weight", w["token_embd.weight"])
    return rms_norm(x, w["output_norm.weight"], eps) @ head.T
