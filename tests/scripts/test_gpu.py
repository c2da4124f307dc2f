"""Checks that need CUDA; the whole module skips without it. Run on a GPU machine with
`pytest -m gpu tests/test_gpu.py`; `bash scripts/gpu_check.sh` runs them and then the benchmarks.

The training checks build the real Trainer from a composed config (tests/conftest.py compose(): a GPU
hardware preset, the shipped sample corpus) in a temporary run directory and call its train_step(),
so autocast, the GradScaler, torch.compile and the optimizer are the ones a training run uses. Figures
worth keeping (peak memory per preset, compile time) are printed and, when the environment variable
ZER02LLM_GPU_FIGURES names a file, appended to it as JSON lines (gpu_check.sh's report reads them).
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from zer02llm.config import MoEConfig
from zer02llm.training.preflight import validate_run
from zer02llm.model import document_ids, document_positions
from zer02llm.model import masking
from zer02llm.model import moe
from zer02llm.model.moe import MoEFeedForward
from zer02llm.model.transformer import FeedForward
from zer02llm.inference.sampling import SamplingParams, generate

from conftest import compose
from test_document_mask import BOS, EOS, VOCAB, build

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEVICE = "cuda"
# the smallest GPU preset (dense, dim 512 x 8 layers, batch 16 x seq 512), with one micro-batch per step,
# the full learning rate from the first step (so a few steps visibly train) and no validation set
# AdamW: the dtype and GradScaler checks below compare AdamW's state (pretraining's default is Muon now; its
# GradScaler path is checked on the CPU, tests/training/test_optim.py)
GPU_RUN = ["optim=adamw", "hardware=16gb", "train.grad_accum=1", "train.warmup_steps=0", "train.max_steps=100",
           "data.val_path=null"]
STEPS = 5


def long_packed_windows(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Windows of documents (bos + text + eos) of 1 to 120 tokens, the first opening mid-document:
    several 128-token flex blocks, some whole inside one document, some cut by boundaries."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        row = torch.randint(3, VOCAB, (7,), generator=gen).tolist() if b == 0 else []
        while len(row) < length:
            n = int(torch.randint(1, 120, (1,), generator=gen))
            row += [BOS, *torch.randint(3, VOCAB, (n,), generator=gen).tolist(), EOS]
        rows.append(row[:length])
    return torch.tensor(rows)


@pytest.mark.skipif(not masking.HAS_FLEX, reason="this torch has no flex_attention")
@pytest.mark.parametrize("restart", [True, False], ids=["restart", "window-positions"])
def test_flex_matches_math_logits_and_gradients_on_cuda(restart):
    """On CUDA a document mask runs through flex_attention by default; it must agree with the math
    path under the dense mask, forward and backward (float32, so flex's compiled kernel is compared
    against plain matmuls at float32 accuracy)."""
    torch._dynamo.reset()
    tokens = long_packed_windows(batch=2, length=300).cuda()
    targets = torch.roll(tokens, -1, dims=1)
    doc_ids = document_ids(tokens, BOS)
    positions = document_positions(doc_ids) if restart else None
    results = []
    try:
        for impl in ("sdpa", "math"):
            model = build(impl, dtype=torch.float32, dim=64, n_heads=4, n_kv_heads=2, max_seq_len=512).cuda().train()
            expected_mask = masking.BlockMask if impl == "sdpa" else torch.Tensor
            assert isinstance(model._document_mask(doc_ids), expected_mask)
            out = model(tokens, targets, doc_ids=doc_ids, positions=positions)
            out.loss.backward()
            results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    finally:
        torch._dynamo.reset()
    (out_f, grads_f), (out_m, grads_m) = results
    assert out_m.logits.abs().amax() > 1.0
    torch.testing.assert_close(out_f.logits, out_m.logits, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(out_f.loss, out_m.loss, rtol=1e-4, atol=1e-4)
    for name in grads_m:
        assert grads_f[name].abs().amax() > 0, name
        torch.testing.assert_close(grads_f[name], grads_m[name], rtol=2e-3, atol=2e-3, msg=name)


# --- helpers for the training checks -----------------------------------------------------------

def build_trainer(run_dir: Path, overrides: list[str]):
    """The Trainer `python -m zer02llm.train <overrides>` would build, in run_dir."""
    from zer02llm.training.trainer import Trainer

    dict_cfg = compose(overrides)
    cfg = OmegaConf.to_object(dict_cfg)
    validate_run(cfg)
    return Trainer(cfg, run_dir, OmegaConf.to_container(dict_cfg, resolve=True))


def train_steps(trainer, n: int) -> list[dict[str, float]]:
    """n optimizer steps through Trainer.train_step(); each step's loss and (unclipped) gradient norm."""
    rows = []
    for _ in range(n):
        stats = trainer.train_step()
        rows.append({"loss": float(stats["loss"]), "grad_norm": float(stats["grad_norm"])})
    return rows


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def record_figure(check: str, **values) -> None:
    """Print a figure (pytest -s shows it) and append it to $ZER02LLM_GPU_FIGURES for gpu_check's report."""
    print(f"[{check}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
    if path := os.environ.get("ZER02LLM_GPU_FIGURES"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"check": check, **values}) + "\n")


