"""GGUF export: what llama.cpp reads from the file is our model, tensor for tensor and key for key.

The references are independent of zer02llm.interop.gguf: the row order llama.cpp's rotary needs is undone
here with its own index formula; a numpy forward written from llama.cpp's llama graph (adjacent rotary
pairs, softmax-top-k-renormalise experts) runs the file; transformers' GGUF loader (its own un-permutation
and tokenizer conversion) reads the dense files; llama-cpp-python, where installed, runs them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import randomize, run_module
from zer02llm import export
from zer02llm.checkpoint import export_model
from zer02llm.config import ConfigError, ExportConfig, ModelConfig, MoEConfig
from zer02llm.data.sft import ChatTemplate
from zer02llm.interop.transformers import InteropError
from zer02llm.model import Transformer
from zer02llm.model.moe import MoEFeedForward
from zer02llm.resources import shipped_path
from zer02llm.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'zer02llm[gguf]')")
from gguf import GGUFReader  # noqa: E402
from gguf_reference import (dequantize_q8_0, expected_tensors, field_value, llama_cpp_logits,  # noqa: E402
                            read_tensors, to_our_layout)
from zer02llm.interop import gguf as interop_gguf  # noqa: E402

SMALL = dict(dim=64, n_layers=2, n_heads=4, max_seq_len=128)
CONFIGS = {
    "gqa": ModelConfig(**SMALL, n_kv_heads=2),
    "mha_untied": ModelConfig(**SMALL, n_kv_heads=4, hidden_dim=96, rope_theta=5e4, norm_eps=1e-6,
                              tie_embeddings=False),
    "moe": MoEConfig(**SMALL, n_kv_heads=2, num_shared_experts=0, num_experts=4, experts_per_token=2,
                     expert_hidden_dim=32, tie_embeddings=False),
}
TEXTS = {"english": "The quick brown fox jumps over the lazy dog. It's 2024!",
         "chinese": "星期三，天气很好。我们去公园散步吧。"}
CHAT = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is the capital of France?"}]


def make_checkpoint(directory: Path, cfg: ModelConfig, seed: int = 0) -> Transformer:
    model = randomize(Transformer(cfg), seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # randomize() leaves the stacked experts at their small init: make them matter too
        for module in model.modules():
            if isinstance(module, MoEFeedForward):
                for weight in (module.gate_proj, module.up_proj, module.down_proj):
                    weight.copy_(torch.randn(weight.shape, generator=gen) / math.sqrt(weight.shape[1]))
    export_model(directory, model, {"model": dataclasses.asdict(cfg), "mode": "pretrain"}, shipped_path("tokenizer"))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """"name/outtype" -> (our model, the GGUF file): every config at f32, "gqa" at every outtype."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for name, cfg in CONFIGS.items():
        model = make_checkpoint(root / name, cfg)
        for outtype in (interop_gguf.OUTTYPES if name == "gqa" else ("f32",)):
            directory = root / f"{name}_{outtype}"
            export.run(ExportConfig(checkpoint=str(root / name), output=str(directory), format="gguf", outtype=outtype))
            out[f"{name}/{outtype}"] = (model, directory / "model.gguf")
    return out


