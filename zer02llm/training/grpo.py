"""Reinforcement learning with verifiable rewards (mode=grpo): rollouts scored by a program, GRPO's loss.

Every mode.updates_per_rollout steps the objective draws the step's prompts (train.grad_accum
micro-batches of train.batch_size prompts on each rank), samples mode.group_size completions of each from
the current weights through the inference engine (rollout.py), scores them (rewards.py, the `reward`
group) and turns each micro-batch into a training batch: prompt + completion, the completion's tokens as
targets, each completion's advantage within its group, and, when needed, the log-probs of the weights
that sampled (updates_per_rollout > 1) and of the starting weights (beta > 0). The steps then train on
those batches through the loss of grpo_loss.py; the Trainer's step, accumulation and DDP are the same as
any mode's. Every log-prob (policy, sampler, reference) and the entropy are those of the logits divided
by mode.temperature: the distribution the completions were drawn from (as TRL does).

The reference for the KL term is a frozen copy of the starting weights, held only when beta > 0, and
its log-probs are computed once per rollout batch. Sampling needs no RNG state: each completion of a
rollout draws from its own generator, seeded by (train.seed, rollout number, prompt index) plus its place
in the group, so a resumed run samples what the uninterrupted one did, and a checkpoint taken between the
updates of one rollout batch holds that batch.

Figures: the rollout's (all ranks') reward mean, reward_std (the mean of each group's std: how much a
group tells apart), accuracy (answer terms all right), response_length (tokens, eos included),
reward_errors, rollout_seconds (making the rollout batch: sampling, scoring, the log-probs; a rank's
mean) and rollout_tokens_per_s (completion tokens sampled per second of that, per rank); per token, clip_fraction, entropy and kl (beta > 0). Validation on held-out prompts:
val_reward and val_accuracy of greedy completions (pass@1), val_pass@1 and val_pass@k of
mode.eval_samples sampled ones (the share of prompts with one right of k), val_sampled_reward (their
mean reward: the held-out value of what GRPO maximises, steadier than greedy's), val_response_length, and
val_loss = -val_reward, what a sweep minimises.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Callable, Optional, Sequence

import torch

from zer02llm.config import Config
from zer02llm.data.grpo import PromptDataset, prompt_dataset
from zer02llm.data.sources import expand
from zer02llm.model import IGNORE_INDEX, Output
from zer02llm.tokenizer import Tokenizer
from zer02llm.training import distributed
from zer02llm.training.grpo_loss import entropy, group_advantages, reduce_losses, token_logps, token_losses, units
from zer02llm.training.objective import Autocast, Batch, Computed, Dataset, Objective
from zer02llm.training.rewards import Rewards
from zer02llm.training.rollout import Rollouts, prompt_seed

log = logging.getLogger(__name__)
ROLLOUT_FIGURES = ("reward", "reward_std", "accuracy", "response_length", "reward_errors", "rollout_seconds",
                   "rollout_tokens_per_s")
TOKEN_FIGURES = ("clip_fraction", "entropy")


class GRPO(Objective):
    """Prompts with answers (zer02llm.data.grpo), rollouts, rewards and the clipped policy-gradient loss."""

    fine_tunes = True
    sample_name = "prompt"
    validates_at_start = True

    def __init__(self, cfg: Config, tokenizer: Tokenizer, device: torch.device):
        super().__init__(cfg, tokenizer)
        self.mode = cfg.mode
        self.rewards = Rewards(cfg.reward)
        self.metric_names = ROLLOUT_FIGURES + TOKEN_FIGURES + (("kl",) if self.mode.beta > 0 else ())
        self.train_set: Optional[PromptDataset] = None
        self.model: Optional[torch.nn.Module] = None
        self.reference: Optional[torch.nn.Module] = None
        self.device, self.autocast = device, None
        self.sampler: Optional[Rollouts] = None  # the engine that rolls out, kept across rollouts
        self.rollouts: list[Batch] = []  # the current rollout batch: one training batch per micro-batch
        self.figures: dict[str, float] = {}  # its rollout figures, all ranks'

    # --- data ------------------------------------------------------------------------------
    def datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        train, vals = super().datasets()
        self.train_set = train
        return train, vals

    def dataset(self, paths: Any, key: str) -> PromptDataset:
        return prompt_dataset(expand(paths, key), self.tokenizer, self.cfg.data.seq_len - self.mode.max_new_tokens,
                              self.cfg.data.strict)

    def prepare(self, model: torch.nn.Module, device: torch.device, autocast: Autocast) -> None:
        """Keep the model to roll out with; with beta > 0 a frozen copy of the starting weights."""
        self.model, self.device, self.autocast = model, device, autocast
        if self.mode.beta > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    # --- rollouts --------------------------------------------------------------------------
    def step_batches(self, draw: Callable[[], list[Batch]], step: int) -> list[Batch]:
        """A new rollout batch every updates_per_rollout steps (and whenever none is held); else the held one."""
        if step % self.mode.updates_per_rollout == 0 or not self.rollouts:
            indices = [batch[0].tolist() for batch in draw()]
            self.rollouts, self.figures = self.make_rollouts(indices, step // self.mode.updates_per_rollout)
        return self.rollouts

    def complete(self, model: torch.nn.Module, dataset: PromptDataset, indices: Sequence[int], group_size: int,
                 temperature: float, seed_parts: tuple, autocast: Autocast) -> tuple[list[list[int]], torch.Tensor,
                                                                                     torch.Tensor, int]:
        """Completions of each prompt (prompt-major), their rewards and correctness (P, G), reward errors."""
        if self.sampler is None or self.sampler.model is not model:
            self.sampler = Rollouts(model, autocast)
        completions = self.sampler.sample([dataset.ids[i] for i in indices], group_size, self.mode.max_new_tokens,
                                          temperature, self.tokenizer.eos_id,
                                          [prompt_seed(*seed_parts, i) for i in indices])
        rewards = torch.zeros(len(indices) * group_size, dtype=torch.float64)
        correct = torch.zeros(len(indices) * group_size, dtype=torch.bool)
        errors = 0
        for n, tokens in enumerate(completions):
            prompt = dataset.prompts[indices[n // group_size]]
            text = self.tokenizer.decode([t for t in tokens if t != self.tokenizer.eos_id])
            scored = self.rewards.score(text, prompt.answer, prompt.text)
            rewards[n], correct[n], errors = scored.reward, scored.correct, errors + scored.errors
        return completions, rewards.view(-1, group_size), correct.view(-1, group_size), errors

    @torch.no_grad()
    def make_rollouts(self, micro_batches: list[list[int]], number: int) -> tuple[list[Batch], dict[str, float]]:
        """Training batches of the prompts of each micro-batch, and the rollout's figures over all ranks."""
        if self.model is None or self.train_set is None:
            raise RuntimeError("GRPO.prepare() and datasets() must run before the first step")
        G = self.mode.group_size
        started = time.perf_counter()
        batches, sums = [], torch.zeros(6, dtype=torch.float64)  # reward, group stds, groups, correct, n, length
        errors = 0
        for indices in micro_batches:
            completions, rewards, correct, bad = self.complete(
                self.model, self.train_set, indices, G, self.mode.temperature, (self.cfg.train.seed, number),
                self.autocast)
            errors += bad
            advantages = group_advantages(rewards, self.mode.scale_rewards).view(-1)  # float64: a few numbers
            prompts = [self.train_set.ids[i] for i in indices for _ in range(G)]
            inputs, targets = training_rows(prompts, completions, self.tokenizer.pad_id)
            old = self.logps(self.model, inputs, targets) if self.mode.updates_per_rollout > 1 else torch.zeros(0)
            ref = self.logps(self.reference, inputs, targets) if self.reference is not None else torch.zeros(0)
            batches.append((inputs, targets, advantages, old, ref))
            sums += torch.tensor([rewards.sum().item(), rewards.std(dim=1).sum().item(), rewards.shape[0],
                                  correct.sum().item(), rewards.numel(), sum(len(c) for c in completions)],
                                 dtype=torch.float64)
        seconds = time.perf_counter() - started
        local = torch.tensor([float(errors), seconds], dtype=torch.float64)
        totals = distributed.all_reduce_sum(torch.cat([sums, local]).to(self.device)).cpu().tolist()
        reward, stds, groups, right, n, length, errors_all, seconds_all = totals
        world_size = distributed.read_env().world_size
        figures = {"reward": reward / n, "reward_std": stds / groups, "accuracy": right / n,
                   "response_length": length / n, "reward_errors": errors_all,
                   "rollout_seconds": seconds_all / world_size, "rollout_tokens_per_s": length / max(seconds_all, 1e-9)}
        return batches, figures

    def logps(self, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs of the targets under `model`, evaluated (no dropout) under autocast, on the CPU."""
        was_training = model.training
        model.eval()
        with self.autocast():
            logits = model(inputs.to(self.device)).logits
        model.train(was_training)
        return token_logps(logits / self.mode.temperature, targets.to(self.device)).cpu()

    # --- training ---------------------------------------------------------------------------
    def counts(self, batch: Batch) -> tuple[int, int]:
        mask = batch[1] != IGNORE_INDEX
        return units(mask, self.mode.loss_norm), int(mask.sum())

    def compute(self, forward: Callable[..., Output], batch: Batch) -> Computed:
        inputs, targets, advantages, old, ref = batch
        out = forward(inputs)
        # the distribution the rollouts were sampled from: the policy at mode.temperature
        logits = out.logits / self.mode.temperature if self.mode.temperature != 1.0 else out.logits
        logps = token_logps(logits, targets)
        mask = targets != IGNORE_INDEX
        # one update per rollout batch: the sampling weights are the current ones (ratio 1, no second forward)
        old = old if self.mode.updates_per_rollout > 1 else logps.detach()
        losses, figures = token_losses(logps, old, advantages, self.mode.clip_eps, self.mode.clip_eps_high,
                                       self.mode.beta, ref if self.mode.beta > 0 else None)
        loss = reduce_losses(losses, mask, self.mode.loss_norm, self.mode.max_new_tokens)
        n_tokens = mask.sum().clamp(min=1)
        with torch.no_grad():
            metrics = {"clip_fraction": (figures["clipped"] * mask).sum() / n_tokens,
                       "entropy": (entropy(logits.detach()) * mask).sum() / n_tokens}
            if "kl" in figures:
                metrics["kl"] = (figures["kl"] * mask).sum() / n_tokens
        # the rollout's figures are already over all ranks: every micro-batch carries them, and the trainer's
        # unit-weighted sum over micro-batches and ranks gives them back unchanged
        for name in ROLLOUT_FIGURES:
            metrics[name] = torch.tensor(self.figures.get(name, math.nan), device=loss.device)
        return Computed(loss, out, metrics)

    def state_dict(self) -> dict[str, Any]:
        """The rollout batch being trained on, when more updates may follow it (updates_per_rollout > 1)."""
        if self.mode.updates_per_rollout == 1:
            return {}
        return {"rollouts": self.rollouts, "figures": self.figures}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts = [tuple(t for t in batch) for batch in state.get("rollouts", [])]
        self.figures = dict(state.get("figures", {}))

    # --- validation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, dataset: PromptDataset, device: torch.device, rank: int,
                 world_size: int, autocast: Autocast) -> dict[str, float]:
        """Greedy (pass@1) and k-sample (pass@k) figures on the first train.eval_batches x train.batch_size
        prompts (-1: all), shared among ranks; the same sampling seeds at every evaluation."""
        count = len(dataset)
        if self.cfg.train.eval_batches > 0:
            count = min(count, self.cfg.train.eval_batches * self.cfg.train.batch_size)
        mine = list(range(rank, count, world_size))
        k = self.mode.eval_samples
        # greedy reward, greedy correct, length, k-correct, any of k correct, prompts, k-sample reward
        sums = torch.zeros(7, dtype=torch.float64)
        for start in range(0, len(mine), self.cfg.train.batch_size):
            indices = mine[start:start + self.cfg.train.batch_size]
            greedy, rewards, correct, _ = self.complete(model, dataset, indices, 1, 0.0, ("eval",), autocast)
            sums[0] += rewards.sum().item()
            sums[1] += correct.sum().item()
            sums[2] += sum(len(c) for c in greedy)
            sums[5] += len(indices)
            if k > 0:
                _, sampled_rewards, sampled, _ = self.complete(model, dataset, indices, k, self.mode.temperature,
                                                               (self.cfg.train.seed, "eval"), autocast)
                sums[3] += sampled.float().mean(dim=1).sum().item()
                sums[6] += sampled_rewards.mean(dim=1).sum().item()
                sums[4] += sampled.any(dim=1).sum().item()
        sums = distributed.all_reduce_sum(sums.to(device)).cpu()
        n = max(sums[5].item(), 1.0)
        values = {"val_loss": -sums[0].item() / n, "val_reward": sums[0].item() / n,
                  "val_accuracy": sums[1].item() / n, "val_response_length": sums[2].item() / n}
        if k > 0:
            values.update({"val_pass@1": sums[3].item() / n, f"val_pass@{k}": sums[4].item() / n,
                           "val_sampled_reward": sums[6].item() / n})
        return values


def training_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                  pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (inputs, targets) of prompt + completion rows: a row's targets are its completion's
    tokens (IGNORE_INDEX on the prompt and the padding); positions start at 0 as in generation."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width = max(lengths) - 1
    inputs = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    targets = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        sequence = torch.tensor([*prompt, *completion], dtype=torch.long)
        inputs[row, :len(sequence) - 1] = sequence[:-1]
        if completion:
            targets[row, len(prompt) - 1:len(sequence) - 1] = sequence[len(prompt):]
    return inputs, targets


__all__ = ["GRPO", "training_rows"]