def assert_steps_agree(expected: list[dict], got: list[dict], loss_rtol: float, norm_rtol: float, what: str) -> None:
    """Step 1 starts from the same weights and batch, so only rounding separates the two runs there;
    later steps also carry the earlier steps' (slightly different) updates: twice the tolerance."""
    for step, (a, b) in enumerate(zip(expected, got), 1):
        factor = 1 if step == 1 else 2
        assert b["loss"] == pytest.approx(a["loss"], rel=factor * loss_rtol), f"{what}: loss at step {step}"
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=factor * norm_rtol), f"{what}: grad norm at step {step}"


def weights_and_adam_state(trainer) -> dict[str, torch.Tensor]:
    """Copies of every parameter and of AdamW's state (step, exp_avg, exp_avg_sq) for each."""
    copies = {}
    for name, param in trainer.model.named_parameters():
        copies[name] = param.detach().clone()
        for key, value in trainer.optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor):
                copies[f"{name}/{key}"] = value.detach().clone()
    return copies


# --- mixed precision -------------------------------------------------------------------------------

# bf16 keeps 8 significant bits (unit roundoff 2^-8 = 3.9e-3). Autocast rounds each matmul's inputs to
# it and accumulates in float32; over the 8192 tokens of a batch these roundings average out in the
# mean loss (1e-5 relative in a CPU run of this check at dim 256 x 4 layers), while the gradient norm,
# a sum of squares dominated by fewer large entries, keeps more of them (up to 1.2e-3 there). The
# tolerances leave 30x and 15x room for the GPU's kernels (flash attention rounds its softmax weights
# to bf16) and for depth; a real fault in the mixed-precision path (a layer overflowing in half
# precision, a loss or gradient scaled twice, a lost cast) moves the figures by far more.
BF16_LOSS_RTOL, BF16_GRAD_NORM_RTOL = 1e-3, 2e-2


def test_bf16_training_steps_agree_with_float32(tmp_path):
    runs, matmul_dtypes = {}, {}
    for dtype in ("float32", "bfloat16"):
        trainer = build_trainer(tmp_path / dtype, [*GPU_RUN, f"hardware.dtype={dtype}"])
        assert trainer.device.type == DEVICE and trainer.dtype == getattr(torch, dtype)
        assert not trainer.scaler.is_enabled()  # a GradScaler only for float16
        probe = trainer.model.layers[0].attn.q_proj  # what dtype the matmuls really ran in
        hook = probe.register_forward_hook(lambda module, args, out, key=dtype: matmul_dtypes.__setitem__(key, out.dtype))
        runs[dtype] = train_steps(trainer, STEPS)
        hook.remove()
        del trainer, probe, hook
        release_memory()
    assert matmul_dtypes == {"float32": torch.float32, "bfloat16": torch.bfloat16}
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    record_figure("bf16_vs_fp32", loss_fp32=fp32[0]["loss"], loss_bf16=bf16[0]["loss"],
                  grad_norm_fp32=fp32[0]["grad_norm"], grad_norm_bf16=bf16[0]["grad_norm"],
                  loss_rel_diff=abs(bf16[0]["loss"] / fp32[0]["loss"] - 1),
                  grad_norm_rel_diff=abs(bf16[0]["grad_norm"] / fp32[0]["grad_norm"] - 1))
    assert fp32[-1]["loss"] < fp32[0]["loss"] - 0.2, fp32  # the steps train, so later steps compare something
    assert_steps_agree(fp32, bf16, BF16_LOSS_RTOL, BF16_GRAD_NORM_RTOL, "bf16 against float32")