def our_logits(model: Transformer, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def sample_ids(length: int = 24) -> list[int]:
    return torch.randint(3, 6400, (length,), generator=torch.Generator().manual_seed(1)).tolist()


# ------------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_tensor_is_ours_after_the_layout_change(exported, name):
    model, path = exported[f"{name}/f32"]
    tensors = read_tensors(path)
    expected = expected_tensors(model)
    assert set(tensors) == set(expected)
    for tensor_name, (values, kind) in tensors.items():
        assert kind == "F32", tensor_name
        ours = to_our_layout(tensor_name, values, model.cfg)
        assert ours.shape == expected[tensor_name].shape and np.array_equal(ours, expected[tensor_name]), tensor_name


def test_rotary_rows_are_reordered_so_the_test_sees_the_layout(exported):
    """Negative control: the q/k rows as our model keeps them differ from the file's."""
    model, path = exported["gqa/f32"]
    tensors = read_tensors(path)
    ours = model.state_dict()["layers.0.attn.q_proj.weight"].double().numpy()
    assert not np.array_equal(tensors["blk.0.attn_q.weight"][0], ours)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_metadata_as_llama_cpp_names_it(exported, name):
    model, path = exported[f"{name}/f32"]
    cfg, tok = model.cfg, Tokenizer.load()
    reader = GGUFReader(str(path))
    width = cfg.expert_ffn_dim if isinstance(cfg, MoEConfig) else cfg.ffn_dim
    expected = {
        "general.architecture": "llama", "general.name": name, "general.file_type": 0,
        "general.quantization_version": 2,
        "llama.vocab_size": cfg.vocab_size, "llama.context_length": cfg.max_seq_len,
        "llama.embedding_length": cfg.dim, "llama.block_count": cfg.n_layers, "llama.feed_forward_length": width,
        "llama.attention.head_count": cfg.n_heads, "llama.attention.head_count_kv": cfg.n_kv_heads,
        "llama.attention.key_length": cfg.head_dim, "llama.attention.value_length": cfg.head_dim,
        "llama.rope.dimension_count": cfg.head_dim, "llama.rope.freq_base": pytest.approx(cfg.rope_theta),
        "llama.attention.layer_norm_rms_epsilon": pytest.approx(cfg.norm_eps, rel=1e-6),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": tok.bos_id, "tokenizer.ggml.eos_token_id": tok.eos_id,
        "tokenizer.ggml.padding_token_id": tok.pad_id,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": tok.chat_template,
    }
    if isinstance(cfg, MoEConfig):
        expected |= {"llama.expert_count": cfg.num_experts, "llama.expert_used_count": cfg.experts_per_token}
    arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    assert set(reader.fields) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"} == set(expected) | set(arrays)
    for key, value in expected.items():
        assert field_value(reader, key) == value, key
    assert (tok.id_to_token(tok.bos_id), tok.id_to_token(tok.eos_id)) == ("<|im_start|>", "<|im_end|>")


def test_vocabulary_tokenizes_as_ours(exported):
    """The file's tokens, merges and control tokens, run as GPT-2 byte-level BPE, give our ids."""
    from tokenizers import Tokenizer as BackendTokenizer, decoders, models, pre_tokenizers

    reader = GGUFReader(str(exported["gqa/f32"][1]))
    tokens, types = field_value(reader, "tokenizer.ggml.tokens"), field_value(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field_value(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer.load()
    assert len(tokens) == tok.vocab_size and [t for t, kind in zip(tokens, types) if kind == 3] == \
        [tok.id_to_token(i) for i in sorted(tok.special_ids)]
    assert set(types) <= {1, 3}
    bpe = BackendTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([t for t, kind in zip(tokens, types) if kind == 3])
    chat = ChatTemplate(tok).render(CHAT, add_generation_prompt=True)
    for text in [*TEXTS.values(), chat]:
        assert bpe.encode(text).ids == tok.encode(text), text


def test_model_ids_beyond_the_tokenizer_are_unused_padding():
    tok = Tokenizer.load()
    tokens, types, merges = interop_gguf.vocabulary(tok, tok.vocab_size + 3)
    assert tokens[-3:] == [f"[PAD{tok.vocab_size + i}]" for i in range(3)] and types[-3:] == [5, 5, 5]
    assert tokens[:tok.vocab_size] == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    with pytest.raises(InteropError, match=f"model.vocab_size={tok.vocab_size - 1}"):
        interop_gguf.vocabulary(tok, tok.vocab_size - 1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_llama_graph_on_the_file_gives_our_logits(exported, name):
    model, path = exported[f"{name}/f32"]
    ids = [Tokenizer.load().bos_id] + sample_ids()
    assert np.abs(llama_cpp_logits(path, ids) - our_logits(model, ids)).max() < 1e-4


def test_llama_graph_sees_the_rotary_layout(exported):
    """Negative control: the file's graph with our own q/k row order does not give our logits."""
    model, path = exported["gqa/f32"]
    tensors = read_tensors(path)
    for name in [n for n in tensors if n.endswith(("attn_q.weight", "attn_k.weight"))]:
        tensors[name] = (to_our_layout(name, tensors[name][0], model.cfg), "F32")
    ids = sample_ids()
    assert np.abs(llama_cpp_logits(path, ids, tensors) - our_logits(model, ids)).max() > 1e-2


@pytest.mark.parametrize("outtype, file_type, kind", [("f16", 1, "F16"), ("bf16", 32, "BF16"), ("q8_0", 7, "Q8_0")])
def test_outtypes(exported, outtype, file_type, kind):
    model, path = exported[f"gqa/{outtype}"]
    assert field_value(GGUFReader(str(path)), "general.file_type") == file_type
    expected = expected_tensors(model)
    cast = {"f16": torch.float16, "bf16": torch.bfloat16}
    raw = {t.name: t for t in GGUFReader(str(path)).tensors}
    for name, (values, stored) in read_tensors(path).items():
        assert stored == ("F32" if values.ndim == 1 else kind), name  # norms stay f32, as llama.cpp's converter
        ours = to_our_layout(name, values, model.cfg)
        if stored == "F32":
            assert np.array_equal(ours, expected[name]), name
        elif outtype in cast:  # one rounding, to nearest
            want = torch.from_numpy(expected[name]).float().to(cast[outtype]).double().numpy()
            assert np.array_equal(ours, want), name
        else:  # q8_0: within half a step (the block's scale) of ours, plus the scale's own float16 rounding
            # (relative 2^-11) times the largest quant, 127
            _, scale = dequantize_q8_0(np.asarray(raw[name].data), int(np.prod(values.shape[:-1])))
            step = to_our_layout(name, scale.reshape(values.shape), model.cfg)
            assert (np.abs(ours - expected[name]) <= step * (0.5 + 128 * 2.0 ** -11)).all(), name
    ids = sample_ids()
    drift = np.abs(llama_cpp_logits(path, ids) - our_logits(model, ids)).max()
    # the logits spread about 1 (std) and reach about 5: each bound is far below what one broken tensor gives
    assert drift < {"f16": 0.02, "bf16": 0.15, "q8_0": 0.4}[outtype]


def test_transformers_reads_the_dense_files_as_our_model(exported):
    """transformers' own GGUF reader (its own un-permutation and tokenizer conversion): same logits, same ids."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("accelerate", reason="transformers reads GGUF files only with accelerate installed")
    tok = Tokenizer.load()
    chat = ChatTemplate(tok).render(CHAT, add_generation_prompt=True)
    for name in ("gqa", "mha_untied"):
        model, path = exported[f"{name}/f32"]
        hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
        ids = [tok.bos_id] + sample_ids()
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits[0].double().numpy()
        assert np.abs(theirs - our_logits(model, ids)).max() < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS.values():  # add_bos_token: a document starts with bos, as in training
        assert hf_tok(text).input_ids == [tok.bos_id] + tok.encode(text), text
    assert hf_tok(chat[len("<|im_start|>"):]).input_ids == [tok.bos_id] + tok.encode(chat[len("<|im_start|>"):])


def test_modelfile_speaks_chatml(exported):
    directory = exported["gqa/f32"][1].parent
    text = (directory / "Modelfile").read_text()
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf" and (directory / "model.gguf").is_file()
    assert 'PARAMETER stop "<|im_end|>"' in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # ollama puts bos (<|im_start|>) before the prompt, so the template opens every turn but the first with it
    assert template.startswith("{{- range $i, $_ := .Messages }}{{ if $i }}<|im_start|>{{ end }}{{ .Role }}\n")
    assert template.endswith("<|im_end|>\n{{ end }}<|im_start|>assistant\n")


GO_RENDER = """package main

import (
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content string }

// renders the Modelfile's TEMPLATE as ollama does: Go's text/template over .Messages
func main() {
	raw, _ := os.ReadFile(os.Args[1])
	text := string(raw)
	start := strings.Index(text, "TEMPLATE \\"\\"\\"") + len("TEMPLATE \\"\\"\\"")
	end := strings.Index(text[start:], "\\"\\"\\"") + start
	messages := []Message{{"system", "S1"}, {"user", "U1 你好"}, {"assistant", "A1"}, {"user", "U2"}}
	template.Must(template.New("m").Parse(text[start:end])).Execute(os.Stdout, map[string]any{"Messages": messages})
}
"""


def test_modelfile_template_renders_our_chat_in_go(exported, tmp_path):
    """Go's text/template (ollama's template engine) on the Modelfile, with ollama's bos in front, gives our chat
    template's render."""
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain on PATH (the Modelfile's template is Go's text/template)")
    (tmp_path / "render.go").write_text(GO_RENDER)
    env = {**os.environ, "GOPATH": str(tmp_path / "gopath"), "GOCACHE": str(tmp_path / "gocache"), "GO111MODULE": "off"}
    modelfile = exported["gqa/f32"][1].parent / "Modelfile"
    proc = subprocess.run(["go", "run", str(tmp_path / "render.go"), str(modelfile)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    messages = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1 你好"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    tok = Tokenizer.load()
    expected = ChatTemplate(tok).render(messages, add_generation_prompt=True)
    assert tok.id_to_token(tok.bos_id) + proc.stdout == expected


def test_modelfile_without_chatml_has_no_template(tmp_path):
    shutil.copytree(shipped_path("tokenizer"), tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    text = interop_gguf.modelfile(Tokenizer.load(tmp_path / "tok"))
    assert "TEMPLATE" not in text.replace("write a TEMPLATE", "") and text.startswith("FROM ./model.gguf\n")
    assert "TEMPLATE \"\"\"" in interop_gguf.modelfile(Tokenizer.load())


# --------------------------------------------------------------------------------------------- refusals

SHARED = MoEConfig(**SMALL, n_kv_heads=2, num_shared_experts=1, expert_hidden_dim=32)


@pytest.mark.parametrize("cfg, keys", [
    (SHARED, ["model.num_shared_experts=1"]),
    (dataclasses.replace(SHARED, num_shared_experts=0, moe_layer_interval=2), ["model.moe_layer_interval=2"]),
    (dataclasses.replace(SHARED, num_shared_experts=0, experts_per_token=1), ["model.experts_per_token=1"]),
    (dataclasses.replace(SHARED, num_shared_experts=0, norm_topk_prob=False), ["model.norm_topk_prob=false"]),
    (dataclasses.replace(SHARED, num_shared_experts=0, capacity_factor=1.25), ["model.capacity_factor=1.25",
                                                                                "allow_dropless=true"]),
    (dataclasses.replace(SHARED, num_shared_experts=2, moe_layer_interval=2), ["model.num_shared_experts=2",
                                                                                "model.moe_layer_interval=2"]),
])
def test_moe_layouts_llama_cpp_lacks_are_refused_with_the_keys(cfg, keys):
    with pytest.raises(InteropError) as refused:
        interop_gguf.check_exportable(cfg)
    for key in keys:
        assert key in str(refused.value)


def test_exportable_layouts_pass():
    interop_gguf.check_exportable(CONFIGS["moe"])
    interop_gguf.check_exportable(dataclasses.replace(CONFIGS["moe"], capacity_factor=1.25), allow_dropless=True)
    interop_gguf.check_exportable(CONFIGS["gqa"])


@pytest.mark.parametrize("change, fragment", [
    (lambda spec: spec["pre_tokenizer"].update(add_prefix_space=True), "pre_tokenizer"),
    (lambda spec: spec.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer"),
    (lambda spec: spec.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda spec: spec["model"].update(type="Unigram"), "model.type"),
])
def test_tokenizers_llama_cpp_would_split_otherwise_are_refused(change, fragment):
    spec = json.loads(Tokenizer.load().backend.to_str())
    assert interop_gguf.tokenizer_problems(spec) == []
    change(spec)
    assert fragment in "; ".join(interop_gguf.tokenizer_problems(spec))


def assert_refused(proc, *fragments):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    for fragment in fragments:
        assert fragment in out, out


BAD_OPTIONS = [
    (["format=gguf", "outtype=q4_0"], ["outtype='q4_0'", "f32, f16, bf16, q8_0"]),
    (["format=onnx"], ["format='onnx'", "transformers, gguf"]),
    (["format=gguf", "dtype=float16"], ["dtype=float16 is for format=transformers", "outtype="]),
    (["outtype=f16"], ["outtype=f16 is for format=gguf", "dtype="]),
    (["format=gguf", "output=model.gguf"], ["output=model.gguf: give a directory"]),
]


@pytest.mark.parametrize("args, fragments", BAD_OPTIONS)
def test_bad_options_are_named(tmp_path, args, fragments):
    make_checkpoint(tmp_path / "dense", CONFIGS["gqa"])
    values = {"checkpoint": str(tmp_path / "dense"), "output": str(tmp_path / "out")}
    values |= dict(arg.split("=", 1) for arg in args)
    with pytest.raises(ConfigError) as refused:
        export.run(ExportConfig(**values))
    for fragment in fragments:
        assert fragment in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_missing_gguf_package_says_how_to_install_it(tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "dense", CONFIGS["gqa"])
    find_spec = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "gguf" else find_spec(name))
    with pytest.raises(ConfigError, match=r"pip install 'zer02llm\[gguf\]'"):
        export.run(ExportConfig(checkpoint=str(tmp_path / "dense"), output=str(tmp_path / "out"), format="gguf"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, fragments", [*BAD_OPTIONS, (["format=gguf", "checkpoint=shared"],
                                                            ["model.num_shared_experts=1"])])
def test_config_errors_exit_2(tmp_path, args, fragments):
    make_checkpoint(tmp_path / "dense", CONFIGS["gqa"])
    make_checkpoint(tmp_path / "shared", SHARED)
    proc = run_module("zer02llm.export", ["checkpoint=dense", "output=out", *args], cwd=tmp_path, check=False)
    assert_refused(proc, *fragments)
    assert not (tmp_path / "out").exists() and not (tmp_path / "model.gguf").exists()


# ------------------------------------------------------------------------------------------- llama.cpp

def test_llama_cpp_runs_the_file_as_we_do(exported):
    """llama.cpp itself: the same ids for an English, a Chinese and a chat prompt, the same prompt logits
    (float32 weights and KV cache) and the same greedy tokens."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional: it compiles "
                                                        "llama.cpp; pip install llama-cpp-python)")
    tok = Tokenizer.load()
    chat = ChatTemplate(tok).render(CHAT, add_generation_prompt=True)
    bos = tok.id_to_token(tok.bos_id)
    # llama.cpp adds bos itself (add_bos_token), so the chat goes in without the template's leading bos
    prompts = {**TEXTS, "chat": chat[len(bos):]}
    for name in ("gqa", "moe"):
        model, path = exported[f"{name}/f32"]
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, logits_all=True, verbose=False,
                              type_k=0, type_v=0, n_threads=2, seed=0)  # ggml type 0: float32 KV cache
        for label, text in prompts.items():
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            assert ids == [tok.bos_id] + tok.encode(text), (name, label)
            llm.reset()
            llm.eval(ids)
            theirs = np.asarray(llm.scores[:len(ids)], dtype=np.float64)
            assert np.abs(theirs - our_logits(model, ids)).max() < 1e-3, (name, label)
            greedy = []
            for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
                greedy.append(token)
                if len(greedy) == 8:
                    break
            assert greedy == our_greedy(model, ids, 8), (name, label)


def our_greedy(model: Transformer, ids: list[int], steps: int) -> list[int]:
    out = list(ids)
    for _ in range(steps):
        out.append(int(our_logits(model, out)[-1].argmax()))
    return out[len(ids):]
