"""The optimizers (optim=adamw|muon) and the learning-rate schedule (a pure function of the step and, for a
run whose length changed on resume, of an anchor saved in the checkpoint)."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim._muon import _zeropower_via_newtonschulz as zeropower_via_newtonschulz

from zer02llm.config import Config

log = logging.getLogger(__name__)

# (start step, start lr) of a cosine re-laid when a resumed run's length changed; None: the plain schedule
Anchor = Optional[tuple[int, float]]


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float,
          anchor: Anchor = None) -> float:
    """Linear warmup to lr over warmup_steps, then cosine decay to lr * min_lr_ratio at total_steps.

    With an anchor (s0, lr0), steps from s0 on follow a cosine from lr0 at s0 to lr * min_lr_ratio at
    total_steps instead: what a run extended (or shortened) on resume follows, so the lr never jumps.
    """
    min_lr = lr * min_lr_ratio
    if anchor is not None and step >= anchor[0]:
        start, start_lr = anchor
        progress = min(1.0, (step - start) / max(1, total_steps - start))
        return min_lr + 0.5 * (start_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def relaid_anchor(step: int, lr: float, warmup_steps: int, old_total: int, min_lr_ratio: float,
                  old_anchor: Anchor) -> Anchor:
    """The anchor that continues, from `step`, a schedule laid for old_total steps to any new total.

    During warmup none is needed (warmup does not depend on the total); after it, the cosine restarts
    from the lr the old schedule gives at `step` (the floor, if the old run had finished).
    """
    if old_anchor is None and step < warmup_steps:
        return None
    return step, lr_at(step, lr, warmup_steps, old_total, min_lr_ratio, old_anchor)


def continued_anchor(step: int, total_steps: int, saved_total: int, saved_anchor: Optional[tuple[int, float]],
                     lr: float, warmup_steps: int, min_lr_ratio: float) -> Anchor:
    """The anchor a resumed run at `step` follows: the checkpoint's own when the run's length is the
    same (an exact resume), else one re-laid so the lr never jumps (logged, with a warning when the
    old run had already decayed to its floor)."""
    anchor: Anchor = (int(saved_anchor[0]), float(saved_anchor[1])) if saved_anchor is not None else None
    if saved_total == total_steps:
        return anchor
    relaid = relaid_anchor(step, lr, warmup_steps, saved_total, min_lr_ratio, anchor)
    if step >= total_steps:  # nothing left to train: the trainer says so
        return relaid
    min_lr = lr * min_lr_ratio
    if relaid is None:
        log.info("the run now has %d steps (the checkpoint's had %d); at step %d it is still warming up, "
                 "so warmup goes on and the cosine decays to %.2e at step %d", total_steps, saved_total, step,
                 min_lr, total_steps)
        return None
    log.info("the run now has %d steps (the checkpoint's had %d): the learning-rate schedule is re-laid from "
             "step %d, where it was %.2e, as a cosine to %.2e at step %d (no jump)", total_steps, saved_total,
             step, relaid[1], min_lr, total_steps)
    if step >= saved_total:  # the old run had finished: its cosine had reached the floor
        log.warning("the checkpoint's run had decayed to its floor lr %.2e: the %d extra steps train at that "
                    "lr. For a new warmup and decay, start a new run with mode.init_from=<the checkpoint>",
                    min_lr, total_steps - step)
    return relaid


# --- the optimizers ------------------------------------------------------------------------------

# 2-D yet kept on AdamW under optim=muon: a router's rows are per-expert logits (a classifier, like the
# LM head, not a hidden map), and LoRA's factors train as the LoRA recipes do, with AdamW (docs/optimizers.md)
ADAMW_MATRICES = ("router", "lora_a", "lora_b")
# optim=muon's parameter groups, each at its own peak lr (OptimConfig.group_lrs), in the order they step
GROUPS = ("embedding", "head", "scalar", "matrix", "matrix_experts")


def split_parameters(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """The trained parameters by group under optim=muon, each with its name.

    "matrix": the 2-D hidden matrices (attention and feed-forward projections, shared experts), Muon;
    "matrix_experts": the routed experts' stacked (E, in, out) matrices, ExpertMuon. AdamW for the rest:
    "embedding": the token embedding (named_parameters() lists a tied one once: it is also the LM head);
    "head": an untied LM head and the other AdamW matrices (routers, LoRA adapters); "scalar": the norms'
    gains (every tensor of fewer than 2 dimensions).
    """
    parts: dict[str, list[tuple[str, torch.nn.Parameter]]] = {group: [] for group in GROUPS}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        path = name.removeprefix("_orig_mod.").split(".")  # a torch.compile'd model's names too
        hidden = path[0] == "layers" and not any(part in ADAMW_MATRICES for part in path)
        if param.dim() < 2:
            group = "scalar"
        elif hidden:
            group = "matrix" if param.dim() == 2 else "matrix_experts"
        elif path[0] == "tok_embeddings":
            group = "embedding"
        else:
            group = "head"
        parts[group].append((name, param))
    return parts


def _fused_adamw(groups: list[dict[str, Any]], cfg: Config, device: torch.device) -> torch.optim.AdamW:
    kwargs: dict[str, Any] = dict(lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    # the fused kernel does the whole update in one launch on GPUs (and exists for CPU in recent torch)
    try:
        return torch.optim.AdamW(groups, **kwargs, fused=device.type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


def _adamw(params: list[torch.nn.Parameter], cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW at train.lr; weight decay on matrices (linear weights, embeddings), none on norms' gains."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return _fused_adamw(groups, cfg, device)


def build_optimizer(model: torch.nn.Module, cfg: Config,
                    device: torch.device) -> torch.optim.Optimizer | CombinedOptimizer:
    """optim=adamw: AdamW on every trained parameter at train.lr. optim=muon: Muon on the hidden matrices
    (batched over the experts of a stacked MoE tensor), AdamW on the rest, each group at its own lr. Every
    param group records its peak lr ("base_lr"), which the schedule scales (set_lr)."""
    if cfg.optim.name == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer | CombinedOptimizer = _adamw(params, cfg, device)
    else:
        optimizer = _muon_and_adamw(model, cfg, device)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def peak_lr(cfg: Config) -> float:
    """The lr the schedule is laid for and the logs show: train.lr under optim=adamw, the hidden matrices'
    (optim.matrix_lr) under optim=muon. set_lr scales every group by its own peak against it."""
    return cfg.optim.matrix_lr if cfg.optim.name == "muon" else cfg.train.lr


def _muon_and_adamw(model: torch.nn.Module, cfg: Config, device: torch.device) -> CombinedOptimizer:
    optim = cfg.optim
    parts = split_parameters(model)
    lrs = optim.group_lrs(cfg.model.dim)
    muon_args = dict(lr=lrs["matrix"], weight_decay=optim.muon_weight_decay, momentum=optim.muon_momentum,
                     nesterov=optim.muon_nesterov, ns_steps=optim.muon_ns_steps, adjust_lr_fn=optim.muon_adjust_lr)
    decay = {"embedding": cfg.train.weight_decay, "head": cfg.train.weight_decay, "scalar": 0.0}
    # empty groups are left out (a tied head, a model without routers): the state's layout follows the model
    adamw_groups = [{"params": [p for _, p in parts[group]], "lr": lrs[group], "weight_decay": decay[group],
                     "name": group} for group in ("embedding", "head", "scalar") if parts[group]]
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if adamw_groups:
        optimizers["adamw"] = _fused_adamw(adamw_groups, cfg, device)
    if parts["matrix"]:
        optimizers["muon"] = Muon([{"params": [p for _, p in parts["matrix"]], "name": "matrix"}], **muon_args)
    if parts["matrix_experts"]:
        optimizers["muon_experts"] = ExpertMuon([{"params": [p for _, p in parts["matrix_experts"]],
                                                  "name": "matrix_experts"}], **muon_args)
    n_muon = sum(p.numel() for part in ("matrix", "matrix_experts") for _, p in parts[part])
    if not n_muon:
        log.warning("optim=muon: no parameter for Muon to train (%s), everything trains with AdamW at the "
                    "optim.*_lr of its group", "LoRA freezes the base matrices; the adapters train at optim.head_lr"
                    if cfg.lora.rank > 0 else "the model has no trainable hidden matrix")
    else:
        sizes = ", ".join(f"{group} lr {lrs[group.removesuffix('_experts')]:.3g} ({len(parts[group])} tensors, "
                          f"{sum(p.numel() for _, p in parts[group]) / 1e6:.2f}M)" for group in GROUPS if parts[group])
        log.info("optim=muon: Muon (%s) on the hidden matrices, AdamW on the rest; peak lrs by group at model.dim=%d: "
                 "%s", optim.muon_adjust_lr, cfg.model.dim, sizes)
    return CombinedOptimizer(optimizers)


def set_lr(optimizer: torch.optim.Optimizer | CombinedOptimizer, lr: float, base_lr: float) -> None:
    """Give every param group the schedule's lr scaled to the group's own base lr; `lr` is the schedule
    at `base_lr` (peak_lr). Groups at that peak get `lr` itself, bit for bit (a ratio of 1.0)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * (group["base_lr"] / base_lr)


