#!/usr/bin/env python3
"""Benchmark GRPO's rollouts: the engine against the fixed-batch sampler it replaced, and a GRPO step's
time split between making the rollout batch and training on it.

Three samplers roll out the same prompts (the shipped sums, chat template applied; 4 prompts x 8
completions and max_new_tokens 24 by default, as conf/mode/grpo.yaml) from the same model:

- `fixed batch`: the sampler GRPO used before the engine (kept here as the baseline): prompts of equal
  length decoded together, each prompt's KV copied to its group's rows, one forward per new token for
  all rows of a length class until the last one ends (finished rows ride along);
- `engine, kept`: zer02llm.training.rollout.Rollouts, GRPO's path: one engine for every rollout, its
  prefix cache emptied at each;
- `engine, new`: rollout(), a new engine for every rollout (what keeping one saves).

Each runs --rollouts rollouts (different seeds) after one warm-up; the table gives completion tokens
per second and milliseconds per rollout (medians). Then --steps GRPO steps (the objective's own
make_rollouts, then forward, backward and an AdamW step on its batches) give the share of a step spent
making the rollout batch (sampling, scoring) against training. The machine's load average is printed
beside the figures: on a shared machine they move with it.

Random weights never sample eos, so every completion runs to max_new_tokens (the most work a rollout can
be); --checkpoint rolls out a trained model instead (its own lengths).

    python scripts/bench_rollout.py                                   # the CPU preset's shape, 1 thread
    python scripts/bench_rollout.py --checkpoint outputs/sft --rollouts 20
    python scripts/bench_rollout.py --device cuda --dim 512 --layers 8 --heads 8 --dtype bfloat16   # 16gb shape
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from zer02llm.config import Config, ModelConfig
from zer02llm.model import KVCache, Transformer
from zer02llm.training.grpo import GRPO
from zer02llm.training.rollout import Rollouts, prompt_seed, rollout


# ---------------------------------------------------------------------------------------------- baseline
def fixed_batch_rollout(model: Transformer, prompts: Sequence[Sequence[int]], group_size: int, max_new_tokens: int,
                        temperature: float, eos_id: Optional[int], seeds: Sequence[int],
                        autocast: Callable[[], contextlib.AbstractContextManager]) -> list[list[int]]:
    """The sampler GRPO used before the engine: prompts of equal length decoded together, no padding."""
    device = model.tok_embeddings.weight.device
    out: list[list[int]] = [[] for _ in range(len(prompts) * group_size)]
    by_length: dict[int, list[int]] = defaultdict(list)
    for p, ids in enumerate(prompts):
        by_length[len(ids)].append(p)
    for length, members in sorted(by_length.items()):
        new = min(max_new_tokens, model.cfg.max_seq_len - length)
        n = len(members)
        generators = [torch.Generator(device).manual_seed(seeds[p]) for p in members]
        prefill = model.new_cache(n, length)
        with autocast():
            logits = model(torch.tensor([list(prompts[p]) for p in members], device=device),
                           cache=prefill).logits[:, -1]
        cache = KVCache(model.cfg, n * group_size, length + new, device, prefill.keys.dtype)
        cache.keys[:, :, :, :length] = prefill.keys.repeat_interleave(group_size, dim=1)
        cache.values[:, :, :, :length] = prefill.values.repeat_interleave(group_size, dim=1)
        cache.length = length
        logits = logits.repeat_interleave(group_size, dim=0)
        tokens = torch.empty(n * group_size, new, dtype=torch.long, device=device)
        done = torch.zeros(n * group_size, dtype=torch.bool, device=device)
        steps = 0
        for t in range(new):
            rows = []
            for i in range(n):
                group = logits[i * group_size:(i + 1) * group_size]
                if temperature == 0:
                    rows.append(group.argmax(-1))
                else:
                    probs = torch.softmax(group.float() / temperature, dim=-1)
                    rows.append(torch.multinomial(probs, 1, generator=generators[i]).squeeze(-1))
            chosen = torch.cat(rows)
            tokens[:, t] = chosen
            steps = t + 1
            if eos_id is not None:
                done |= chosen == eos_id
            if t == new - 1 or bool(done.all()):
                break
            with autocast():
                logits = model(chosen[:, None], cache=cache).logits[:, -1]
        decoded = tokens[:, :steps].tolist()
        if eos_id is not None:
            decoded = [row[:row.index(eos_id) + 1] if eos_id in row else row for row in decoded]
        for i, p in enumerate(members):
            for g in range(group_size):
                out[p * group_size + g] = decoded[i * group_size + g]
    return out


# ---------------------------------------------------------------------------------------------- setup
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--checkpoint", help="a run directory or checkpoint to roll out (default: random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16: autocast over float32 weights, as hardware.dtype=bfloat16 trains")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CPU preset's hardware.threads)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--prompts", type=int, default=4, help="prompts per rollout (train.batch_size)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--rollouts", type=int, default=10, help="timed rollouts per sampler")
    p.add_argument("--steps", type=int, default=5, help="timed GRPO steps (0: skip the step split)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.exit(2, "error: --device cuda: torch.cuda.is_available() is False on this machine; use --device cpu\n")
    for name in ("prompts", "group_size", "max_new_tokens", "rollouts", "dim", "layers", "heads"):
        if getattr(args, name) < 1:
            p.exit(2, f"error: --{name.replace('_', '-')}={getattr(args, name)}: must be >= 1\n")
    if args.dim % args.heads:
        p.exit(2, f"error: --dim={args.dim} is not a multiple of --heads={args.heads}\n")
    return args


def grpo_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    cfg.mode.name = "grpo"
    cfg.mode.group_size, cfg.mode.max_new_tokens, cfg.mode.temperature = (args.group_size, args.max_new_tokens,
                                                                           args.temperature)
    cfg.model = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=min(2, args.heads),
                            max_seq_len=512)
    cfg.data.seq_len = 128 + args.max_new_tokens
    cfg.train.batch_size = args.prompts
    return cfg


def load_model(args: argparse.Namespace, cfg: Config) -> Transformer:
    if args.checkpoint:
        from zer02llm.inference.loading import load_for_inference

        model = load_for_inference(args.checkpoint, device=args.device).model
        cfg.model = model.cfg
    else:
        torch.manual_seed(0)
        model = Transformer(cfg.model)
    return model.to(args.device).float().train()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"
    except OSError:
        return "n/a"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- measuring
def time_samplers(model: Transformer, prompts: list[list[int]], args: argparse.Namespace, eos_id: int,
                  autocast) -> dict[str, dict[str, float]]:
    G, new, T = args.group_size, args.max_new_tokens, args.temperature
    kept = Rollouts(model, autocast)
    samplers = {
        "fixed batch (before)": lambda s: fixed_batch_rollout(model, prompts, G, new, T, eos_id, s, autocast),
        "engine, kept (GRPO)": lambda s: kept.sample(prompts, G, new, T, eos_id, s),
        "engine, new per rollout": lambda s: rollout(model, prompts, G, new, T, eos_id, s, autocast),
    }
    results = {}
    for name, sample in samplers.items():
        seconds, tokens = [], []
        for r in range(args.rollouts + 1):  # the first is a warm-up (allocation, CUDA graph capture)
            seeds = [prompt_seed(0, r, i) for i in range(len(prompts))]
            model.eval()
            sync(args.device)
            started = time.perf_counter()
            with torch.no_grad():
                out = sample(seeds)
            sync(args.device)
            model.train()
            if r:
                seconds.append(time.perf_counter() - started)
                tokens.append(sum(map(len, out)))
        rates = [n / s for n, s in zip(tokens, seconds)]
        results[name] = {"tokens_per_s": statistics.median(rates), "ms_per_rollout": 1e3 * statistics.median(seconds),
                         "tokens_per_rollout": statistics.mean(tokens)}
    return results


def time_steps(model: Transformer, cfg: Config, tokenizer, args: argparse.Namespace, autocast) -> dict[str, float]:
    """GRPO steps as the trainer runs them (one micro-batch): make_rollouts, then forward/backward/AdamW."""
    device = torch.device(args.device)
    objective = GRPO(cfg, tokenizer, device)
    train, _ = objective.datasets()
    objective.prepare(model, device, autocast)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    roll, learn = [], []
    for step in range(args.steps + 1):
        indices = list(range(step * args.prompts, (step + 1) * args.prompts))
        sync(args.device)
        started = time.perf_counter()
        batches = objective.step_batches(lambda: [train.batch(indices)], step)
        sync(args.device)
        middle = time.perf_counter()
        for batch in batches:
            with autocast():
                loss = objective.compute(model, tuple(t.to(device) for t in batch)).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        if step:  # the first is a warm-up
            roll.append(middle - started)
            learn.append(time.perf_counter() - middle)
    r, t = statistics.median(roll), statistics.median(learn)
    return {"rollout_ms": 1e3 * r, "train_ms": 1e3 * t, "rollout_share": r / (r + t),
            "engines_built": objective.sampler.engines_built}


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from zer02llm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load()
    cfg = grpo_config(args)
    model = load_model(args, cfg)
    dtype = {"float32": None, "bfloat16": torch.bfloat16}[args.dtype]

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(args.device, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    objective = GRPO(cfg, tokenizer, torch.device(args.device))
    train, _ = objective.datasets()
    prompts = [train.ids[i] for i in range(args.prompts)]
    load_before = load_average()
    samplers = time_samplers(model, prompts, args, tokenizer.eos_id, autocast)
    steps = time_steps(model, cfg, tokenizer, args, autocast) if args.steps else None
    load_after = load_average()

    shape = f"dim {cfg.model.dim}, {cfg.model.n_layers} layers, {cfg.model.n_heads} heads, vocab {cfg.model.vocab_size}"
    print(f"\nGRPO rollouts: {args.prompts} prompts x {args.group_size} completions, max_new_tokens "
          f"{args.max_new_tokens}, temperature {args.temperature}; {shape}; {args.device} {args.dtype}, "
          f"{args.threads} thread(s); {'weights of ' + args.checkpoint if args.checkpoint else 'random weights'}; "
          f"prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens")
    print(f"load average (1, 5, 15 min): {load_before} before, {load_after} after\n")
    base = samplers["fixed batch (before)"]["tokens_per_s"]
    print(f"| {'sampler':<24} | {'tokens/s':>9} | {'x before':>8} | {'ms/rollout':>10} | {'tokens/rollout':>14} |")
    print(f"| {'-' * 24} | {'-' * 9} | {'-' * 8} | {'-' * 10} | {'-' * 14} |")
    for name, r in samplers.items():
        print(f"| {name:<24} | {r['tokens_per_s']:>9.0f} | {r['tokens_per_s'] / base:>8.2f} | "
              f"{r['ms_per_rollout']:>10.1f} | {r['tokens_per_rollout']:>14.1f} |")
    if steps:
        print(f"\nGRPO step (median of {args.steps}): making the rollout batch {steps['rollout_ms']:.0f} ms, "
              f"training on it {steps['train_ms']:.0f} ms: {100 * steps['rollout_share']:.0f}% of the step "
              f"generating ({steps['engines_built']} engine built)")
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()},
                                         "load_average": [load_before, load_after], "samplers": samplers,
                                         "step": steps}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
