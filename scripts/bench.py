#!/usr/bin/env python3
"""Benchmark zer02llm's Transformer (training step, KV-cached generation) side by side with the same
architecture in Hugging Face transformers (LlamaForCausalLM). It prints figures; it asserts none.

Training: random token batches (batch, seq) from a fixed seed; one step = forward + loss + backward
+ clip-grad-norm(1.0) + AdamW step + zero_grad, under autocast when --dtype is not float32. The peer
starts from a copy of our initial weights, sees the same batches (labels = input_ids, shifted inside
transformers; ours gets the same shift) and the same optimizer (zer02llm.training.trainer.build_optimizer), so
the initial losses and the greedy generations should agree.

    MFU = tokens/s * flops_per_token / peak FLOP/s
    flops_per_token = 6 * N_matmul + 12 * n_layers * dim * seq_len      (Transformer.flops_per_token)
    N_matmul: non-embedding parameters plus the tied LM head; the second term is attention's QK^T and AV

Peak: --peak-tflops, else a table of dense bf16 tensor-core peaks by GPU name; MFU is n/a on the CPU
unless --peak-tflops is given. Memory: CUDA max_memory_allocated; on the CPU the process's peak RSS
during each model's training phase (VmHWM, reset through /proc/self/clear_refs; ru_maxrss otherwise).

Compile: with --compile the first warm-up step traces and compiles (forward and backward); warm-up
steps are never timed, so tokens/s is the compiled steady state, and the warm-up's seconds (compile
included) are reported apart as warmup_s / first_step_s. --compile-decode times our generation a second
time through sampling.StaticDecoder (static KV cache, compiled one-token step, a CUDA graph on CUDA),
its compile in the untimed warm-up generation, and says whether its greedy tokens match the eager ones.

    python scripts/bench.py                                               # reference shape, fp32 on CPU
    python scripts/bench.py --dim 128 --n-layers 2 --n-heads 4 --seq-len 128     # the hardware=cpu preset
    python scripts/bench.py --preset 16gb --moe --compile --json bench.json  # hardware=16gb's model and batch
    python scripts/bench.py --device cuda --compile --json bench.json
    python scripts/bench.py --preset cpu --no-peer --compile-decode --steps 2   # eager vs compiled decoding
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

try:
    import zer02llm  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zer02llm import hardware
from zer02llm.config import Config, ModelConfig, MoEConfig, model_problems
from zer02llm.model import IGNORE_INDEX, Transformer
from zer02llm.inference.sampling import SamplingParams, StaticDecoder, generate
from zer02llm.training.optim import build_optimizer

SEED = 0
PROMPT_LEN = 16
GEN_REPEATS = 3  # timed generations after the warm-up one; the median counts
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMULA = "flops_per_token = 6*N_matmul + 12*n_layers*dim*seq_len; MFU = tokens/s * flops_per_token / peak"
# the reference shape, without --preset
SHAPE_DEFAULTS = dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, seq_len=256, batch_size=8, vocab_size=6400)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    add = p.add_argument
    add("--preset", choices=hardware_presets(), default=None,
        help="shape, seq_len and batch_size of `hardware=<preset>` (with --moe: and model=moe), composed as the "
             "train command composes them; shape flags given as well override the preset's values")
    # shape: unset means the preset's value, or without --preset the reference shape (SHAPE_DEFAULTS)
    add("--dim", type=int, default=None, help=f"model width; unset: {SHAPE_DEFAULTS['dim']}")
    add("--n-layers", type=int, default=None, help=f"Transformer blocks; unset: {SHAPE_DEFAULTS['n_layers']}")
    add("--n-heads", type=int, default=None, help=f"query heads; unset: {SHAPE_DEFAULTS['n_heads']}")
    add("--n-kv-heads", type=int, default=None,
        help=f"key/value heads (grouped-query attention); unset: {SHAPE_DEFAULTS['n_kv_heads']}")
    add("--seq-len", type=int, default=None, help=f"training sequence length; unset: {SHAPE_DEFAULTS['seq_len']}")
    add("--batch-size", type=int, default=None,
        help=f"training sequences per step; unset: {SHAPE_DEFAULTS['batch_size']}")
    add("--vocab-size", type=int, default=None,
        help=f"vocabulary (random tokens below it); unset: {SHAPE_DEFAULTS['vocab_size']}")
    add("--steps", type=int, default=10, help="timed training steps")
    add("--warmup", type=int, default=3, help="untimed training steps before them")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    add("--dtype", choices=["auto", *DTYPES], default="auto", help="autocast dtype; auto: float32 on CPU, bfloat16 on CUDA")
    add("--attention", choices=["sdpa", "math"], default="sdpa", help="our attention path (the peer uses sdpa)")
    add("--compile", action="store_true",
        help="torch.compile both models for training (generation runs eager); the compile falls in the untimed "
             "warm-up, reported apart (warmup_s)")
    add("--compile-backend", default="inductor",
        help="torch.compile backend; 'aot_eager' traces forward and backward without generating kernels (a quick "
             "check that the compiled path runs)")
    add("--no-generate", action="store_true", help="skip the generation timing (e.g. when an eager run has it)")
    add("--compile-decode", action="store_true",
        help="also time our generation with the decode step compiled (sampling.StaticDecoder: a CUDA graph on "
             "CUDA; the compile falls in the untimed warm-up generation, reported as warmup_s)")
    add("--peak-tflops", type=float, default=None,
        help="device peak TFLOP/s for MFU; unset: known GPUs' dense bf16 peak, n/a on CPU")
    add("--gen-tokens", type=int, default=64, help=f"new tokens per generation (batch 1, {PROMPT_LEN}-token prompt)")
    add("--no-peer", action="store_true", help="skip the transformers LlamaForCausalLM peer")
    add("--json", metavar="PATH", default=None, help="also write all results as JSON ('-': stdout)")
    add("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    add("--hidden-dim", type=int, default=None, help="SwiGLU width (dense) or expert width (MoE); unset: 64*ceil(8*dim/3/64)")
    add("--moe", action="store_true", help="benchmark the Mixture-of-Experts model (no transformers peer)")
    moe = MoEConfig()  # unset MoE flags: the preset's model=moe values, else MoEConfig's defaults
    add("--num-experts", type=int, default=None, help=f"MoE: routed experts; unset: {moe.num_experts}")
    add("--experts-per-token", type=int, default=None, help=f"MoE: top-k; unset: {moe.experts_per_token}")
    add("--num-shared-experts", type=int, default=None,
        help=f"MoE: always-on experts; unset: {moe.num_shared_experts}")
    add("--capacity-factor", type=float, default=None, help=f"MoE: 0 = dropless; unset: {moe.capacity_factor}")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.gen_tokens < 1:
        p.error("--steps and --gen-tokens must be >= 1, --warmup >= 0")
    if args.compile and args.warmup < 1:
        p.error("--compile needs --warmup >= 1: the first step compiles, and a timed one would count the compile")
    fill_shape(args)
    return args


def hardware_presets() -> list[str]:
    """The hardware=<name> presets of conf/hardware/."""
    from zer02llm.resources import shipped_path

    return sorted(p.stem for p in (shipped_path("conf") / "hardware").glob("*.yaml"))


def preset_shape(preset: str, moe: bool) -> dict[str, Any]:
    """Shape, seq_len and batch_size that `python -m zer02llm.train hardware=<preset> [model=moe]` trains with:
    the config composed by Hydra, as the train command does (so imported only here)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from zer02llm.config import register_configs
    from zer02llm.resources import shipped_path

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(shipped_path("conf"))):
        cfg: Config = OmegaConf.to_object(compose("config", [f"hardware={preset}", f"model={'moe' if moe else 'dense'}"]))
    m = cfg.model
    values = dict(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads, vocab_size=m.vocab_size,
                  seq_len=cfg.data.seq_len, batch_size=cfg.train.batch_size, hidden_dim=m.hidden_dim)
    if isinstance(m, MoEConfig):
        values.update(hidden_dim=m.expert_hidden_dim, num_experts=m.num_experts, experts_per_token=m.experts_per_token,
                      num_shared_experts=m.num_shared_experts, capacity_factor=m.capacity_factor)
    return values