def check_grad_scaler_skips_an_inf_step(trainer) -> None:
    """A few steps train; an inf in one gradient skips the whole optimizer step (weights and AdamW state
    bit for bit unchanged) and halves the loss scale; the step after it trains again."""
    model, scaler = trainer.model, trainer.scaler
    initial = weights_and_adam_state(trainer)
    steps = train_steps(trainer, 3)
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps), steps
    assert steps[-1]["loss"] < steps[0]["loss"], steps
    assert not all(torch.equal(initial[n], p) for n, p in model.named_parameters()), "no step changed the weights"

    scale, before = scaler.get_scale(), weights_and_adam_state(trainer)
    target = model.layers[0].attn.q_proj.weight

    def poison(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad.view(-1)[0] = float("inf")
        return grad

    handle = target.register_hook(poison)
    try:
        poisoned = trainer.train_step()
    finally:
        handle.remove()
    assert not math.isfinite(float(poisoned["grad_norm"]))
    assert scaler.get_scale() == scale * 0.5  # GradScaler's backoff_factor
    after = weights_and_adam_state(trainer)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"the skipped step changed {changed[:5]}"

    resumed = train_steps(trainer, 1)[0]
    assert math.isfinite(resumed["loss"]) and math.isfinite(resumed["grad_norm"])
    assert scaler.get_scale() == scale * 0.5  # no growth before growth_interval (2000) good steps
    assert not torch.equal(target, before["layers.0.attn.q_proj.weight"]), "the step after the skip did not train"


def test_float16_grad_scaler_trains_and_skips_an_inf_step(tmp_path):
    trainer = build_trainer(tmp_path, [*GPU_RUN, "hardware.dtype=float16"])
    assert trainer.dtype == torch.float16 and trainer.scaler.is_enabled()
    check_grad_scaler_skips_an_inf_step(trainer)


# --- torch.compile ---------------------------------------------------------------------------------

# Compiled and eager bf16 runs differ by where rounding happens (inductor fuses elementwise chains and
# computes them in float32, eager rounds after each op): 1e-5 (loss) and 1e-3 (gradient norm) relative
# in a CPU run of this check. A compile fault (a stale buffer, a wrong fusion, a graph that drops the
# loss' mask) gives percents or more.
COMPILE_LOSS_RTOL, COMPILE_GRAD_NORM_RTOL = 1e-3, 2e-2


def test_compiled_training_matches_eager(tmp_path):
    # 2 layers instead of the preset's 8: the same kernels, a shorter compile
    base = [*GPU_RUN, "model.n_layers=2", "hardware.dtype=bfloat16"]
    runs, first_step_s = {}, {}
    torch._dynamo.reset()
    try:
        for compiled in (False, True):
            trainer = build_trainer(tmp_path / f"compile-{compiled}", [*base, f"hardware.compile={str(compiled).lower()}"])
            assert hasattr(trainer.forward, "_orig_mod") == compiled  # torch.compile's wrapper
            start = time.perf_counter()
            runs[compiled] = train_steps(trainer, 1)  # float() waits for the step
            first_step_s[compiled] = time.perf_counter() - start
            runs[compiled] += train_steps(trainer, STEPS - 1)
            del trainer
            release_memory()
    finally:
        torch._dynamo.reset()
    eager, compiled = runs[False], runs[True]
    record_figure("compile", first_step_s_compiled=first_step_s[True], first_step_s_eager=first_step_s[False],
                  loss_eager=eager[-1]["loss"], loss_compiled=compiled[-1]["loss"])
    assert eager[-1]["loss"] < eager[0]["loss"] - 0.2, eager
    assert_steps_agree(eager, compiled, COMPILE_LOSS_RTOL, COMPILE_GRAD_NORM_RTOL, "compiled against eager")


# --- Mixture of Experts: grouped_mm against the per-expert loop -----------------------------------

def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())


