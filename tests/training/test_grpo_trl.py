"""Our GRPO loss against TRL's GRPOTrainer._compute_loss (test-only dependency; skipped without trl).

On the same prompts, completions, advantages, sampler and reference log-probs and weights, TRL's loss
(loss_type bnpo / grpo / dr_grpo: our loss_norm token / sequence / constant, which for one micro-batch is
also what dapo gives) and its gradient equal ours. TRL's trainer is not built (it wants its own model
classes and accelerate); its loss method runs on a stand-in carrying the attributes it reads, with the
per-token log-probs of our model computed row by row on the unpadded sequences.
"""

from __future__ import annotations

import collections
import types

import pytest
import torch

from zer02llm.model import IGNORE_INDEX

from test_grpo import length_reward, prepared, toy_config, toy_model  # noqa: F401 (fixtures below)

try:
    import trl
except ImportError:  # skipped test by test, not the module, so that `pytest -m gpu` reports only GPU tests
    trl = None
pytestmark = pytest.mark.skipif(trl is None, reason="trl is not installed (pip install trl): the comparison is optional")
LOSS_TYPES = {"token": "bnpo", "sequence": "grpo", "constant": "dr_grpo"}


@pytest.fixture(scope="module")
def tokenizer():
    from zer02llm.tokenizer import Tokenizer

    return Tokenizer.load()


def trl_stand_in(model, prompts, completions, beta, clip_eps, clip_high, loss_type, max_new_tokens, temperature):
    def per_token_logps(self, _model, input_ids, attention_mask, logits_to_keep, **_):
        rows, width = [], logits_to_keep
        for prompt, completion in zip(prompts, completions):
            ids = torch.tensor([prompt + completion])
            logp = torch.log_softmax(model(ids).logits[0].double() / temperature, -1)
            values = [logp[len(prompt) - 1 + t, token] for t, token in enumerate(completion)]
            rows.append(torch.stack(values + [torch.zeros((), dtype=torch.float64)] * (width - len(values))))
        logps = torch.stack(rows)
        return logps, torch.zeros_like(logps).detach(), None

    accelerator = types.SimpleNamespace(num_processes=1, sync_gradients=True, gather=lambda x: x,
                                        gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x)
    stand_in = types.SimpleNamespace(
        top_entropy_quantile=1.0, aux_loss_enabled=False, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=clip_eps,
        epsilon_high=clip_high, use_vllm=False, vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1, max_completion_length=max_new_tokens, _entropy_bonus_enabled=False,
        model=types.SimpleNamespace(training=True), accelerator=accelerator,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
    stand_in._get_per_token_logps_and_entropies = types.MethodType(per_token_logps, stand_in)
    return stand_in


@pytest.mark.parametrize("loss_norm", list(LOSS_TYPES))
def test_loss_and_gradient_equal_trls(tokenizer, tmp_path, loss_norm):
    cfg = toy_config(tmp_path, updates_per_rollout=2, beta=0.1, clip_eps_high=0.28, loss_norm=loss_norm,
                     temperature=0.9)
    model = toy_model()
    objective, train = prepared(cfg, tokenizer, model)
    (batch,) = objective.step_batches(lambda: [train.batch([0, 1, 2])], step=0)
    with torch.no_grad():  # the policy moves away from the sampler: ratios clip
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = objective.compute(model, batch).loss
    ours_grad = torch.autograd.grad(ours, list(model.parameters()))

    inputs, targets, advantages, old, ref = batch
    mask = targets != IGNORE_INDEX
    prompts, completions, olds, refs = [], [], [], []
    for r in range(inputs.shape[0]):
        start = int(mask[r].nonzero()[0]) if mask[r].any() else None
        completion = targets[r][mask[r]].tolist()
        prompt = inputs[r][:start + 1].tolist()
        prompts.append(prompt)
        completions.append(completion)
        olds.append(old[r][mask[r]])
        refs.append(ref[r][mask[r]])
    width = max(len(c) for c in completions)
    prompt_width = max(len(p) for p in prompts)

    def right_pad(rows, value, dtype):
        return torch.stack([torch.cat([torch.as_tensor(row, dtype=dtype),
                                       torch.full((width - len(row),), value, dtype=dtype)]) for row in rows])

    trl_inputs = {
        "prompt_ids": torch.stack([torch.tensor([0] * (prompt_width - len(p)) + p) for p in prompts]),
        "prompt_mask": torch.stack([torch.tensor([0] * (prompt_width - len(p)) + [1] * len(p)) for p in prompts]),
        "completion_ids": right_pad(completions, 0, torch.long),
        "completion_mask": right_pad([[1] * len(c) for c in completions], 0, torch.long),
        "advantages": advantages.double(),
        "old_per_token_logps": right_pad(olds, 0.0, torch.float64),
        "ref_per_token_logps": right_pad(refs, 0.0, torch.float64),
        "num_items_in_batch": torch.tensor(float(mask.sum())),
    }
    stand_in = trl_stand_in(model, prompts, completions, cfg.mode.beta, cfg.mode.clip_eps, cfg.mode.clip_eps_high,
                            LOSS_TYPES[loss_norm], cfg.mode.max_new_tokens, cfg.mode.temperature)
    theirs = trl.GRPOTrainer._compute_loss(stand_in, model, trl_inputs)
    theirs_grad = torch.autograd.grad(theirs, list(model.parameters()))
    assert abs(ours.item() - theirs.item()) < 1e-5
    assert ours.item() != 0
    for a, b in zip(ours_grad, theirs_grad):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert stand_in._metrics["train"]["clip_ratio/region_mean"][0] > 0  # the comparison covers clipping
