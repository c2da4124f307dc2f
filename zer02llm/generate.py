"""`python -m zer02llm.generate checkpoint=<dir> prompt="..."`: stream a continuation to the terminal."""

from __future__ import annotations

import sys
import time

import hydra
from omegaconf import OmegaConf

from zer02llm.cli import quote_text_overrides
from zer02llm.config import ConfigError, GenerateConfig, model_config_from_dict, model_problems, register_configs
from zer02llm.resources import shipped_path

register_configs()


def load_model(checkpoint: str, device: str = "auto"):
    """Model (eval mode, on device) and tokenizer from a checkpoint, run or `last` directory."""
    import torch

    from zer02llm import checkpoint as ckpt
    from zer02llm.model import Transformer
    from zer02llm.tokenizer import Tokenizer

    path = ckpt.resolve_checkpoint(checkpoint)
    model_cfg = model_config_from_dict(ckpt.read_checkpoint_config(path)["model"])
    problems = model_problems(model_cfg)
    if problems:
        raise ConfigError(f"{path}/config.json holds an invalid model config: " + "; ".join(problems))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Transformer(model_cfg)
    ckpt.load_weights(model, path)
    tokenizer = Tokenizer.load(path / "tokenizer")
    return model.to(device).eval(), tokenizer, path


def run(cfg: GenerateConfig) -> str:
    """Generate for cfg.prompt, streaming to stdout when cfg.stream; returns the generated text."""
    import torch

    from zer02llm.sampling import SamplingParams, generate
    from zer02llm.tokenizer import StreamDecoder, Tokenizer

    if not cfg.checkpoint:
        raise ConfigError("checkpoint=<dir> is required: a checkpoint (…/checkpoints/last) or a run directory")
    if cfg.max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens}: must be > 0")
    params = SamplingParams(cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
    model, tokenizer, path = load_model(cfg.checkpoint, cfg.device)
    if cfg.tokenizer_path:
        tokenizer = Tokenizer.load(cfg.tokenizer_path)
    device = model.tok_embeddings.weight.device
    generator = torch.Generator(device).manual_seed(cfg.seed) if cfg.seed is not None else None
    # pretrained models continue documents, which began with bos
    prompt_ids = [tokenizer.bos_id] + tokenizer.encode(cfg.prompt)
    decoder = StreamDecoder(tokenizer)
    pieces: list[str] = []
    if cfg.stream:
        sys.stdout.write(cfg.prompt)
        sys.stdout.flush()
    started, count = time.perf_counter(), 0
    for token in generate(model, prompt_ids, cfg.max_new_tokens, params, tokenizer.eos_id, generator):
        count += 1
        piece = decoder.push(token)
        pieces.append(piece)
        if cfg.stream and piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    pieces.append(decoder.flush())
    text = "".join(pieces)
    sys.stdout.write((pieces[-1] if cfg.stream else cfg.prompt + text) + "\n")
    sys.stdout.flush()
    elapsed = time.perf_counter() - started
    print(f"[{count} tokens in {elapsed:.2f}s, {count / max(elapsed, 1e-9):.1f} tokens/s, from {path}]",
          file=sys.stderr)
    return text


@hydra.main(version_base="1.3", config_path=str(shipped_path("conf")), config_name="generate")
def main(dict_cfg) -> None:
    cfg: GenerateConfig = OmegaConf.to_object(dict_cfg)
    try:
        run(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def cli() -> None:
    """Console entry: free-text values (prompt, paths) need no Hydra quoting."""
    sys.argv[1:] = quote_text_overrides(sys.argv[1:], ("prompt", "checkpoint", "tokenizer_path"))
    main()


if __name__ == "__main__":
    cli()