def count_grouped_mm(monkeypatch) -> list[int]:
    """Count calls of F.grouped_mm from moe.py from now on (after the path's one-off probe ran)."""
    probe = torch.zeros(2, 8, device=DEVICE, dtype=torch.bfloat16)
    assert moe._grouped_mm_supported(probe), "moe.py does not choose grouped_mm for bf16 on this GPU"
    calls = [0]
    original = moe.F.grouped_mm

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(moe.F, "grouped_mm", counting)
    return calls


def use_per_expert_loop(monkeypatch) -> None:
    """What moe.py does where grouped_mm is missing or disagrees with plain matmuls: one matmul per expert."""
    monkeypatch.setattr(moe, "_grouped_mm_agrees", lambda device, dtype: False)


# bf16 inputs and outputs, float32 accumulation in both paths: they differ by the order of float32
# sums and so by at most one bf16 rounding of each output (2^-8 relative); 1e-2 in the relative
# Frobenius norm leaves room and still fails a wrong slice, a wrong expert's weights or a lost token.
# Against float32, each path carries bf16's rounding of inputs and outputs through three matmuls.
MOE_PATHS_RTOL, MOE_BF16_RTOL = 1e-2, 3e-2


@pytest.mark.skipif(not moe._HAS_GROUPED_MM, reason="this torch has no torch.nn.functional.grouped_mm")
def test_grouped_mm_expert_mlp_matches_per_expert_loop_on_cuda(monkeypatch):
    cfg = MoEConfig(vocab_size=VOCAB, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=64,
                    num_experts=4, expert_hidden_dim=128)
    torch.manual_seed(0)
    layer = MoEFeedForward(cfg, FeedForward).to(DEVICE)
    with torch.no_grad():  # unit-scale experts
        for p in (layer.gate_proj, layer.up_proj, layer.down_proj):
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-2]))
    sizes = [37, 0, 150, 69]  # expert 1 gets no token: an empty group
    offsets = torch.tensor(sizes).cumsum(0).to(device=DEVICE, dtype=torch.int32)
    xs = torch.randn(sum(sizes), cfg.dim, device=DEVICE)
    upstream = torch.randn(sum(sizes), cfg.dim, device=DEVICE)

    def run(bf16: bool) -> dict[str, torch.Tensor]:
        layer.zero_grad(set_to_none=True)
        x = xs.clone().requires_grad_()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            out = layer._expert_mlp(x, offsets)
        (out.float() * upstream).sum().backward()
        return {"out": out.detach().float(), "x.grad": x.grad, "gate": layer.gate_proj.grad,
                "up": layer.up_proj.grad, "down": layer.down_proj.grad}

    reference = run(bf16=False)  # float32: the per-expert loop (grouped_mm runs bf16 only)
    calls = count_grouped_mm(monkeypatch)
    grouped = run(bf16=True)
    assert calls[0] == 3, f"grouped_mm ran {calls[0]} times, expected gate, up and down"
    use_per_expert_loop(monkeypatch)
    loop = run(bf16=True)
    assert calls[0] == 3, "the per-expert loop called grouped_mm"
    for name in reference:
        assert relative_error(grouped[name], loop[name]) < MOE_PATHS_RTOL, name
        for path in (grouped, loop):
            assert relative_error(path[name], reference[name]) < MOE_BF16_RTOL, name
    for name in ("gate", "up", "down"):  # the expert with no token: exactly zero gradient in both paths
        assert grouped[name][1].abs().max() == 0 and loop[name][1].abs().max() == 0, name


@pytest.mark.skipif(not moe._HAS_GROUPED_MM, reason="this torch has no torch.nn.functional.grouped_mm")
def test_grouped_mm_moe_model_matches_per_expert_loop_on_cuda(monkeypatch):
    """A whole MoE model under bf16 autocast, forward and backward. One layer, so that the router sees
    the same input bits in both runs and routes identically (deeper layers would see the first
    layer's rounding differences, and a token near a routing tie could switch experts)."""
    model = build("sdpa", dtype=torch.float32, kind="moe", dim=64, n_layers=1, expert_hidden_dim=128,
                  max_seq_len=256).to(DEVICE).train()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (4, 257), generator=gen).to(DEVICE)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def run() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = model(inputs, targets)
        (out.loss + out.aux_loss).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        return {"logits": out.logits.detach(), "loss": out.loss.detach(), **grads}, out.expert_load

    calls = count_grouped_mm(monkeypatch)
    grouped, grouped_load = run()
    assert calls[0] == 3, f"grouped_mm ran {calls[0]} times in the MoE layer, expected 3"
    use_per_expert_loop(monkeypatch)
    loop, loop_load = run()
    assert calls[0] == 3
    assert torch.equal(grouped_load, loop_load)  # the same routing
    for name in grouped:
        assert relative_error(grouped[name], loop[name]) < MOE_PATHS_RTOL, name


