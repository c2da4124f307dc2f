#!/usr/bin/env python3
"""Benchmark offline batch generation: LLM.generate against transformers' `generate` with padding.

The same prompts (default 256) and the same number of new tokens (default 64, eos ignored so that every
reply has them all), greedy, on the CPU: once through zer02llm's engine (`LLM(checkpoint).generate`), once
through transformers on the checkpoint exported with `zer02llm.export` (left-padded batches of the same
size, `generate(max_new_tokens=n, min_new_tokens=n, do_sample=False)`). It prints tokens/s of both, their
ratio, and how many replies agree token for token (float32: a near-tie may flip a few). It asserts nothing.

    python scripts/bench_offline.py --make-checkpoint /tmp/m26                     # random 26M-shape model
    python scripts/bench_offline.py --checkpoint outputs/<run> --prompts 64 --batch-size 16 --json offline.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import PROMPTS, REPO, make_checkpoint  # noqa: E402


def make_prompts(tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    """Documents of varied length (bos + a question + a few words), the same for both sides."""
    rng = random.Random(seed)
    words = "the a cat dog sky river 猫 天空 一个 小明 story apple blue why how".split()
    return [[tokenizer.bos_id] + tokenizer.encode(PROMPTS[i % len(PROMPTS)] + " " +
                                                  " ".join(rng.choice(words) for _ in range(rng.randint(0, 12))))
            for i in range(count)]


def run_engine(checkpoint: str, prompts: list[list[int]], new_tokens: int, batch_size: int, threads: int) -> dict:
    from zer02llm import LLM

    llm = LLM(checkpoint, device="cpu", threads=threads, max_batch=batch_size,
              kv_budget_tokens=batch_size * (max(map(len, prompts)) + new_tokens + 16))
    llm.generate(prompts[:2], max_tokens=4, temperature=0)  # warm-up
    started = time.perf_counter()
    outs = llm.generate(prompts, max_tokens=new_tokens, temperature=0, ignore_eos=True)
    seconds = time.perf_counter() - started
    tokens = [o.outputs[0].token_ids for o in outs]
    return {"seconds": round(seconds, 2), "tokens": sum(map(len, tokens)),
            "tokens_per_s": round(sum(map(len, tokens)) / seconds, 1), "replies": tokens}


def run_transformers(exported: Path, prompts: list[list[int]], new_tokens: int, batch_size: int, pad_id: int,
                     threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()

    def batch_inputs(batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, batch))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        return ids, mask

    with torch.inference_mode():
        ids, mask = batch_inputs(prompts[:2])
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=pad_id)
        started, replies = time.perf_counter(), []
        for i in range(0, len(prompts), batch_size):
            ids, mask = batch_inputs(prompts[i:i + batch_size])
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
            replies += out[:, ids.size(1):].tolist()
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "tokens": sum(map(len, replies)),
            "tokens_per_s": round(sum(map(len, replies)) / seconds, 1), "replies": replies}


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--checkpoint", help="a checkpoint or run directory")
    where.add_argument("--make-checkpoint", metavar="DIR", help="a random 26M-shape checkpoint, written to DIR once")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="the engine's max_batch and transformers' batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of both")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or str(make_checkpoint(Path(args.make_checkpoint)))

    from zer02llm.inference.loading import load_for_inference

    tokenizer = load_for_inference(checkpoint, "cpu").tokenizer
    prompts = make_prompts(tokenizer, args.prompts)
    ours = run_engine(checkpoint, prompts, args.new_tokens, args.batch_size, args.threads)
    result = {"setup": f"{args.prompts} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens) x "
                       f"{args.new_tokens} new tokens, greedy, batch {args.batch_size}, threads={args.threads}, "
                       f"{os.cpu_count()} CPU cores",
              "engine": {k: v for k, v in ours.items() if k != "replies"}}
    print(result["setup"])
    print(f"LLM.generate:            {ours['tokens']} tokens in {ours['seconds']} s = {ours['tokens_per_s']} tokens/s")
    if not args.skip_transformers:
        exported = Path(tempfile.mkdtemp(prefix="bench-offline-")) / "model"
        try:
            subprocess.run([sys.executable, "-m", "zer02llm.export", f"checkpoint={Path(checkpoint).resolve()}",
                            f"output={exported}"], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
            theirs = run_transformers(exported, prompts, args.new_tokens, args.batch_size, tokenizer.pad_id,
                                      args.threads)
        finally:
            shutil.rmtree(exported.parent, ignore_errors=True)
        same = sum(a == b for a, b in zip(ours["replies"], theirs["replies"]))
        result["transformers"] = {k: v for k, v in theirs.items() if k != "replies"}
        result["speedup"] = round(ours["tokens_per_s"] / theirs["tokens_per_s"], 2)
        result["identical_replies"] = same
        print(f"transformers generate:   {theirs['tokens']} tokens in {theirs['seconds']} s = "
              f"{theirs['tokens_per_s']} tokens/s")
        print(f"engine / transformers:   {result['speedup']}x; {same} of {len(prompts)} replies identical")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