def fill_shape(args: argparse.Namespace) -> None:
    """Unset shape flags from --preset, else from SHAPE_DEFAULTS (MoE flags: MoEConfig's defaults)."""
    moe = MoEConfig()
    fallback = {**SHAPE_DEFAULTS, "hidden_dim": None, "num_experts": moe.num_experts,
                "experts_per_token": moe.experts_per_token, "num_shared_experts": moe.num_shared_experts,
                "capacity_factor": moe.capacity_factor}
    if args.preset:
        fallback.update(preset_shape(args.preset, args.moe))
    for key, value in fallback.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA kernels run asynchronously: wait for them around each timing
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def reset_peak_memory(device: torch.device) -> str:
    """Start a fresh peak; returns how peak_memory_mb will measure it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM (peak RSS) := current RSS
        return "process peak RSS during the training phase (VmHWM, reset via /proc/self/clear_refs)"
    except OSError:
        return "process peak RSS since start (not resettable here)"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        if found := re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()):
            return int(found.group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def cpu_seconds() -> Optional[tuple[float, float, float]]:
    """(wall clock, busy CPU-seconds of the whole machine, CPU-seconds of this process); None off Linux."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    own = resource.getrusage(resource.RUSAGE_SELF)
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return time.perf_counter(), busy, own.ru_utime + own.ru_stime


