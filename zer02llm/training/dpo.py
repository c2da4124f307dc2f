"""Direct Preference Optimization (mode=dpo): preference pairs against a frozen reference.

For a pair with prompt x, chosen answer y_c and rejected answer y_r, with log pi(y|x) summed over the
answer's tokens (the final assistant turn: its content and end-of-turn token),

    h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))
    sigmoid (DPO, Rafailov et al. 2023):    -(1 - ls) * log sigmoid(beta * h) - ls * log sigmoid(-beta * h)
    ipo (Azar et al. 2023):                 (h - 1 / (2 * beta))^2

ls = mode.label_smoothing (conservative DPO: that share of labels is assumed flipped). The implicit
rewards are beta * (log pi - log ref) of each side; reward_accuracy is the share of pairs whose chosen
reward is strictly the larger.

The reference is the model the run starts from (mode.init_from, LoRA adapters at zero), and it never
changes, so its log-probabilities are computed once, before the first step, and stored beside the token
cache under a key of the data, data.seq_len, the starting weights (a hash of their bytes), the model
config and the compute dtype. No second model is held and no step runs a second forward; a resumed run
reads the same file (or, without it, recomputes it from the same starting weights: prepare() runs before
a resume loads newer weights). Under several ranks each computes its share of the batches and an
all-reduce gives every rank the whole table; rank 0 writes the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from zer02llm.training import distributed
from zer02llm.config import Config
from zer02llm.data.cache import default_cache_dir
from zer02llm.data.dpo import PairDataset, dpo_dataset
from zer02llm.data.sources import expand
from zer02llm.model import IGNORE_INDEX, Output
from zer02llm.training.objective import Autocast, Batch, Computed, Objective
from zer02llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)
REFERENCE_FORMAT = 1  # bump when what the reference file holds changes
METRICS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy")


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of each row's targets (IGNORE_INDEX excluded): (N, T, V), (N, T) -> (N,),
    in the logits' dtype (float32 at least: the model promotes them)."""
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return -losses.view(targets.shape).sum(dim=-1)


def dpo_losses(policy: torch.Tensor, reference: torch.Tensor, beta: float, label_smoothing: float = 0.0,
               loss: str = "sigmoid") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses (B,) and per-pair figures from summed log-probs laid out [chosen (B), rejected (B)]."""
    pairs = policy.shape[0] // 2
    chosen = policy[:pairs] - reference[:pairs]  # log pi/ref of each side
    rejected = policy[pairs:] - reference[pairs:]
    h = chosen - rejected
    if loss == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        raise ValueError(f"mode.loss={loss!r}: must be sigmoid or ipo")
    rewards_chosen, rewards_rejected = beta * chosen.detach(), beta * rejected.detach()
    return losses, {"rewards_chosen": rewards_chosen, "rewards_rejected": rewards_rejected,
                    "reward_margin": rewards_chosen - rewards_rejected,
                    "reward_accuracy": (rewards_chosen > rewards_rejected).float()}


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's tensors (names, dtypes, shapes, bytes). LoRA adapters are left out while their
    B matrices are zero: the model then computes exactly the base, whatever rank and A they have."""
    state = model.state_dict()
    adapters_off = all(not v.any() for k, v in state.items() if k.endswith("lora_b"))
    digest = hashlib.sha256()
    for name in sorted(state):
        if adapters_off and (name.endswith("lora_a") or name.endswith("lora_b")):
            continue
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def autocast_dtype(autocast: Autocast) -> torch.dtype:
    """The dtype the trainer computes in (its autocast context's, float32 without one)."""
    return getattr(autocast(), "fast_dtype", torch.float32)