# --- KV cache --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_kv_cache_generation_matches_recomputation_on_cuda(kind):
    """Greedy generation through sampling.generate (one token per forward, the KV cache) picks the
    tokens that recomputing the whole sequence at every step picks. float32, as generate and eval run;
    randomized unit-scale weights, so the logits have clear maxima (no near ties to flip)."""
    model = build("sdpa", dtype=torch.float32, kind=kind, dim=64, n_layers=2, max_seq_len=512).to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, VOCAB, (24,), generator=gen).tolist()
    n_new = 200  # past several attention blocks of cached keys
    cached = list(generate(model, prompt, n_new, SamplingParams(temperature=0.0)))
    assert len(cached) == n_new
    tokens, margins = list(prompt), []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(torch.tensor([tokens], device=DEVICE)).logits[0, -1]
            top2 = logits.topk(2).values
            margins.append(float(top2[0] - top2[1]))
            tokens.append(int(logits.argmax()))
    recomputed = tokens[len(prompt):]
    first_difference = next((i for i, (a, b) in enumerate(zip(cached, recomputed)) if a != b), None)
    assert first_difference is None, (f"token {first_difference} differs (top-2 logit margin there "
                                      f"{margins[first_difference]:.2e})")
    assert len(set(recomputed)) > 5, "the generation is degenerate: nothing much was compared"


# --- GPU presets fit their cards -------------------------------------------------------------------

@pytest.mark.parametrize("model", ["dense", "moe"])
@pytest.mark.parametrize("preset", ["16gb", "24gb", "40gb"])
def test_preset_training_step_fits_its_card(preset, model, tmp_path):
    """The preset's training step (its model, batch size and accumulation, seq 512, bf16) stays under the
    card's memory: torch.cuda.max_memory_allocated over two optimizer steps (the second with the optimizer's
    state allocated: the default's, Muon's momentum and AdamW's moments for the embedding and norms), less what was allocated before the Trainer was built. The CUDA context (~0.5 GiB)
    and the allocator's cache (max_memory_reserved, printed) come on top of it on a real card."""
    limit_gib = int(preset.removesuffix("gb"))
    release_memory()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    overrides = [f"hardware={preset}", f"model={model}", "hardware.dtype=bfloat16", "data.seq_len=512",
                 "train.max_steps=2", "data.val_path=null"]
    trainer = build_trainer(tmp_path, overrides)
    preset_cfg = OmegaConf.to_object(compose([f"hardware={preset}", f"model={model}"]))
    assert trainer.cfg.train.batch_size == preset_cfg.train.batch_size
    assert trainer.cfg.train.grad_accum == preset_cfg.train.grad_accum
    assert trainer.dtype == torch.bfloat16 and trainer.cfg.data.seq_len == 512
    start = time.perf_counter()
    steps = train_steps(trainer, 2)
    seconds = time.perf_counter() - start
    torch.cuda.synchronize()
    peak_gib = (torch.cuda.max_memory_allocated() - baseline) / 2**30
    reserved_gib = torch.cuda.max_memory_reserved() / 2**30
    record_figure("preset_memory", preset=preset, model=model, limit_gib=limit_gib, peak_allocated_gib=peak_gib,
                  peak_reserved_gib=reserved_gib, params=trainer.model.num_params(),
                  batch_size=trainer.cfg.train.batch_size, grad_accum=trainer.cfg.train.grad_accum, seq_len=512,
                  seconds_per_step=seconds / 2, loss=steps[-1]["loss"])
    del trainer
    release_memory()
    assert all(math.isfinite(s["loss"]) for s in steps), steps
    assert peak_gib < limit_gib, f"hardware={preset} model={model} peaks at {peak_gib:.2f} GiB, over {limit_gib} GiB"