@contextlib.contextmanager
def config_base_lrs(optimizer: torch.optim.Optimizer | CombinedOptimizer) -> Iterator[None]:
    """Loading a state dict replaces the param groups with the checkpoint's: keep this run's base lrs,
    so that a resumed run follows its config (as train.lr does), and one saved before base lrs existed loads."""
    base_lrs = [group["base_lr"] for group in optimizer.param_groups]
    yield
    for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["base_lr"] = base_lr


class CombinedOptimizer:
    """Optimizers over disjoint parameters used as one: step, zero_grad, state_dict, load_state_dict and
    param_groups (theirs, in order), so the Trainer and torch.amp.GradScaler (unscale_, step, skipping a
    step with inf/NaN gradients) treat it as any optimizer."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        # read anew each time: load_state_dict gives an optimizer new group dicts
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:
        return {p: s for optimizer in self.optimizers.values() for p, s in optimizer.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("CombinedOptimizer.step takes no closure: run forward and backward before it")
        for optimizer in self.optimizers.values():
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"the optimizer state holds {sorted(state)}, this optimizer is {sorted(self.optimizers)}: "
                             f"it was saved with another optim or another set of trained parameters")
        for name, optimizer in self.optimizers.items():
            try:
                optimizer.load_state_dict(state[name])
            except ValueError as e:  # torch's words for groups that do not line up
                raise ValueError(f"the optimizer state's {name} groups do not fit this run's ({e}): it was saved "
                                 f"with another model or before optim=muon had per-group lrs; start a new run from "
                                 f"its weights with mode.init_from=<the checkpoint>") from None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (the same storage: in-place ops change the DTensor), else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class Muon(torch.optim.Muon):
    """torch.optim.Muon, also over FSDP2's sharded matrices (distributed.strategy=fsdp).

    Plain tensors take torch's own step. For DTensors, the momentum and Nesterov blend are elementwise on
    each rank's shard; Newton-Schulz needs the whole matrix: every rank gathers it (full_tensor), one rank
    in turn (matrix i on rank i % world size) orthogonalises it and broadcasts the result, and each rank
    keeps its shard of it. The arithmetic is torch's, so the step equals one process's.
    """

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("Muon.step takes no closure: run forward and backward before it")
        if not any(isinstance(p, DTensor) for group in self.param_groups for p in group["params"]):
            super().step()
            return
        index = 0  # over the whole optimizer, so that the ranks' shares of Newton-Schulz stay even
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = _momentum_update(_momentum_buffer(self.state[p], p.grad), p.grad, momentum,
                                          group["nesterov"])
                update = _orthogonalised_shard(update, index, group["ns_coefficients"], group["ns_steps"],
                                               group["eps"])
                index += 1
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-_adjusted_lr(lr, group["adjust_lr_fn"], rows=p.size(0), cols=p.size(1)))


def _orthogonalised_shard(update: DTensor, index: int, coefficients: tuple[float, float, float], steps: int,
                          eps: float) -> DTensor:
    """torch.optim.Muon's Newton-Schulz of a sharded matrix, as a DTensor sharded like `update`: computed on
    rank index % world size from the gathered matrix, then broadcast (in float32, which holds bfloat16 exactly)."""
    mesh = update.device_mesh
    full = update.full_tensor()
    group = mesh.get_group()
    owner = index % mesh.size()
    if mesh.get_local_rank() == owner:
        # contiguous: a tall matrix comes back transposed, and a broadcast sends the storage as it lies
        ortho = zeropower_via_newtonschulz(full, coefficients, steps, eps).float().contiguous()
    else:
        ortho = torch.empty(full.shape, dtype=torch.float32, device=full.device)
    dist.broadcast(ortho, group=group, group_src=owner)
    # every rank now holds the whole result: each keeps its own shard, without further communication
    return distribute_tensor(ortho, mesh, update.placements, src_data_rank=None)


def _adjusted_lr(lr: float, adjust_lr_fn: Optional[str], rows: int, cols: int) -> float:
    """torch.optim.Muon's shape scaling of the lr for a (rows, cols) = (out, in) matrix, rounded as torch does."""
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))  # Keller Jordan's
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))  # Moonshot's: the update's RMS of AdamW's
    else:
        ratio = 1.0
    return lr * ratio