class DPO(Objective):
    """Preference pairs (zer02llm.data.dpo), the DPO/IPO loss against the precomputed reference."""

    metric_names = METRICS
    fine_tunes = True
    sample_name = "pair"

    def __init__(self, cfg: Config, tokenizer: Tokenizer, device: torch.device):
        super().__init__(cfg, tokenizer)
        self.beta, self.label_smoothing, self.loss = cfg.mode.beta, cfg.mode.label_smoothing, cfg.mode.loss
        self.sets: list[PairDataset] = []  # every dataset built, to be given its reference in prepare()

    def dataset(self, paths: object, key: str) -> PairDataset:
        data = self.cfg.data
        # ranks missing the cache together: one builds each entry, the others wait for it (cache.entry_lock)
        built = dpo_dataset(expand(paths, key), self.tokenizer, data.seq_len, data.cache_dir, data.strict)
        self.sets.append(built)
        return built

    # --- the reference ---------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, device: torch.device, autocast: Autocast) -> None:
        """The reference's summed log-probs of every pair of every dataset, from the starting weights."""
        if not self.sets:
            return
        env = distributed.read_env()
        rank, world_size = env.rank, env.world_size
        fingerprint = weights_fingerprint(model) if rank == 0 else ""
        for dataset in self.sets:
            dataset.reference = self.reference(model, dataset, device, autocast, fingerprint, rank, world_size)

    def reference_path(self, dataset: PairDataset, model: torch.nn.Module, fingerprint: str,
                       dtype: torch.dtype) -> Path:
        identity = {"format": REFERENCE_FORMAT, "data": [f.key for f in dataset.token_files],
                    "seq_len": dataset.seq_len, "weights": fingerprint, "dtype": str(dtype),
                    "model": dataclasses.asdict(model.cfg)}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        cache_dir = Path(self.cfg.data.cache_dir) if self.cfg.data.cache_dir else default_cache_dir()
        return cache_dir / f"{dataset.token_files[0].key}-reference-{key}.npy"

    def reference(self, model: torch.nn.Module, dataset: PairDataset, device: torch.device, autocast: Autocast,
                  fingerprint: str, rank: int, world_size: int) -> np.ndarray:
        """(len(dataset), 2) float32: the cached table (rank 0 reads it), or one computed by all ranks."""
        path = self.reference_path(dataset, model, fingerprint, autocast_dtype(autocast)) if rank == 0 else None
        table = torch.zeros(len(dataset), 2, dtype=torch.float32, device=device)
        cached = rank == 0 and path.exists() and self._load(path, table, len(dataset))
        if distributed.broadcast_object(cached):
            log.info("DPO reference log-probs of %d pairs from %s", len(dataset), path)
        else:
            self._compute(model, dataset, table, device, autocast, rank, world_size)
        table = distributed.all_reduce_sum(table)  # each row is filled on one rank only: a copy, bit for bit
        values = table.cpu().numpy()
        if rank == 0 and not cached:
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                np.save(f, values)
            os.replace(tmp, path)
            log.info("DPO reference log-probs written to %s", path)
        return values

    @staticmethod
    def _load(path: Path, table: torch.Tensor, pairs: int) -> bool:
        try:
            values = np.load(path)  # allow_pickle=False: a file holding objects is refused, not run
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
            log.warning("DPO reference %s unreadable (%s): computing it again", path, e)
            return False
        if values.shape != (pairs, 2):
            log.warning("DPO reference %s holds %s values, not those of %d pairs: computing it again", path,
                        values.shape, pairs)
            return False
        if not np.isfinite(values).all():
            log.warning("DPO reference %s holds %d non-finite value(s): computing it again", path,
                        int((~np.isfinite(values)).sum()))
            return False
        table.copy_(torch.from_numpy(values.astype(np.float32)))
        return True

    @torch.no_grad()
    def _compute(self, model: torch.nn.Module, dataset: PairDataset, table: torch.Tensor, device: torch.device,
                 autocast: Autocast, rank: int, world_size: int) -> None:
        """This rank's batches (b = rank, rank + world_size, ...) of the reference, in eval mode, under autocast."""
        batch_size = self.cfg.train.batch_size
        n_batches = math.ceil(len(dataset) / batch_size)
        mine = range(rank, n_batches, world_size)
        was_training = model.training
        model.eval()
        log.info("DPO reference: log-probs of %d pairs under the starting weights (%d batches%s)", len(dataset),
                 n_batches, f", {world_size} ranks" if world_size > 1 else "")
        started = last = time.perf_counter()
        bar = tqdm(total=len(mine), desc="DPO reference", unit="batch", disable=not (sys.stderr.isatty() and rank == 0))
        for done, b in enumerate(mine, start=1):
            indices = list(range(b * batch_size, min(len(dataset), (b + 1) * batch_size)))
            inputs, targets = (t.to(device) for t in dataset.batch(indices)[:2])
            with autocast():
                logits = model(inputs).logits
            logps = sequence_logps(logits, targets).float()
            table[indices[0]:indices[-1] + 1] = logps.view(2, -1).T
            bar.update(1)
            if bar.disable and rank == 0 and time.perf_counter() - last > 30:
                last = time.perf_counter()
                log.info("DPO reference: %d of %d batches", done, len(mine))
        bar.close()
        model.train(was_training)
        log.info("DPO reference computed in %.1f s", time.perf_counter() - started)

    # --- training and validation -------------------------------------------------------------
    def counts(self, batch: Batch) -> tuple[int, int]:
        """(pairs, tokens the forward pass processes): every prompt and answer token of both sides, padding
        not counted; the summary's tokens and FLOPs (6 N per token) count these, not the answers alone."""
        inputs = batch[0]
        return inputs.shape[0] // 2, int((inputs != self.tokenizer.pad_id).sum())

    def compute(self, forward: Callable[..., Output], batch: Batch) -> Computed:
        if len(batch) != 3:
            raise RuntimeError("DPO batch without reference log-probs: DPO.prepare() must run before training")
        inputs, targets, reference = batch
        out = forward(inputs)  # one forward over both sides: MoE's balance loss sees every token once
        losses, figures = dpo_losses(sequence_logps(out.logits, targets), reference, self.beta,
                                     self.label_smoothing, self.loss)
        return Computed(losses.mean(), out, {name: figures[name].mean() for name in METRICS})

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, dataset: PairDataset, device: torch.device, rank: int,
                 world_size: int, autocast: Autocast) -> dict[str, float]:
        """val_loss and val_<metric> over the first train.eval_batches batches (-1: all), shared among ranks
        as zer02llm.training.validation does (a rank past the end repeats batch 0 with weight 0)."""
        batch_size, max_batches = self.cfg.train.batch_size, self.cfg.train.eval_batches
        n_batches = math.ceil(len(dataset) / batch_size)
        if max_batches > 0:
            n_batches = min(n_batches, max_batches)
        was_training = model.training
        model.eval()
        sums = torch.zeros(2 + len(METRICS), dtype=torch.float64, device=device)  # loss, pairs, metrics
        for i in range(math.ceil(n_batches / world_size)):
            b = i * world_size + rank
            counted = b < n_batches
            b = b if counted else 0
            indices = list(range(b * batch_size, min(len(dataset), (b + 1) * batch_size)))
            inputs, targets, reference = (t.to(device) for t in dataset.batch(indices))
            with autocast():
                logits = model(inputs).logits
            losses, figures = dpo_losses(sequence_logps(logits, targets), reference, self.beta,
                                         self.label_smoothing, self.loss)
            if counted:
                sums += torch.stack([losses.sum(), torch.tensor(float(len(indices)), device=device),
                                     *(figures[name].sum() for name in METRICS)]).double()
        distributed.all_reduce_sum(sums)
        model.train(was_training)
        values = (sums / sums[1].clamp(min=1)).tolist()
        return {"val_loss": values[0], **{f"val_{name}": v for name, v in zip(METRICS, values[2:])}}


__all__ = ["DPO", "dpo_losses", "sequence_logps", "weights_fingerprint"]
