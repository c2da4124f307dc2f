"""`python -m zer02llm.export checkpoint=<dir> output=<dir> [format=gguf]`: a checkpoint for other tools.

format=transformers (the default): a directory that loads with `AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)` (no trust_remote_code): config.json, generation_config.json,
model.safetensors (sharded above max_shard_size), the tokenizer with its chat template, and a model card.
transformers is not needed. format=gguf: a directory holding model.gguf (llama.cpp's llama architecture,
written with the `gguf` package) and an ollama Modelfile. LoRA adapters are merged either way.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import OmegaConf

from zer02llm.cli import quote_text_overrides, run_reporting_errors
from zer02llm.config import ConfigError, ExportConfig, register_configs

register_configs()
EXPORT_DTYPES = ("auto", "float32", "bfloat16", "float16")
FORMATS = ("transformers", "gguf")
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # zer02llm.interop.gguf.OUTTYPES, without importing it here


def check_options(cfg: ExportConfig) -> tuple[Path, Path]:
    """The checkpoint and the output directory, or a ConfigError saying which is wrong."""
    from zer02llm import checkpoint as ckpt

    if not cfg.checkpoint:
        raise ConfigError("checkpoint=<dir> is required: a checkpoint (…/checkpoints/last) or a run directory")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}: must be one of {', '.join(FORMATS)}")
    if not cfg.output:
        raise ConfigError(f"output=<dir> is required: the new directory for the {cfg.format} model")
    if cfg.dtype not in EXPORT_DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r}: must be one of {', '.join(EXPORT_DTYPES)}")
    if cfg.format == "gguf":
        if cfg.outtype not in (None, *GGUF_OUTTYPES):
            raise ConfigError(f"outtype={cfg.outtype!r}: must be one of {', '.join(GGUF_OUTTYPES)}")
        if cfg.dtype != "auto":
            raise ConfigError(f"dtype={cfg.dtype} is for format=transformers: format=gguf takes outtype=" +
                              "|".join(GGUF_OUTTYPES))
        if cfg.output.endswith(".gguf"):
            raise ConfigError(f"output={cfg.output}: give a directory; format=gguf writes model.gguf and an ollama "
                              f"Modelfile into it")
    elif cfg.outtype is not None:
        raise ConfigError(f"outtype={cfg.outtype} is for format=gguf: format=transformers takes dtype=" +
                          "|".join(EXPORT_DTYPES))
    try:
        checkpoint = ckpt.resolve_checkpoint(cfg.checkpoint)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    output = Path(cfg.output).resolve()
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output={cfg.output} is a file: give a directory")
    if output == checkpoint or output in checkpoint.parents:
        raise ConfigError(f"output={cfg.output} holds the checkpoint {checkpoint}: choose another directory")
    if output.is_dir() and any(output.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"output={cfg.output} exists and is not empty: choose a new directory, or overwrite=true "
                          f"to replace it")
    return checkpoint, output


def run(cfg: ExportConfig) -> Path:
    """Export cfg.checkpoint to cfg.output; returns the directory written."""
    import torch

    from zer02llm import checkpoint as ckpt
    from zer02llm.interop import transformers as interop
    from zer02llm.config import model_config_from_dict
    from zer02llm.inference.loading import load_for_inference

    checkpoint, output = check_options(cfg)
    if cfg.format == "gguf":
        return run_gguf(cfg, checkpoint, output)
    saved = ckpt.read_checkpoint_config(checkpoint)
    interop.parse_size(cfg.max_shard_size)
    interop.architecture_for(model_config_from_dict(saved["model"]), cfg.allow_dropless)  # before the weights load
    loaded = load_for_inference(str(checkpoint), "cpu", cfg.adapter, cfg.tokenizer_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    state = model.state_dict()
    if cfg.dtype != "auto":
        state = {k: v.to(getattr(torch, cfg.dtype)) if v.is_floating_point() else v for k, v in state.items()}
    dtype = str(state["tok_embeddings.weight"].dtype).replace("torch.", "")
    tensors = interop.to_transformers(state, model.cfg, cfg.allow_dropless)
    config = interop.transformers_config(model.cfg, dtype, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                                         cfg.allow_dropless)

    tmp = output.with_name(f".{output.name}.export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                                                    "pad_token_id": tokenizer.pad_id, "_from_model_config": False})
        weight_files = interop.save_sharded(tensors, tmp, cfg.max_shard_size)
        write_tokenizer(tokenizer, tmp, model.cfg.max_seq_len)
        (tmp / "README.md").write_text(model_card(config, model, loaded.checkpoint, saved, loaded.mode, cfg.adapter),
                                       encoding="utf-8")
        replace_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"exported {loaded.checkpoint} as {config['architectures'][0]} ({dtype}, {len(weight_files)} weight "
          f"file(s)) to {output}")
    return output


def run_gguf(cfg: ExportConfig, checkpoint: Path, output: Path) -> Path:
    """model.gguf and a Modelfile in `output`; refusals (MoE layouts, tokenizers) come before the weights load."""
    from zer02llm import checkpoint as ckpt
    from zer02llm.config import model_config_from_dict
    from zer02llm.inference.loading import load_for_inference
    from zer02llm.interop import gguf as interop_gguf

    if importlib.util.find_spec("gguf") is None:  # the optional extra: say how to get it before any work is done
        raise ConfigError("format=gguf needs the gguf package: pip install 'zer02llm[gguf]' (or pip install gguf)")
    outtype = cfg.outtype or "f16"
    saved = ckpt.read_checkpoint_config(checkpoint)
    interop_gguf.check_exportable(model_config_from_dict(saved["model"]), cfg.allow_dropless)
    loaded = load_for_inference(str(checkpoint), "cpu", cfg.adapter, cfg.tokenizer_path)
    name = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else checkpoint.name

    tmp = output.with_name(f".{output.name}.export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        counts = interop_gguf.write_gguf(tmp / interop_gguf.GGUF_FILE, loaded.model.state_dict(), loaded.model.cfg,
                                         loaded.tokenizer, outtype, name, cfg.allow_dropless)
        (tmp / interop_gguf.MODELFILE).write_text(interop_gguf.modelfile(loaded.tokenizer), encoding="utf-8")
        replace_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    types = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    print(f"exported {loaded.checkpoint} as GGUF (llama, {outtype}; tensors: {types}) to "
          f"{output / interop_gguf.GGUF_FILE}, with an ollama {interop_gguf.MODELFILE}")
    return output


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer(tokenizer, directory: Path, max_len: int) -> None:
    """tokenizer.json (+ vocab/merges) and a tokenizer_config.json naming the special tokens and the chat
    template, as AutoTokenizer reads them."""
    from zer02llm.checkpoint import TOKENIZER_FILES

    for name in TOKENIZER_FILES:
        if name != "tokenizer_config.json" and (tokenizer.path / name).is_file():
            shutil.copy2(tokenizer.path / name, directory / name)
    config = dict(tokenizer.config)
    names = {key: tokenizer.id_to_token(token_id) for key, token_id in
             (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id), ("pad_token", tokenizer.pad_id))}
    config.update(names)
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.setdefault("add_bos_token", False)
    config.setdefault("add_eos_token", False)
    config["model_max_length"] = max_len
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    write_json(directory / "tokenizer_config.json", config)
    write_json(directory / "special_tokens_map.json", names)


def replace_dir(new: Path, output: Path) -> None:
    """Put `new` at `output`; an existing output (empty, or overwrite=true) goes only once `new` is whole."""
    if output.exists():
        aside = output.with_name(f".{output.name}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(output, aside)
        os.replace(new, output)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, output)


def run_summary(checkpoint: Path) -> Optional[dict[str, Any]]:
    """summary.json of the run the checkpoint belongs to (run/checkpoints/step_N), if there is one."""
    for run_dir in (checkpoint.parent.parent, checkpoint.parent):
        file = run_dir / "summary.json"
        if file.is_file():
            try:
                return json.loads(file.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None


def model_card(config: dict[str, Any], model, checkpoint: Path, saved: dict[str, Any], mode: str,
               adapter: Optional[str]) -> str:
    """README.md: what the model is, how it was trained, how to load it."""
    cfg = model.cfg
    run_config = saved.get("config") or {}
    data = run_config.get("data") or {}
    params = model.num_params()
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [zer02llm]", "---", "",
             f"# {checkpoint.parent.parent.name if checkpoint.parent.name == 'checkpoints' else checkpoint.name}", "",
             f"A {params / 1e6:.2f}M-parameter {config['architectures'][0]} trained with "
             f"zer02llm ({mode}), exported from `{checkpoint}`"
             f"{f' with the adapter `{adapter}` merged' if adapter else ''}"
             f"{' (LoRA adapters merged)' if (saved.get('lora') or {}).get('rank', 0) > 0 else ''}.", "",
             "## Architecture", "",
             "| | |", "| --- | --- |",
             f"| architecture | `{config['architectures'][0]}` |",
             f"| parameters | {params:,} |",
             f"| layers, hidden size, heads (KV heads) | {cfg.n_layers}, {cfg.dim}, {cfg.n_heads} ({cfg.n_kv_heads}) |",
             f"| feed-forward width | {config['intermediate_size']} |",
             f"| vocabulary, context | {cfg.vocab_size}, {cfg.max_seq_len} |",
             f"| rope_theta, rms_norm_eps | {cfg.rope_theta:g}, {cfg.norm_eps:g} |",
             f"| tied embeddings | {cfg.tie_embeddings} |",
             f"| weights dtype | {config['torch_dtype']} |"]
    if "num_local_experts" in config:
        lines.append(f"| experts | {config['num_local_experts']} routed, top-{config['num_experts_per_tok']}"
                     f"{', ' + str(cfg.num_shared_experts) + ' shared' if cfg.num_shared_experts else ''} |")
    lines += ["", "## Training", ""]
    lines.append(f"- data: train `{data.get('train_path') or 'the zer02llm sample corpus'}`, validation "
                 f"`{data.get('val_path')}`, sequence length {data.get('seq_len')}")
    summary = run_summary(checkpoint)
    if summary:
        figures = {k: summary.get(k) for k in ("final_loss", "final_val_loss", "final_val_bpb", "wall_seconds")}
        lines.append("- final figures: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in figures.items() if v is not None))
    step = saved.get("step")
    if step is not None:
        lines.append(f"- step {step}")
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "", 'tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")',
              'model = AutoModelForCausalLM.from_pretrained("path/to/this/dir")',
              'ids = tokenizer(tokenizer.bos_token + "Once upon a time", return_tensors="pt").input_ids',
              "print(tokenizer.decode(model.generate(ids, max_new_tokens=50)[0]))", "```", ""]
    if run_config:
        lines += ["## Training config", "", "```json", json.dumps(run_config, indent=2, default=str), "```", ""]
    lines += ["## Model config (zer02llm)", "", "```json", json.dumps(dataclasses.asdict(cfg), indent=2), "```", ""]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=None, config_name="export")
def main(dict_cfg) -> None:
    run_reporting_errors(run, OmegaConf.to_object(dict_cfg))


def cli() -> None:
    """Console entry: paths need no Hydra quoting."""
    sys.argv[1:] = quote_text_overrides(sys.argv[1:], ("checkpoint", "output", "adapter", "tokenizer_path"))
    main()


if __name__ == "__main__":
    cli()
