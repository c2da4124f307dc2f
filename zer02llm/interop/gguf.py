"""GGUF interop: our model as llama.cpp's `llama` architecture, for llama.cpp, ollama and their kin.

The one place that knows GGUF's names (the model never does); used by `zer02llm.export format=gguf`. The
file is written with the `gguf` package (llama.cpp's own Python writer, the `gguf` extra). What crosses:

    dense                                                     -> llama
    MoE, every layer MoE, top-k > 1 renormalised, no shared   -> llama with stacked ffn_{gate,up,down}_exps
    anything else                                             -> refused, naming the keys to change

llama.cpp rotates the adjacent channel pairs (2i, 2i + 1) of each head; our rotary embedding (as transformers')
rotates the pairs (i, i + head_dim/2). So the rows of the q and k projections are reordered per head, as
llama.cpp's convert_hf_to_gguf.py does for a transformers Llama: row i of a head's first half becomes row 2i,
row i of its second half row 2i + 1. The attention scores, and so the outputs, are unchanged.

The tokenizer goes in as GPT-2 style byte-level BPE (tokenizer.ggml.model "gpt2") with the pre-tokenizer
named "gpt-2": tokens, token types, merges, bos/eos/pad and the chat template. add_bos_token is true: every
training document began with bos. torch, numpy and gguf are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zer02llm.config import ModelConfig, MoEConfig
from zer02llm.interop.transformers import InteropError, moe_layout_problems

if TYPE_CHECKING:
    import numpy as np
    import torch

    from zer02llm.tokenizer import Tokenizer

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_FILE, MODELFILE = "model.gguf", "Modelfile"
ARCH = "llama"
Q8_0_BLOCK = 32  # q8_0 quantizes rows in blocks of 32 values; a row of another length stays f16

# per block, ours -> llama.cpp's (under blk.{i}.)
_BLOCK = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.o_proj.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
_DENSE_FFN = {"ffn.gate_proj.weight": "ffn_gate.weight", "ffn.up_proj.weight": "ffn_up.weight",
              "ffn.down_proj.weight": "ffn_down.weight"}
_EXPERTS = {"ffn.gate_proj": "ffn_gate_exps.weight", "ffn.up_proj": "ffn_up_exps.weight",
            "ffn.down_proj": "ffn_down_exps.weight"}
ROUTER = "ffn_gate_inp.weight"

# llama.cpp's token types (llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


# ------------------------------------------------------------------------------------------- refusals

def export_problems(cfg: ModelConfig, allow_dropless: bool = False) -> list[str]:
    """Why llama.cpp's llama architecture cannot compute exactly `cfg`'s forward (empty: it can)."""
    if not isinstance(cfg, MoEConfig):
        return []
    problems = []
    if cfg.num_shared_experts:
        problems.append(f"model.num_shared_experts={cfg.num_shared_experts} (set 0: llama.cpp's llama architecture "
                        f"has routed experts only; format=transformers exports shared experts as "
                        f"GraniteMoeShared)")
    problems += moe_layout_problems(cfg, "llama.cpp's llama layers", allow_dropless)
    return problems


def check_exportable(cfg: ModelConfig, allow_dropless: bool = False) -> None:
    """An InteropError naming the keys to change when `cfg` has no exact llama.cpp counterpart."""
    problems = export_problems(cfg, allow_dropless)
    if problems:
        raise InteropError("llama.cpp's llama architecture does not reproduce this MoE model's outputs: "
                           + "; ".join(problems) + ". Exportable MoE configurations: see docs/interop.md")


def tokenizer_problems(spec: dict[str, Any]) -> list[str]:
    """Why a tokenizer.json would not tokenize alike in llama.cpp as GPT-2 BPE (empty: it would)."""
    problems = []
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        problems.append(f"model.type={model.get('type')!r} (llama.cpp's gpt2 tokenizer is BPE)")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problems.append("BPE byte_fallback/continuing_subword_prefix/end_of_word_suffix (GPT-2 BPE has none)")
    pre = spec.get("pre_tokenizer") or {}
    if not (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")):
        problems.append(f"pre_tokenizer={pre!r} (llama.cpp's gpt-2 pre-tokenizer is ByteLevel with GPT-2's regex "
                        f"and no prefix space)")
    if spec.get("normalizer"):
        problems.append(f"normalizer={spec['normalizer']!r} (GPT-2 BPE has none)")
    return problems


# -------------------------------------------------------------------------------------------- tensors

def rotary_rows_to_pairs(weight: "torch.Tensor", n_heads: int) -> "torch.Tensor":
    """q/k projection rows from the rotate-half layout (pairs i, i + hd/2) to llama.cpp's (pairs 2i, 2i + 1)."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    # (heads, half, pair index, cols) -> (heads, pair index, half, cols): the two halves interleave
    return weight.reshape(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


def gguf_tensors(state: dict[str, "torch.Tensor"], cfg: ModelConfig,
                 allow_dropless: bool = False) -> dict[str, "torch.Tensor"]:
    """Our state dict -> llama.cpp's tensor names and layouts (shape as numpy sees it: outer dim first)."""
    check_exportable(cfg, allow_dropless)
    out = {"token_embd.weight": state["tok_embeddings.weight"]}
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"blk.{i}."
        for a, b in _BLOCK.items():
            out[theirs + b] = state[ours + a]
        out[theirs + "attn_q.weight"] = rotary_rows_to_pairs(state[ours + "attn.q_proj.weight"], cfg.n_heads)
        out[theirs + "attn_k.weight"] = rotary_rows_to_pairs(state[ours + "attn.k_proj.weight"], cfg.n_kv_heads)
        if not isinstance(cfg, MoEConfig):
            for a, b in _DENSE_FFN.items():
                out[theirs + b] = state[ours + a]
            continue
        out[theirs + ROUTER] = state[ours + "ffn.router.weight"]  # (E, dim)
        for a, b in _EXPERTS.items():  # ours (E, in, out) for grouped_mm; llama.cpp's (E, out, in) as nn.Linear
            out[theirs + b] = state[ours + a].transpose(1, 2)
    out["output_norm.weight"] = state["norm.weight"]
    if not cfg.tie_embeddings:  # without output.weight llama.cpp reads token_embd for the head
        out["output.weight"] = state["lm_head.weight"]
    return {name: tensor.detach().contiguous() for name, tensor in out.items()}


def tensor_type(name: str, shape: tuple[int, ...], outtype: str) -> str:
    """The stored type of one tensor, as llama.cpp's converter picks it: norms, 1-D tensors and the router
    in f32, the rest in `outtype` (q8_0 only where each row is whole 32-value blocks, else f16)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or name.endswith(ROUTER):
        return "f32"
    if outtype == "q8_0" and shape[-1] % Q8_0_BLOCK:
        return "f16"
    return outtype


def encode_tensor(name: str, tensor: "torch.Tensor", kind: str) -> tuple["np.ndarray", Any]:
    """The bytes-ready numpy array of one tensor in `kind` and the GGML type to store it as."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    data = tensor.to(torch.float32).numpy()
    if kind == "f32":
        return data, Q.F32
    if kind == "f16":
        if np.abs(data).max(initial=0.0) > np.finfo(np.float16).max:
            raise InteropError(f"{name} holds values beyond float16's range (±65504): export with outtype=bf16 "
                               f"or outtype=f32")
        return data.astype(np.float16), Q.F16
    qtype = Q.BF16 if kind == "bf16" else Q.Q8_0
    return quantize(data, qtype), qtype


# ------------------------------------------------------------------------------------------ tokenizer

def vocabulary(tokenizer: "Tokenizer", vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens (byte-level strings, by id), llama.cpp token types and merges ("a b", by rank); ids the
    model has beyond the tokenizer's are named [PAD{id}], unused."""
    spec = json.loads(tokenizer.backend.to_str())
    problems = tokenizer_problems(spec)
    if problems:
        raise InteropError(f"tokenizer at {tokenizer.path} is not GPT-2 style byte-level BPE, which llama.cpp's "
                           f"gpt-2 pre-tokenizer would reproduce: " + "; ".join(problems))
    if tokenizer.vocab_size > vocab_size:
        raise InteropError(f"tokenizer at {tokenizer.path} has {tokenizer.vocab_size} ids, the model "
                           f"model.vocab_size={vocab_size}: give the tokenizer the model was trained with")
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    tokens, types = [], []
    for token_id in range(vocab_size):
        token = tokenizer.id_to_token(token_id) if token_id < tokenizer.vocab_size else None
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(UNUSED)
        else:
            tokens.append(token)
            types.append(NORMAL if token_id not in added else CONTROL if added[token_id].get("special")
                         else USER_DEFINED)
    # tokenizers writes merges as "a b" strings (older files) or [a, b] pairs
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges") or []]
    return tokens, types, merges


# ------------------------------------------------------------------------------------------- the file

def write_gguf(path: Path, state: dict[str, "torch.Tensor"], cfg: ModelConfig, tokenizer: "Tokenizer",
               outtype: str = "f16", name: str = "zer02llm", allow_dropless: bool = False) -> dict[str, int]:
    """Write the GGUF file; returns how many tensors went in as each type."""
    import gguf

    if outtype not in OUTTYPES:
        raise InteropError(f"outtype={outtype!r}: must be one of {', '.join(OUTTYPES)}")
    tensors = gguf_tensors(state, cfg, allow_dropless)
    tokens, types, merges = vocabulary(tokenizer, cfg.vocab_size)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}

    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_name(name)
    writer.add_file_type(file_types[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    if isinstance(cfg, MoEConfig):
        writer.add_feed_forward_length(cfg.expert_ffn_dim)  # llama.cpp's llama sizes its experts by it
        writer.add_expert_count(cfg.num_experts)
        writer.add_expert_used_count(cfg.experts_per_token)
    else:
        writer.add_feed_forward_length(cfg.ffn_dim)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(True)  # every training document began with bos
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    counts: dict[str, int] = {}
    for tensor_name, tensor in tensors.items():
        kind = tensor_type(tensor_name, tuple(tensor.shape), outtype)
        data, qtype = encode_tensor(tensor_name, tensor, kind)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        counts[kind] = counts.get(kind, 0) + 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return counts


# ------------------------------------------------------------------------------------------ Modelfile

CHATML_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]

# ChatML in ollama's Go template language, without the first <|im_start|>: ollama puts the bos token
# (<|im_start|> here) in front of every prompt itself, as add_bos_token asks
OLLAMA_CHATML = ('{{- range $i, $_ := .Messages }}{{ if $i }}<|im_start|>{{ end }}{{ .Role }}\n'
                 '{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n')


def chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        "<|im_start|>assistant\n"


def speaks_chatml(tokenizer: "Tokenizer") -> bool:
    """The tokenizer's chat template renders ChatML, starting with its bos token and ending turns with eos."""
    if not tokenizer.chat_template or tokenizer.id_to_token(tokenizer.bos_id) != "<|im_start|>" or \
            tokenizer.id_to_token(tokenizer.eos_id) != "<|im_end|>":
        return False
    from zer02llm.data.sft import ChatTemplate

    try:
        return ChatTemplate(tokenizer).render(CHATML_PROBE, add_generation_prompt=True) == chatml(CHATML_PROBE)
    except Exception:  # a template that fails on plain turns (compiling or rendering) is no ChatML either
        return False


def modelfile(tokenizer: "Tokenizer", gguf_name: str = GGUF_FILE) -> str:
    """An ollama Modelfile for the GGUF beside it (`ollama create NAME -f Modelfile`): ChatML as the template
    when the tokenizer's chat template renders ChatML, else none (ollama then goes by the file's own)."""
    eos = tokenizer.id_to_token(tokenizer.eos_id)
    lines = [f"FROM ./{gguf_name}", ""]
    if speaks_chatml(tokenizer):
        lines += ["# ChatML; the first <|im_start|> is the bos token, which ollama puts before every prompt",
                  f'TEMPLATE """{OLLAMA_CHATML}"""', ""]
    else:
        lines += ["# the chat template is not ChatML: write a TEMPLATE in ollama's Go template language to chat", ""]
    lines.append(f'PARAMETER stop "{eos}"')
    return "\n".join(lines) + "\n"
