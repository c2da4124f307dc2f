"""`python -m zer02llm.generate checkpoint=<dir> prompt="..."`: stream a continuation to the terminal."""

from __future__ import annotations

import sys

import hydra
from omegaconf import OmegaConf

from zer02llm.cli import quote_text_overrides, run_reporting_errors
from zer02llm.config import GenerateConfig, register_configs

register_configs()


def run(cfg: GenerateConfig) -> str:
    """Generate for cfg.prompt, streaming to stdout when cfg.stream; returns the generated text."""
    from zer02llm.inference.loading import (check_sampling, load_for_inference, long_prompt_note, make_generator,
                                            stream_reply, truncation_note)

    params = check_sampling(cfg)
    loaded = load_for_inference(cfg.checkpoint, cfg.device, cfg.adapter, cfg.tokenizer_path, cfg.compile, cfg.threads)
    # pretrained models continue documents, which began with bos
    prompt_ids = [loaded.tokenizer.bos_id] + loaded.tokenizer.encode(cfg.prompt)
    if long_prompt := long_prompt_note(len(prompt_ids), loaded):  # before the reply, as eval says it
        print(long_prompt, file=sys.stderr, flush=True)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if cfg.stream:
        write(cfg.prompt)
    reply = stream_reply(loaded, prompt_ids, cfg, params, write if cfg.stream else None,
                         generator=make_generator(loaded, cfg.seed))
    write("\n" if cfg.stream else cfg.prompt + reply.text + "\n")
    print(f"[{reply.num_tokens} tokens in {reply.seconds:.2f}s, {reply.num_tokens / max(reply.seconds, 1e-9):.1f} "
          f"tokens/s, from {loaded.checkpoint}]", file=sys.stderr)
    note = truncation_note(reply, cfg, loaded)
    if note:
        print(note, file=sys.stderr)
    return reply.text


@hydra.main(version_base="1.3", config_path=None, config_name="generate")
def main(dict_cfg) -> None:
    run_reporting_errors(run, OmegaConf.to_object(dict_cfg))


def cli() -> None:
    """Console entry: free-text values (prompt, paths) need no Hydra quoting."""
    sys.argv[1:] = quote_text_overrides(sys.argv[1:], ("prompt", "checkpoint", "tokenizer_path"))
    main()


if __name__ == "__main__":
    cli()