def others_cpu_share(start: Optional[tuple[float, float, float]]) -> Optional[float]:
    """Share of the machine's CPU time that other processes (or the hypervisor) took since start."""
    end = cpu_seconds()
    if start is None or end is None:
        return None
    wall, busy, own = (e - s for e, s in zip(end, start))
    return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


def contention_warning(others_share: Optional[float], threads: int) -> Optional[str]:
    """What to say when other processes competed for the CPUs (None when they hardly did)."""
    if (others_share or 0) <= 0.1:
        return None
    # torch's threads wait for each other at every op, so a busy neighbour stalls all of them:
    # one thread suffers least (docs/benchmarks.md), but that advice is no use once it is taken
    advice = (f"or try --threads 1 (this run had {threads})" if threads > 1
              else "--threads 1 is already the least sensitive to them")
    return (f"warning: other processes took {others_share:.0%} of the CPU time during the run, so these "
            f"timings are noisy: rerun on a quiet machine, {advice}")


def time_training(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                  batches: list[torch.Tensor], warmup: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Run a full training step per batch; time those after the first `warmup` (whose seconds, a compile
    included, are reported apart)."""
    mem_method = reset_peak_memory(device)
    optimizer = build_optimizer(model, Config(), device)  # AdamW, fused where torch has it
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model.train()
    times, warmup_times, losses = [], [], []
    for i, batch in enumerate(batches):
        sync(device)
        start = time.perf_counter()
        with autocast(device, dtype):
            loss = loss_fn(batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        (times if i >= warmup else warmup_times).append(time.perf_counter() - start)
        # a float, not a tensor: small tensors kept alive across steps pin glibc's heap and RSS grows each step
        losses.append(loss.item())
    tokens = sum(b.numel() for b in batches[warmup:])
    return {"tokens_per_s": tokens / sum(times), "ms_per_step": 1e3 * sum(times) / len(times),
            "ms_per_step_median": 1e3 * statistics.median(times), "steps": len(times), "warmup": warmup,
            "loss_first": losses[0], "loss_last": losses[-1], "peak_mem_mb": peak_memory_mb(device),
            "mem_method": mem_method, "fused_adamw": bool(optimizer.defaults.get("fused")),
            "warmup_s": sum(warmup_times), "first_step_s": warmup_times[0] if warmup_times else None}


def time_generation(gen_fn: Callable[[], list[int]], n_new: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One warm-up generation, then the median of GEN_REPEATS timed ones (prefill included)."""
    times = []
    with torch.no_grad(), autocast(device, dtype):
        sync(device)
        start = time.perf_counter()
        tokens = gen_fn()
        sync(device)
        warmup = time.perf_counter() - start
        for _ in range(GEN_REPEATS):
            sync(device)
            start = time.perf_counter()
            tokens = gen_fn()
            sync(device)
            times.append(time.perf_counter() - start)
    if len(tokens) != n_new:
        raise RuntimeError(f"generated {len(tokens)} tokens, expected {n_new}")
    seconds = statistics.median(times)
    return {"tokens_per_s": n_new / seconds, "ms_per_token": 1e3 * seconds / n_new, "new_tokens": n_new,
            "prompt_tokens": PROMPT_LEN, "tokens": tokens, "warmup_s": warmup}


def build_peer(model: Transformer) -> torch.nn.Module:
    """LlamaForCausalLM with our dimensions, holding a copy of our weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    peer = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=True,
        max_position_embeddings=cfg.max_seq_len, attn_implementation="sdpa", pad_token_id=0))
    renames = [(r"^tok_embeddings\.", "model.embed_tokens."), (r"^norm\.", "model.norm."),
               (r"^layers\.", "model.layers."), (r"\.attn_norm\.", ".input_layernorm."),
               (r"\.ffn_norm\.", ".post_attention_layernorm."), (r"\.attn\.", ".self_attn."), (r"\.ffn\.", ".mlp.")]
    state = {}
    for name, tensor in model.state_dict().items():
        for pattern, new in renames:
            name = re.sub(pattern, new, name)
        state[name] = tensor
    peer.load_state_dict(state, strict=True)  # fails loudly if the two architectures drift apart
    return peer.to(model.tok_embeddings.weight.device)


def peak_tflops(args: argparse.Namespace, device: torch.device) -> tuple[Optional[float], str]:
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if device.type == "cuda":
        known = hardware.peak_tflops(torch.cuda.get_device_name(device))  # dense bf16 peaks by GPU name
        if known is not None:
            return known[1], f"table: {known[0]}, dense bf16"
    return None, "unknown: give --peak-tflops"


def machine_info(device: torch.device, dtype: torch.dtype) -> dict:
    name = platform.processor() or platform.machine()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        with contextlib.suppress(OSError):
            if found := re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()):
                name = found.group(1).strip()
    return {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "device_name": name, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "dtype": str(dtype).removeprefix("torch.")}


def bench_model(label: str, model: torch.nn.Module, loss_fn: Callable, gen_fn: Callable, batches: list[torch.Tensor],
                args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                compiled_gen_fn: Optional[Callable] = None) -> dict:
    gen = compiled = None
    if not args.no_generate:
        print(f"[{label}] generation ...", file=sys.stderr, flush=True)
        gen = time_generation(gen_fn, args.gen_tokens, device, dtype)  # first, while the weights are the initial ones
        if compiled_gen_fn is not None:
            print(f"[{label}] generation, compiled decode step ...", file=sys.stderr, flush=True)
            compiled = time_generation(compiled_gen_fn, args.gen_tokens, device, dtype)
            compiled["matches_eager"] = compiled["tokens"] == gen["tokens"]
    print(f"[{label}] training ...", file=sys.stderr, flush=True)
    train = time_training(model, loss_fn, batches, args.warmup, device, dtype)
    entry = {"params": sum(p.numel() for p in model.parameters()), "train": train, "generate": gen}
    if compiled is not None:
        entry["generate_compiled"] = compiled
    return entry


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    cpu_start = cpu_seconds()  # to tell, at the end, whether other processes competed for the CPUs
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False on this machine")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    dtype = DTYPES[args.dtype if args.dtype != "auto" else "bfloat16" if device.type == "cuda" else "float32"]
    if device.type == "cpu" and dtype == torch.float16:
        sys.exit("--dtype float16 is for CUDA; use float32 or bfloat16 on the CPU")
    shape = dict(vocab_size=args.vocab_size, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                 n_kv_heads=args.n_kv_heads, attention=args.attention,
                 max_seq_len=max(args.seq_len, PROMPT_LEN + args.gen_tokens))
    if args.moe:
        cfg: ModelConfig = MoEConfig(**shape, num_experts=args.num_experts, experts_per_token=args.experts_per_token,
                                     num_shared_experts=args.num_shared_experts, expert_hidden_dim=args.hidden_dim,
                                     capacity_factor=args.capacity_factor)
        args.no_peer = True  # LlamaForCausalLM has no experts
    else:
        cfg = ModelConfig(**shape, hidden_dim=args.hidden_dim)
    if problems := model_problems(cfg):
        sys.exit("bad model shape:\n  " + "\n  ".join(problems))

    torch.manual_seed(SEED)
    ours = Transformer(cfg).to(device)
    rng = torch.Generator().manual_seed(SEED)
    batches = [torch.randint(cfg.vocab_size, (args.batch_size, args.seq_len), generator=rng).to(device)
               for _ in range(args.warmup + args.steps)]
    prompt = torch.randint(cfg.vocab_size, (PROMPT_LEN,), generator=rng).tolist()
    peer = None
    if not args.no_peer:
        try:
            peer = build_peer(ours)  # before ours trains: both start from the same weights
        except ImportError:
            print("transformers is not importable: no peer", file=sys.stderr)

    # the peer's loss: position t predicts token t+1 (labels shifted inside); the same targets for ours
    targets = [torch.cat([b[:, 1:], torch.full_like(b[:, :1], IGNORE_INDEX)], dim=1) for b in batches]
    target_of = {id(b): t for b, t in zip(batches, targets)}
    fwd = torch.compile(ours, backend=args.compile_backend) if args.compile else ours
    greedy = SamplingParams(temperature=0.0)
    decoder = StaticDecoder(ours) if args.compile_decode and not args.no_generate else None
    peak, peak_source = peak_tflops(args, device)
    results: dict[str, Any] = {
        "machine": machine_info(device, dtype), "args": vars(args), "formula": FORMULA,
        "flops_per_token": ours.flops_per_token(args.seq_len), "peak_tflops": peak, "peak_source": peak_source,
        "ours": bench_model("zer02llm", ours, lambda b: fwd(b, target_of[id(b)]).loss,
                            lambda: list(generate(ours, prompt, args.gen_tokens, greedy)),
                            batches, args, device, dtype,
                            (lambda: list(generate(decoder, prompt, args.gen_tokens, greedy))) if decoder else None)}
    results["ours"]["attention"] = args.attention
    results["ours"]["active_params"] = ours.num_params(active=True)
    results["ours"]["model"] = cfg.name

    if peer is not None:
        import transformers

        pfwd = torch.compile(peer, backend=args.compile_backend) if args.compile else peer
        ids = torch.tensor([prompt], device=device)

        def peer_generate() -> list[int]:
            out = peer.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                                max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens)
            return out[0, PROMPT_LEN:].tolist()

        results["peer"] = bench_model(f"transformers {transformers.__version__}", peer,
                                      lambda b: pfwd(input_ids=b, labels=b).loss, peer_generate,
                                      batches, args, device, dtype)
        results["peer"].update(attention="sdpa", transformers=transformers.__version__)
        results["ratio"] = {k: results["ours"][k]["tokens_per_s"] / results["peer"][k]["tokens_per_s"]
                            for k in ("train", "generate") if results["ours"][k] is not None}
        if not args.no_generate:
            results["greedy_match"] = results["ours"]["generate"]["tokens"] == results["peer"]["generate"]["tokens"]
    for entry in (results["ours"], results.get("peer")):
        if entry is not None:
            flops = entry["train"]["tokens_per_s"] * results["flops_per_token"]
            entry["train"]["mfu"] = flops / (peak * 1e12) if peak else None
    results["machine"]["others_cpu_share"] = others_cpu_share(cpu_start)
    print_table(results, args)
    if args.json == "-":
        print(json.dumps(results, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_table(r: dict, args: argparse.Namespace) -> None:
    m, ours, peer = r["machine"], r["ours"], r.get("peer")
    print(f"\nshape: dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads ({args.n_kv_heads} KV), "
          f"seq {args.seq_len}, batch {args.batch_size}, vocab {args.vocab_size}; "
          f"{args.steps} timed steps after {args.warmup} warm-up"
          f"{f', compiled ({args.compile_backend})' if args.compile else ''}{f'; preset {args.preset}' if args.preset else ''}")
    print(f"device: {m['device']} ({m['device_name']}), {m['cpu_count']} CPUs, {m['threads']} threads, "
          f"{m['dtype']}, torch {m['torch']}")
    if m["device"] == "cpu" and (warning := contention_warning(m["others_cpu_share"], m["threads"])):
        print(warning)
    print(f"{FORMULA}\n  = {r['flops_per_token']:,} FLOPs/token at seq {args.seq_len}; "
          f"peak {r['peak_tflops'] or 'n/a'} TFLOP/s ({r['peak_source']})")
    # (label, path into an entry, format, show ours/peer ratio)
    rows = [("parameters", ("params",), "{:,}", False), ("attention", ("attention",), "{}", False),
            ("train tokens/s", ("train", "tokens_per_s"), "{:,.0f}", True),
            ("train ms/step (mean)", ("train", "ms_per_step"), "{:,.1f}", False),
            ("train ms/step (median)", ("train", "ms_per_step_median"), "{:,.1f}", False),
            ("MFU", ("train", "mfu"), "{:.1%}", False),
            ("peak memory MB", ("train", "peak_mem_mb"), "{:,.0f}", False),
            ("initial loss", ("train", "loss_first"), "{:.4f}", False),
            (f"warm-up s ({args.warmup} steps{', compile' if args.compile else ''})", ("train", "warmup_s"),
             "{:,.2f}", False)]
    if not args.no_generate:
        rows += [(f"generate tokens/s (b=1, {args.gen_tokens} new)", ("generate", "tokens_per_s"), "{:,.0f}", True),
                 ("generate ms/token", ("generate", "ms_per_token"), "{:.2f}", False)]
    entries = [ours] + ([peer] if peer else [])
    cols = ["zer02llm"] + ([f"transformers {peer['transformers']}", "ours/peer"] if peer else [])
    print(f"\n{'':<34}" + "".join(f"{c:>22}" for c in cols))
    for label, path, fmt, ratio in rows:
        values = [e[path[0]] if len(path) == 1 else e[path[0]][path[1]] for e in entries]
        cells = ["n/a" if v is None else fmt.format(v) for v in values]
        if peer:
            cells.append(f"{values[0] / values[1]:.2f}x" if ratio else "")
        print(f"{label:<34}" + "".join(f"{c:>22}" for c in cells))
    if ours["active_params"] != ours["params"]:
        print(f"{'active parameters per token':<34}{ours['active_params']:>22,}")
    if compiled := ours.get("generate_compiled"):
        eager = ours["generate"]
        print(f"{'generate tokens/s, compiled decode':<34}{compiled['tokens_per_s']:>22,.0f}"
              f"{compiled['tokens_per_s'] / eager['tokens_per_s']:>21.2f}x eager")
        print(f"{'compiled decode ms/token':<34}{compiled['ms_per_token']:>22.2f}")
        print(f"{'compiled decode warm-up s':<34}{compiled['warmup_s']:>22,.2f}  (compile included); greedy tokens "
              f"{'match' if compiled['matches_eager'] else 'DIFFER from'} eager")
    print(f"\nmemory: {ours['train']['mem_method']}")
    if peer:
        greedy = ("" if args.no_generate else
                  f"; greedy generations {'match' if r['greedy_match'] else 'differ'} (both start from the same weights)")
        print(f"parameter counts {'match' if ours['params'] == peer['params'] else 'DIFFER'}{greedy}")


if __name__ == "__main__":
    main()