def _momentum_buffer(state: dict, grad: torch.Tensor) -> torch.Tensor:
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    return state["momentum_buffer"]


def _momentum_update(buf: torch.Tensor, grad: torch.Tensor, momentum: float, nesterov: bool) -> torch.Tensor:
    """Muon's momentum, as torch.optim.Muon computes it: buf <- lerp(buf, grad), the update Nesterov's blend."""
    buf.lerp_(grad, 1 - momentum)
    return grad.lerp(buf, momentum) if nesterov else buf


def newton_schulz(grads: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation, in bfloat16, of every matrix of a
    (batch, rows, cols) stack at once."""
    a, b, c = coefficients
    x = grads.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1, each matrix its own
    for _ in range(steps):
        gram = x @ x.mT
        gram_update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, gram_update, x, beta=a)
    return x.mT if tall else x


class ExpertMuon(torch.optim.Optimizer):
    """torch.optim.Muon's update for stacked routed-expert weights (E, in, out): momentum, Newton-Schulz
    and the shape's lr scaling per expert matrix, the E matrices orthogonalised in one batched iteration.

    Each expert applies x @ W_e, so its matrix in nn.Linear's (out, in) orientation is W_e^T: the lr is
    scaled for (out, in), which makes this step the same as torch.optim.Muon's on E separate nn.Linear weights.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.02, weight_decay: float = 0.0,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315), eps: float = 1e-7,
                 ns_steps: int = 5, adjust_lr_fn: Optional[str] = None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 3:
                    raise ValueError(f"ExpertMuon takes stacks of matrices (E, in, out), got a tensor of shape "
                                     f"{tuple(p.shape)}: 2-D matrices go to torch.optim.Muon")

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("ExpertMuon.step takes no closure: run forward and backward before it")
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = _momentum_buffer(self.state[p], p.grad)
                # under FSDP2 the stack is sharded along the experts: every shard holds whole matrices, so each
                # rank orthogonalises its own experts and no gather is needed
                weight, grad = _local(p), _local(p.grad)
                update = _momentum_update(_local(buf), grad, momentum, group["nesterov"])
                if update.numel():  # a rank with no expert of this stack (more ranks than experts)
                    # orthogonalised as the (out, in) matrices nn.Linear would hold, exactly as torch.optim.Muon does
                    update = newton_schulz(update.mT, group["ns_coefficients"], group["ns_steps"], group["eps"]).mT
                weight.mul_(1 - lr * group["weight_decay"])
                weight.add_(update, alpha=-_adjusted_lr(lr, group["adjust_lr_fn"], rows=p.size(2), cols=p.size(1)))
