#!/usr/bin/env python3
"""Benchmark GRPO's rollouts: the engine against the fixed-batch sampler it replaced, and a GRPO step's
time split between making the rollout batch and training on it.

The run is `python -m zer02llm.train mode=grpo <overrides>`'s (the CPU preset by default: dim 128, 2
layers, 4 heads, vocab 6400, 1 thread; 4 prompts x 8 completions, max_new_tokens 24, the shipped sums'
prompts). Three samplers roll out the same prompts from the same model, taking turns:

- `fixed batch (before)`: the sampler GRPO used before the engine, kept here as the baseline: prompts of
  equal length decoded together, each prompt's KV copied to its group's rows, one forward per new token
  for all rows of a length class until the last one ends (finished rows ride along);
- `engine, kept (GRPO)`: zer02llm.training.rollout.Rollouts, GRPO's path: one engine for every rollout,
  its prefix cache emptied at each;
- `engine, new per rollout`: rollout(), a new engine for every rollout (what keeping one saves).

Each makes --rollouts rollouts (new seeds each) after a warm-up; the table gives completion tokens per
second and milliseconds per rollout (medians). Then --steps GRPO steps of two copies of the model, one
rolling out with each sampler (the objective's own rollout batch, then forward, backward and the optimizer
step), give the share of a step spent making the rollout batch (sampling, scoring) against training.
The machine's load average is printed beside the figures: on a shared machine they move with it.

Random weights (the default) almost never sample eos, so nearly every completion runs to max_new_tokens;
--checkpoint rolls out a trained model instead, with its own lengths.

    python scripts/bench_rollout.py                                       # random weights, CPU preset
    python scripts/bench_rollout.py --checkpoint outputs/sft --rollouts 20
    python scripts/bench_rollout.py hardware=16gb --checkpoint outputs/sft    # on a GPU (bf16 autocast)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="train's overrides (hardware=16gb, mode.group_size=16, ...): the run "
                                                 "whose rollouts are measured; mode=grpo is implied")
    p.add_argument("--checkpoint", help="a run directory or checkpoint to roll out (default: random weights)")
    p.add_argument("--rollouts", type=int, default=10, help="timed rollouts per sampler")
    p.add_argument("--steps", type=int, default=5, help="timed GRPO steps per sampler (0: skip the step split)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.rollouts < 1 or args.steps < 0:
        p.exit(2, f"error: --rollouts={args.rollouts} must be >= 1 and --steps={args.steps} >= 0\n")
    return args


def grpo_config(overrides: Sequence[str]) -> Config:
    """The run's config as `python -m zer02llm.train mode=grpo <overrides>` composes and checks it; exit 2 on a
    bad one."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from zer02llm.config import ConfigError, register_configs
    from zer02llm.resources import shipped_path
    from zer02llm.train import checked_config

    register_configs()
    overrides = ["mode=grpo", *overrides]
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(shipped_path("conf"))):
            return checked_config(compose(config_name="config", overrides=overrides), overrides)
    except (ConfigError, HydraException, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def load_model(checkpoint: Optional[str], cfg: Config, device: torch.device) -> Transformer:
    if checkpoint:
        from zer02llm.inference.loading import load_for_inference

        model = load_for_inference(checkpoint, device=str(device)).model
        cfg.model = model.cfg
    else:
        torch.manual_seed(cfg.train.seed)
        model = Transformer(cfg.model)
    return model.to(device).float().train()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"
    except OSError:
        return "n/a"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- measuring
def time_samplers(model: Transformer, prompts: list[list[int]], mode, rollouts: int, eos_id: int, autocast,
                  device: torch.device) -> dict[str, dict[str, float]]:
    """Median tokens/s and ms of each sampler over `rollouts` rollouts, the samplers taking turns (a change of
    the machine's load falls on all of them alike)."""
    G, new, T = mode.group_size, mode.max_new_tokens, mode.temperature
    kept = Rollouts(model, autocast)
    samplers = {
        "fixed batch (before)": lambda s: fixed_batch_rollout(model, prompts, G, new, T, eos_id, s, autocast),
        "engine, kept (GRPO)": lambda s: kept.sample(prompts, G, new, T, eos_id, s),
        "engine, new per rollout": lambda s: rollout(model, prompts, G, new, T, eos_id, s, autocast),
    }
    seconds: dict[str, list[float]] = defaultdict(list)
    tokens: dict[str, list[int]] = defaultdict(list)
    for r in range(rollouts + 1):  # the first is a warm-up (allocation, CUDA graph capture)
        seeds = [prompt_seed(0, r, i) for i in range(len(prompts))]
        for name, sample in samplers.items():
            model.eval()
            sync(device)
            started = time.perf_counter()
            with torch.no_grad():
                out = sample(seeds)
            sync(device)
            model.train()
            if r:
                seconds[name].append(time.perf_counter() - started)
                tokens[name].append(sum(map(len, out)))
    results = {}
    for name in samplers:
        rates = [n / t for n, t in zip(tokens[name], seconds[name])]
        results[name] = {"tokens_per_s": statistics.median(rates),
                         "ms_per_rollout": 1e3 * statistics.median(seconds[name]),
                         "tokens_per_rollout": statistics.mean(tokens[name])}
    return results


class FixedBatchSampler:
    """The baseline in the objective's place of Rollouts (same .model and .sample)."""

    def __init__(self, model: Transformer, autocast):
        self.model, self.autocast = model, autocast

    def sample(self, prompts, group_size, max_new_tokens, temperature, eos_id, seeds) -> list[list[int]]:
        was_training = self.model.training
        self.model.eval()
        try:
            return fixed_batch_rollout(self.model, prompts, group_size, max_new_tokens, temperature, eos_id, seeds,
                                       self.autocast)
        finally:
            self.model.train(was_training)


def time_steps(model: Transformer, cfg: Config, tokenizer, steps: int, autocast,
               device: torch.device) -> dict[str, dict[str, float]]:
    """GRPO steps as the trainer runs them (one micro-batch a step): the objective's step_batches (a new rollout
    batch), then forward, backward and the run's optimizer step. Two copies of the model train side by side,
    one rolling out with the fixed-batch sampler, one through the engine, taking turns step by step."""
    from zer02llm.training.optim import build_optimizer

    runs = {}
    for name in ("fixed batch (before)", "engine, kept (GRPO)"):
        policy = copy.deepcopy(model)
        objective = GRPO(cfg, tokenizer, device)
        train, _ = objective.datasets()
        objective.prepare(policy, device, autocast)
        if name.startswith("fixed"):
            objective.sampler = FixedBatchSampler(policy, autocast)
        runs[name] = (policy, objective, train, build_optimizer(policy, cfg, device), [], [])
    P = cfg.train.batch_size
    for step in range(steps + 1):
        indices = [(step * P + i) % len(train) for i in range(P)]
        for policy, objective, train, optimizer, roll, learn in runs.values():
            sync(device)
            started = time.perf_counter()
            batches = objective.step_batches(lambda: [train.batch(indices)], step)
            sync(device)
            middle = time.perf_counter()
            for batch in batches:
                with autocast():
                    loss = objective.compute(policy, tuple(t.to(device) for t in batch)).loss
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            if step:  # the first is a warm-up
                roll.append(middle - started)
                learn.append(time.perf_counter() - middle)
    out = {}
    for name, (*_, roll, learn) in runs.items():
        r, t = statistics.median(roll), statistics.median(learn)
        out[name] = {"rollout_ms": 1e3 * r, "train_ms": 1e3 * t, "rollout_share": r / (r + t)}
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    cfg = grpo_config(args.overrides)
    from zer02llm.hardware import resolve_device, set_threads
    from zer02llm.tokenizer import Tokenizer

    set_threads(cfg.hardware.threads)
    device, dtype = resolve_device(cfg.hardware)
    tokenizer = Tokenizer.load(cfg.tokenizer.path)
    model = load_model(args.checkpoint, cfg, device)

    def autocast() -> contextlib.AbstractContextManager:  # the trainer's
        return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)

    objective = GRPO(cfg, tokenizer, device)
    train, _ = objective.datasets()
    prompts = [train.ids[i] for i in range(cfg.train.batch_size)]
    mode = cfg.mode
    load_before = load_average()
    samplers = time_samplers(model, prompts, mode, args.rollouts, tokenizer.eos_id, autocast, device)
    steps = time_steps(model, cfg, tokenizer, args.steps, autocast, device) if args.steps else {}
    load_after = load_average()

    shape = f"dim {cfg.model.dim}, {cfg.model.n_layers} layers, {cfg.model.n_heads} heads, vocab {cfg.model.vocab_size}"
    dtype_name = str(dtype).removeprefix("torch.")
    weights = f"weights of {args.checkpoint}" if args.checkpoint else "random weights"
    print(f"\nGRPO rollouts: {len(prompts)} prompts x {mode.group_size} completions, max_new_tokens "
          f"{mode.max_new_tokens}, temperature {mode.temperature}; {shape}; {device.type} {dtype_name}, "
          f"{torch.get_num_threads()} thread(s); {weights}; "
          f"prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens")
    print(f"load average (1, 5, 15 min): {load_before} before, {load_after} after\n")
    base = samplers["fixed batch (before)"]["tokens_per_s"]
    print(f"| {'sampler':<24} | {'tokens/s':>9} | {'x before':>8} | {'ms/rollout':>10} | {'tokens/rollout':>14} |")
    print(f"| {'-' * 24} | {'-' * 9} | {'-' * 8} | {'-' * 10} | {'-' * 14} |")
    for name, r in samplers.items():
        print(f"| {name:<24} | {r['tokens_per_s']:>9.0f} | {r['tokens_per_s'] / base:>8.2f} | "
              f"{r['ms_per_rollout']:>10.1f} | {r['tokens_per_rollout']:>14.1f} |")
    if steps:
        logps = ", log-probs" if mode.beta > 0 or mode.updates_per_rollout > 1 else ""
        print(f"\nGRPO steps (median of {args.steps}; rollout batch: sampling, scoring{logps}; "
              f"training: forward, backward, optimizer step):\n")
        print(f"| {'sampler':<24} | {'rollout batch ms':>16} | {'training ms':>11} | {'generating share':>16} |")
        print(f"| {'-' * 24} | {'-' * 16} | {'-' * 11} | {'-' * 16} |")
        for name, r in steps.items():
            print(f"| {name:<24} | {r['rollout_ms']:>16.0f} | {r['train_ms']:>11.0f} | "
                  f"{100 * r['rollout_share']:>15.0f}% |")
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "checkpoint": args.checkpoint,
                                         "load_average": [load_before, load_after], "samplers": samplers,
                                         "steps": steps}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
