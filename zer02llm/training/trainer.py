"""The training loop: micro-steps with accumulation, mixed precision, clipping, schedule, eval,
checkpoints and exact resume. Plain PyTorch; it receives a validated Config and a run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from zer02llm import checkpoint as ckpt
from zer02llm.training import distributed, rundir
from zer02llm.interop import transformers as interop
from zer02llm.training.budget import plan_budget
from zer02llm.config import CHAT_MODES, Config, ConfigError, metric_direction
from zer02llm.hardware import resolve_device, set_threads
from zer02llm.data.sampler import BatchSampler
from zer02llm.evals.tasks import load_all as load_tasks
from zer02llm.model import Transformer
from zer02llm.model.lora import apply_lora, save_adapter
from zer02llm.training.objectives import Batch, Computed, build_objective
from zer02llm.training.optim import (Anchor, CombinedOptimizer, build_optimizer, config_base_lrs, continued_anchor,
                                     lr_at, peak_lr, set_lr)
from zer02llm.training.signals import StopSignals
from zer02llm.tokenizer import Tokenizer
from zer02llm.training.tracking import (MetricsFile, StepLogger, WandbLogger, moe_metrics, plot_losses, write_run_config,
                               write_summary)

log = logging.getLogger(__name__)
# sharded state gathered whole, on the CPU: checkpoints independent of the world size
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)
MOE_FIGURES = ("aux_loss", "expert_load", "router_entropy", "dropped_tokens")  # Output fields of an MoE model


def describe_step(batch_size: int, world_size: int, grad_accum: int, sample: str) -> str:
    """One optimizer step's global batch and how it is made up, e.g. "8 sequences (train.batch_size=4 x
    2 ranks x train.grad_accum=1)": a rank's own batch alone would hide what the step trains on."""
    ranks = f" x {world_size} ranks" if world_size > 1 else ""
    return (f"{batch_size * world_size * grad_accum} {sample}s (train.batch_size={batch_size}{ranks} x "
            f"train.grad_accum={grad_accum})")


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resolved_config: dict[str, Any],
                 on_claim: Optional[Callable[[], None]] = None):
        """`on_claim`: called (rank 0) once the run is accepted, before anything else is written to
        `run_dir` (the entry point writes Hydra's record and opens the log file)."""
        self.cfg, self.resolved_config, self.on_claim = cfg, resolved_config, on_claim
        self.env = distributed.read_env()
        device, self.dtype = resolve_device(cfg.hardware)
        self.device = distributed.device_for(self.env, device)
        distributed.init(self.env, self.device)
        # every rank works in rank 0's run directory; only rank 0 writes there
        self.run_dir = Path(distributed.broadcast_object(str(run_dir)))
        if not self.env.is_main:
            logging.getLogger("zer02llm").setLevel(logging.WARNING)
        log.info("run directory: %s%s", self.run_dir,
                 f" ({self.env.world_size} ranks)" if self.env.enabled else "")
        set_threads(cfg.hardware.threads)  # before any heavy work: torch sizes its thread pool on first use
        torch.manual_seed(cfg.train.seed)
        self.tokenizer = Tokenizer.load(cfg.tokenizer.path)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{self.tokenizer.vocab_size} tokens ({self.tokenizer.path}): raise model.vocab_size")

        # the mode: its datasets, how a batch becomes a loss, its validation figures
        self.objective = build_objective(cfg, self.tokenizer, self.device)
        self.train_data, self.val_sets = self.objective.datasets()
        self.eval_tasks = load_tasks(list(cfg.train.eval_tasks))  # scored at eval steps beside the val sets
        self.sampler = BatchSampler(len(self.train_data), cfg.train.batch_size, cfg.train.seed,
                                    rank=self.env.rank, world_size=self.env.world_size)
        self.lr_anchor: Anchor = None  # set when a resumed run's total_steps differs from its checkpoint's

        self.model = Transformer(cfg.model).to(self.device)
        # the base model's (LoRA's adapters, added below, are not counted): the budget's and the summary's
        self.flops_per_token = self.model.flops_per_token(cfg.data.seq_len)
        self.total_steps = self.plan_steps()
        if cfg.mode.init_from and interop.is_transformers_dir(cfg.mode.init_from):
            interop.load_transformers_weights(self.model, cfg.mode.init_from)  # config.json + safetensors
            log.info("initialised the weights from the transformers model %s", cfg.mode.init_from)
        elif cfg.mode.init_from:
            found = ckpt.resolve_checkpoint(cfg.mode.init_from)
            ckpt.load_model_weights(self.model, found)  # weights only: optimizer and step start afresh
            log.info("initialised the weights from %s", found)
        if cfg.lora.rank > 0:  # after loading the base weights, before the optimizer sees the parameters
            wrapped = apply_lora(self.model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
            log.info("LoRA rank %d on %d layers (%s)", cfg.lora.rank, len(wrapped), ", ".join(cfg.lora.targets))
        # from the starting weights, before a resume replaces them (DPO's reference is the start)
        self.objective.prepare(self.model, self.device, self.autocast)
        # DDP all-reduces gradients; experts idle on a rank still hold (zero) gradients, so no
        # find_unused_parameters is needed. FSDP2 shards each block and the rest in place.
        self.ddp = self.model
        self.sharded = self.env.enabled and cfg.distributed.strategy == "fsdp"
        if self.sharded:
            for layer in self.model.layers:
                fully_shard(layer)
            fully_shard(self.model)
        elif self.env.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.forward = torch.compile(self.ddp) if cfg.hardware.compile else self.ddp
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        # tokens trained on (every token when pretraining; assistant tokens in SFT; both sides' in DPO)
        self.tokens_seen = 0
        self.source_tokens_seen: dict[str, int] = {}  # of each data.mixture source
        # training wall time of earlier invocations (up to the checkpoint resumed from) and of this one
        self.wall_seconds_before = 0.0
        self.fit_start: Optional[float] = None
        self.wandb_id: Optional[str] = None
        self.checkpoint_root = self.run_dir / "checkpoints"
        self.metrics = MetricsFile(self.run_dir / "metrics.jsonl")

    def plan_steps(self) -> int:
        """The run's optimizer steps: from train.token_budget / flops_budget when set (compute-matched
        sweeps), else train.max_steps, else train.epochs passes over the training data."""
        cfg = self.cfg
        steps_per_epoch = max(1, self.sampler.batches_per_epoch // cfg.train.grad_accum)
        budget = plan_budget(cfg.train, tokens_per_step=cfg.train.batch_size * cfg.train.grad_accum *
                             self.env.world_size * cfg.data.seq_len,
                             flops_per_token=self.flops_per_token)
        if budget is not None:
            total_steps, source = budget.steps, "the budget"
            log.info("%s", budget.describe(self.model.num_params(), self.model.num_params(exclude_embeddings=True),
                                           cfg.train.max_steps))
        elif cfg.train.max_steps > 0:
            total_steps, source = cfg.train.max_steps, f"train.max_steps={cfg.train.max_steps}"
        else:
            total_steps = math.ceil(cfg.train.epochs * steps_per_epoch)
            source = f"train.epochs={cfg.train.epochs} x {steps_per_epoch} steps per epoch"
        if cfg.train.warmup_steps >= total_steps:
            log.warning("train.warmup_steps=%d >= the run's %d steps (%s): the learning rate only warms up and "
                        "the run ends at %.2e, never decaying (peak lr %.2e): lower train.warmup_steps "
                        "below %d or train longer", cfg.train.warmup_steps, total_steps, source,
                        lr_at(total_steps - 1, peak_lr(cfg), cfg.train.warmup_steps, total_steps,
                              cfg.train.min_lr_ratio), peak_lr(cfg), total_steps)
        return total_steps

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # --- one optimizer step -------------------------------------------------------------------
    def forward_backward(self, batch: Batch, weight: float) -> Computed:
        """Backward of this micro-batch's share (`weight`) of the step's loss."""
        with self.autocast():
            computed = self.objective.compute(self.forward, batch)
        # an MoE model's balance loss trains the routers; it is logged apart from the objective's loss
        aux = computed.output.aux_loss
        loss = computed.loss if aux is None else computed.loss + aux
        self.scaler.scale(loss * weight).backward()
        return computed

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over grad_accum micro-batches; returns device tensors (no host sync)."""
        train = self.cfg.train
        # the schedule at the run's peak lr (train.lr, or optim=muon's matrix_lr): what the logs show
        peak = peak_lr(self.cfg)
        lr = lr_at(self.step, peak, train.warmup_steps, self.total_steps, train.min_lr_ratio, self.lr_anchor)
        set_lr(self.optimizer, lr, peak)  # each param group at its own peak lr
        batches = self.objective.step_batches(self.draw, self.step)
        # every unit of the step (a target token, a pair), on every rank, weighs the same, however the
        # micro-batches' counts differ (SFT); DDP averages gradients over ranks, hence the world_size factor
        counts = [self.objective.counts(batch) for batch in batches]
        total_units = sum(units for units, _ in counts) * self.env.world_size  # packed data: the same on every rank
        tokens = sum(n for _, n in counts) * self.env.world_size
        if self.env.enabled and not self.train_data.fixed_targets:
            local = torch.tensor([sum(units for units, _ in counts), sum(n for _, n in counts)], device=self.device)
            total_units, tokens = (int(x) for x in distributed.all_reduce_sum(local).tolist())
        sums: dict[str, torch.Tensor] = {}
        for i, (batch, (units, _)) in enumerate(zip(batches, counts)):
            if self.device.type == "cuda":  # pinned host memory makes the copy asynchronous
                batch = tuple(t.pin_memory() for t in batch)
            batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
            # gradients are all-reduced once per step, on the last micro-batch
            last_micro = i == len(batches) - 1
            if self.sharded:
                self.model.set_requires_gradient_sync(last_micro)
                sync = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last_micro or not self.env.enabled else self.ddp.no_sync()
            share = units / max(total_units, 1)
            with sync:
                computed = self.forward_backward(batch, share * self.env.world_size)
            for name, value in {"loss": computed.loss, **computed.metrics}.items():
                sums[name] = sums.get(name, 0) + value.detach().float() * share
            for name in MOE_FIGURES:
                value = getattr(computed.output, name)
                if value is not None:
                    sums[name] = sums.get(name, 0) + value.detach().float() / train.grad_accum
        self.scaler.unscale_(self.optimizer)
        max_norm = train.grad_clip if train.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if "dropped_tokens" in sums:
            sums["dropped_tokens"] = sums["dropped_tokens"] * train.grad_accum  # a count: summed, not averaged
        return {**sums, "grad_norm": grad_norm, "lr": lr, "tokens": tokens}

    def draw(self) -> list[Batch]:
        """The sampler's next grad_accum batches of the training set (what objective.step_batches draws)."""
        indices = [self.sampler.next_batch() for _ in range(self.cfg.train.grad_accum)]
        batches = [self.train_data.batch(i) for i in indices]
        self.count_source_tokens(indices, batches)
        return batches

    def count_source_tokens(self, indices: list[Any], batches: list[Batch]) -> None:
        """A mixture's tokens seen per source (all ranks'), for the metrics rows and the summary."""
        source_tokens = getattr(self.train_data, "source_tokens", None)
        if source_tokens is None:
            return
        step: dict[str, int] = {}
        for batch_indices, batch in zip(indices, batches):
            for name, n in source_tokens(batch_indices, batch[1]).items():
                step[name] = step.get(name, 0) + n
        if self.env.enabled:
            summed = distributed.all_reduce_sum(torch.tensor(list(step.values()), device=self.device)).tolist()
            step = dict(zip(step, (int(n) for n in summed)))
        for name, n in step.items():
            self.source_tokens_seen[name] = self.source_tokens_seen.get(name, 0) + n

    def evaluate(self) -> dict[str, float]:
        """The objective's validation figures on each validation set, over its first train.eval_batches
        batches: `val_*` for data.val_path's, `<name>/val_*` for a named one (a mixture's source)."""
        values: dict[str, float] = {}
        for name, dataset in self.val_sets.items():
            figures = self.objective.evaluate(self.model, dataset, self.device, self.env.rank, self.env.world_size,
                                              self.autocast)
            values.update(figures if name == "val" else {f"{name}/{key}": v for key, v in figures.items()})
        if self.eval_tasks:  # every rank scores them (a sharded model's forward needs them all): same figures
            from zer02llm.evals.runner import task_scores

            chat = self.cfg.mode.name in CHAT_MODES
            with self.autocast():
                values.update(task_scores(self.model, self.tokenizer, self.eval_tasks, chat,
                                          self.cfg.train.eval_tasks_limit))
        return values

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.sharded:  # gathered whole and keyed by parameter name: loadable at any world size
            optimizer = get_optimizer_state_dict(self.model, self.torch_optimizers(), options=FULL_STATE)
        else:
            optimizer = self.optimizer.state_dict()
        return {"step": self.step, "optimizer": optimizer, "optimizer_by_name": self.sharded,
                "optim": self.cfg.optim.name, "scaler": self.scaler.state_dict(),
                "sampler": self.sampler.state_dict(), "rng": rng, "wandb_id": self.wandb_id,
                "tokens_seen": self.tokens_seen, "source_tokens_seen": self.source_tokens_seen,
                "total_steps": self.total_steps, "lr_anchor": self.lr_anchor, "batch": self.batch_layout(),
                "wall_seconds": self.wall_seconds(), "objective": self.objective.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        saved_optim = state.get("optim", "adamw")  # checkpoints from before optim=muon: AdamW
        if saved_optim != self.cfg.optim.name:
            raise ConfigError(f"the checkpoint was trained with optim={saved_optim}, this run has optim="
                              f"{self.cfg.optim.name}: resume with optim={saved_optim}, or start a new run from "
                              f"its weights (a fresh optimizer) with optim={self.cfg.optim.name} "
                              f"mode.init_from=<the checkpoint>")
        with config_base_lrs(self.optimizer):
            if state.get("optimizer_by_name"):  # written by a sharded run
                set_optimizer_state_dict(self.model, self.torch_optimizers(), state["optimizer"], options=FULL_STATE)
            elif self.sharded:
                raise ConfigError("this checkpoint was written without distributed.strategy=fsdp: resume it "
                                  "with distributed.strategy=ddp (any world size with the same global batch)")
            else:
                self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.check_batch_layout(state.get("batch"), self.batch_layout())  # before the sampler's vaguer check
        self.sampler.load_state_dict(state["sampler"])
        self.objective.load_state_dict(state.get("objective", {}))
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.wandb_id = state.get("wandb_id")
        self.tokens_seen = state.get("tokens_seen", 0)
        self.source_tokens_seen = dict(state.get("source_tokens_seen", {}))
        self.wall_seconds_before = state.get("wall_seconds", 0.0)
        train = self.cfg.train
        self.lr_anchor = continued_anchor(self.step, self.total_steps, state.get("total_steps", self.total_steps),
                                          state.get("lr_anchor"), peak_lr(self.cfg), train.warmup_steps,
                                          train.min_lr_ratio)

    def torch_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        """What torch.distributed.checkpoint's state-dict functions take: the optimizer, or optim=muon's parts."""
        if isinstance(self.optimizer, CombinedOptimizer):
            return list(self.optimizer.optimizers.values())
        return self.optimizer

    def batch_layout(self) -> dict[str, int]:
        """What one optimizer step takes: batch_size x world_size x grad_accum sequences."""
        return {"batch_size": self.cfg.train.batch_size, "world_size": self.env.world_size,
                "grad_accum": self.cfg.train.grad_accum}

    def wall_seconds(self) -> float:
        """Training wall time of the whole run: earlier invocations (to the checkpoint resumed from) and this one."""
        this_session = time.perf_counter() - self.fit_start if self.fit_start is not None else 0.0
        return self.wall_seconds_before + this_session

    def save(self) -> Optional[Path]:
        weights = None
        if self.sharded:  # every rank takes part in gathering the shards
            weights = get_model_state_dict(self.model, options=FULL_STATE)
            if self.cfg.model.tie_embeddings:  # stored once, under the name safetensors' save_model keeps
                weights.pop("tok_embeddings.weight", None)
        state = self.state_dict()
        if not self.env.is_main:
            return None
        config = {"model": dataclasses.asdict(self.cfg.model), "mode": self.cfg.mode.name,
                  "lora": dataclasses.asdict(self.cfg.lora), "config": self.resolved_config}

        def write_adapter(directory: Path) -> None:  # the adapters alone too: a small file to ship or merge later
            save_adapter(self.model, directory / "adapter", {"step": self.step, "mode": self.cfg.mode.name,
                                                             "seq_len": self.cfg.data.seq_len,
                                                             "model": dataclasses.asdict(self.cfg.model)})

        # the adapter goes inside the checkpoint before it is renamed into place: never one without it
        path = ckpt.save_checkpoint(self.checkpoint_root, self.step, self.model, state, config,
                                    self.tokenizer.path, self.cfg.train.keep_checkpoints, weights,
                                    write_adapter if self.cfg.lora.rank > 0 else None)
        log.info("saved checkpoint %s", path)
        return path

    def resume(self, where: str) -> None:
        """Continue from the checkpoint `where` names ("auto": this run's newest intact one, if any).

        Every file is read and checked before the model takes anything from it; the run directory
        itself changes only afterwards, in claim_run_dir()."""
        if where == "auto":
            found = ckpt.latest_resumable(self.checkpoint_root, self.cfg.model, self.device)
            if found is None:
                log.info("train.resume=auto: no checkpoint in %s yet, starting fresh", self.checkpoint_root)
                return
        else:
            found = ckpt.read_for_resume(ckpt.resolve_checkpoint(where), self.cfg.model, self.device)
        weights = found.weights
        if self.cfg.model.tie_embeddings:  # stored once; the model holds one tensor under two names
            shared = weights.get("lm_head.weight", weights.get("tok_embeddings.weight"))
            weights.update({"lm_head.weight": shared, "tok_embeddings.weight": shared})
        if self.sharded:
            set_model_state_dict(self.model, weights, options=StateDictOptions(full_state_dict=True))
        else:
            ckpt.check_fit(found.path / "model.safetensors", *self.model.load_state_dict(weights, strict=False))
        self.load_state_dict(found.trainer_state)
        log.info("resumed from %s at step %d", found.path, self.step)

    def claim_run_dir(self) -> None:
        """Move an old run aside (train.overwrite=true), write config.yaml and cut metrics.jsonl back to
        this start's step (0 when fresh: a killed first attempt's rows go). Called once the checkpoint
        is accepted or a fresh start decided, so a refused resume leaves the run directory as it was."""
        if not self.env.is_main:
            return
        if self.cfg.train.overwrite:
            aside = rundir.move_aside(self.run_dir)
            if aside is not None:
                log.info("train.overwrite=true: moved the run that was in %s to %s", self.run_dir, aside)
        if self.on_claim is not None:
            self.on_claim()
        write_run_config(self.run_dir / "config.yaml", self.resolved_config)
        self.metrics.truncate_after(self.step)

    # --- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg = self.cfg
        resume = rundir.effective_resume(cfg.train.resume)  # a requeued SLURM job: "auto"
        if resume:
            self.resume(resume)
            if self.step >= self.total_steps:  # nothing to do: the finished run's summary.json stays as it is
                where = "the run's" if self.step == self.total_steps else "past the run's"
                log.warning("train.resume=%s: the run is already complete (checkpoint at step %d, %s %d steps): "
                            "nothing to train, summary.json left as it is. To train longer, raise train.max_steps, "
                            "e.g. train.max_steps=%d (the lr then decays on from the checkpoint's, without a jump)",
                            resume, self.step, where, self.total_steps, 2 * self.step)
                return {}
        self.claim_run_dir()
        if self.objective.fine_tunes and not cfg.mode.init_from and self.step == 0:
            log.warning("mode=%s without mode.init_from: fine-tuning RANDOMLY INITIALISED weights, not a "
                        "pretrained model. Give mode.init_from=<a pretraining run directory or checkpoint> "
                        "(e.g. mode.init_from=outputs/pretrain); ignore this only if SFT from scratch is meant",
                        cfg.mode.name)
        n_params, n_active = self.model.num_params(), self.model.num_params(active=True)
        active = f", {n_active / 1e6:.2f}M active per token" if n_active != n_params else ""
        n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if n_trainable != n_params:
            active += f", {n_trainable / 1e6:.3f}M trainable"
        log.info("model %s: %.2fM parameters (%.2fM without embeddings%s), device %s, dtype %s", cfg.model.name,
                 n_params / 1e6, self.model.num_params(exclude_embeddings=True) / 1e6, active, self.device,
                 str(self.dtype).replace("torch.", ""))
        log.info("data (%s): %d training %ss of up to %d tokens; %d steps of %s", cfg.mode.name,
                 len(self.train_data), self.objective.sample_name, cfg.data.seq_len, self.total_steps,
                 describe_step(cfg.train.batch_size, self.env.world_size, cfg.train.grad_accum,
                               self.objective.sample_name))
        tracker = None
        if cfg.logger == "wandb" and self.env.is_main:
            tracker = WandbLogger(cfg.wandb.project, cfg.wandb.entity, cfg.wandb.name, list(cfg.wandb.tags),
                                  self.resolved_config, self.run_dir, resume_id=self.wandb_id)
            self.wandb_id = tracker.run_id
        self.model.train()
        start_step = self.step
        cadence = ckpt.Cadence(self.save, cfg.train.save_interval, self.total_steps, self.step)
        self.fit_start = time.perf_counter()
        steps = StepLogger(self.total_steps, self.step, cfg.train.log_interval,
                           self.metrics if self.env.is_main else None, tracker, cfg.hardware.compile,
                           show_bar=sys.stderr.isatty() and self.env.is_main, shown=self.objective.metric_names)
        stop = StopSignals()
        with logging_redirect_tqdm():
            try:
                if self.step == 0 and self.objective.validates_at_start and self.val_sets:
                    values = self.evaluate()
                    steps.eval_done(0, values)
                    steps.write({"step": 0, **values})
                while self.step < self.total_steps:
                    if self.stop_requested(stop):
                        cadence.save_new(self.step)
                        distributed.barrier()  # no rank leaves before the checkpoint is on disk
                        stop.forward()  # submitit requeues the job; without it the signal ends the run
                        return steps.last
                    stats = self.train_step()
                    self.tokens_seen += stats["tokens"]
                    steps.step_done(self.step, stats["tokens"])
                    row: dict[str, Any] = {}
                    if steps.is_log_step(self.step):
                        stats = self.reduce_stats(stats)
                        loss = stats["loss"].item()
                        if not math.isfinite(loss):
                            raise FloatingPointError(f"loss is {loss} at step {self.step}: lower "
                                                     f"train.lr or use hardware.dtype=bfloat16/float32")
                        extra = {name: stats[name].item() for name in self.objective.metric_names}
                        extra.update({f"{name}/tokens": n for name, n in self.source_tokens_seen.items()})
                        row = steps.train_row(self.step, loss, stats["lr"], stats["grad_norm"].item(),
                                              self.tokens_seen, {**extra, **moe_metrics(stats)})
                    if (self.val_sets or self.eval_tasks) and (self.step % cfg.train.eval_interval == 0
                                                               or self.step == self.total_steps):
                        values = self.evaluate()
                        steps.eval_done(self.step, values)
                        row = {"step": self.step, **row, **values}
                    if row:
                        steps.write(row)
                    cadence.after_step(self.step)
            finally:
                stop.restore()
                steps.close()
                cadence.warn_unsaved(self.step)
        if not self.env.is_main:
            return steps.last
        rows = self.metrics.rows()
        plot = plot_losses(rows, self.run_dir / "loss.png")
        if plot:
            log.info("loss curves: %s", plot)
        flops_per_token = self.flops_per_token
        figures = {"model": cfg.model.name, "mode": cfg.mode.name, "steps": self.step,
                   "params": self.model.num_params(), "active_params": self.model.num_params(active=True),
                   "non_embedding_params": self.model.num_params(exclude_embeddings=True),
                   "steps_this_session": self.step - start_step, "tokens": self.tokens_seen,
                   "flops_per_token": flops_per_token, "flops": flops_per_token * self.tokens_seen,
                   **({"source_tokens": self.source_tokens_seen} if self.source_tokens_seen else {}),
                   **{key: value for key, value in steps.last.items() if key.startswith("task/")},
                   # what a sweep ranks this run by (train.sweep_metric: one of the figures here)
                   "sweep_metric": cfg.train.sweep_metric,
                   "sweep_direction": metric_direction(cfg.train.sweep_metric, cfg.train.sweep_direction)}
        write_summary(self.run_dir / "summary.json", rows, figures, self.wall_seconds(), self.wall_seconds_before)
        self.write_report()
        return steps.last

    def write_report(self) -> None:
        """report.md, the run's report card (zer02llm/evals/report.py); a failure is a warning, never the run's."""
        from zer02llm.evals.report import write_report

        try:
            path = write_report(self.run_dir, None if self.sharded else self.model, self.tokenizer, self.device,
                                self.dtype, self.env.world_size)
            log.info("report card: %s", path)
        except Exception as e:  # noqa: BLE001 - the model is trained and saved; the card is a convenience
            log.warning("could not write the report card %s (%s: %s)", self.run_dir / "report.md",
                        type(e).__name__, e)

    def stop_requested(self, stop: StopSignals) -> bool:
        """Whether any rank got a stop signal; all ranks agree, so they stop at the same step."""
        flag = torch.tensor([1 if stop.received is not None else 0], device=self.device)
        return bool(distributed.all_reduce_sum(flag).item()) if self.env.enabled else stop.received is not None

    def reduce_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The step's figures over all ranks: the objective's summed (each rank holds its share), MoE's averaged."""
        if not self.env.enabled:
            return stats
        reduced = dict(stats)
        summed = ("loss", *self.objective.metric_names, "dropped_tokens")  # each rank holds its share
        for name in ("loss", *self.objective.metric_names, *MOE_FIGURES):
            if name in stats:
                value = distributed.all_reduce_sum(stats[name].clone())
                keep_sum = name in summed
                reduced[name] = value if keep_sum else value / self.env.world_size
        return reduced
