#!/usr/bin/env python3
"""Merge LoRA adapters into the base weights and write a stand-alone model directory.

    python scripts/merge_lora.py outputs/lora/checkpoints/last merged/
    python scripts/merge_lora.py outputs/pretrain merged/ --adapter outputs/lora/checkpoints/last/adapter

The result (model.safetensors, config.json, tokenizer/) loads with `generate`/`eval checkpoint=merged/`
like any checkpoint, with plain linear layers: W' = W + (alpha / rank) * B @ A. Its mode is the
adapter's (an SFT adapter on a pretrained base gives a chat model); an adapter.json that does not
record one leaves the base's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

try:
    import zer02llm  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zer02llm.checkpoint import export_model, read_checkpoint_config
from zer02llm.inference.loading import load_for_inference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a LoRA run's checkpoint (or run directory), or a base checkpoint with --adapter")
    parser.add_argument("out", type=Path, help="new directory for the merged model")
    parser.add_argument("--adapter", help="an adapter directory to merge into CHECKPOINT")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} exists: choose a new directory for the merged model", file=sys.stderr)
        return 2
    try:
        loaded = load_for_inference(args.checkpoint, "cpu", adapter=args.adapter)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    saved = read_checkpoint_config(loaded.checkpoint)
    # loaded.mode: the adapter's own when it records one, so an SFT adapter's merge chats by default
    config = {"model": dataclasses.asdict(loaded.model.cfg), "mode": loaded.mode, "lora": {"rank": 0},
              "merged_from": {"checkpoint": str(loaded.checkpoint), "adapter": args.adapter,
                              "lora": saved.get("lora")}, "config": saved.get("config")}
    path = export_model(args.out, loaded.model, config, loaded.tokenizer.path)
    print(f"merged model written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
