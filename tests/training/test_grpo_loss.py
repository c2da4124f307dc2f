"""GRPO's loss (zer02llm/training/grpo_loss.py) against hand-computed advantages and a naive per-sample,
per-token loop written from the formulas; gradients included."""

from __future__ import annotations

import math

import pytest
import torch

from zer02llm.model import IGNORE_INDEX
from zer02llm.training.grpo_loss import (ADVANTAGE_EPS, entropy, group_advantages, reduce_losses, token_logps,
                                         token_losses)


def test_advantages_of_hand_computed_groups():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    got = group_advantages(rewards, scale=True)
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3); group 3: mean 0.75, std sqrt((2.25^2 + 3 * 0.75^2) / 3)
    std1, std3 = math.sqrt(1 / 3), math.sqrt((2.25 ** 2 + 3 * 0.75 ** 2) / 3)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [2.25, -0.75, -0.75, -0.75]], dtype=torch.float64)
    expected[0] /= std1 + ADVANTAGE_EPS
    expected[2] /= std3 + ADVANTAGE_EPS
    torch.testing.assert_close(got, expected)
    # all-equal rewards: exactly zero, never NaN; Dr. GRPO: only centred
    assert torch.equal(got[1], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(group_advantages(rewards, scale=False),
                               torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [2.25, -0.75, -0.75, -0.75]],
                                            dtype=torch.float64))
    assert not group_advantages(torch.zeros(2, 8), scale=True).isnan().any()


def naive_loss(logits, targets, old, advantages, ref, clip_eps, clip_high, beta, loss_norm, max_new):
    """The loss from the formulas, one completion and one token at a time."""
    per_sequence, total, n_tokens = [], 0.0, 0
    for i in range(logits.shape[0]):
        seq_sum, seq_len = 0.0, 0
        for t in range(logits.shape[1]):
            if targets[i, t] == IGNORE_INDEX:
                continue
            logp = torch.log_softmax(logits[i, t], dim=-1)[targets[i, t]]
            ratio = torch.exp(logp - old[i, t])
            a = advantages[i]
            token = -torch.min(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_high) * a)
            if beta > 0:
                d = ref[i, t] - logp
                token = token + beta * (torch.exp(d) - d - 1)
            seq_sum, seq_len = seq_sum + token, seq_len + 1
        per_sequence.append(seq_sum / max(seq_len, 1))
        total, n_tokens = total + seq_sum, n_tokens + seq_len
    if loss_norm == "token":
        return total / n_tokens
    if loss_norm == "sequence":
        return sum(per_sequence) / len(per_sequence)
    return total / (logits.shape[0] * max_new)


@pytest.mark.parametrize("loss_norm", ["token", "sequence", "constant"])
@pytest.mark.parametrize("beta,clip_high", [(0.0, None), (0.04, 0.28)])
def test_loss_and_gradients_equal_a_naive_per_token_loop(loss_norm, beta, clip_high):
    torch.manual_seed(0)
    N, T, V = 5, 7, 11
    logits = torch.randn(N, T, V, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (N, T))
    lengths = [7, 3, 5, 1, 6]  # prompt tokens first, padding after: a completion is a run of targets
    starts = [0, 2, 1, 4, 1]
    for i in range(N):
        keep = torch.zeros(T, dtype=torch.bool)
        keep[starts[i]:starts[i] + lengths[i]] = True
        targets[i][~keep] = IGNORE_INDEX
    with torch.no_grad():  # old and reference log-probs near the current ones, far enough for some clipping
        current = token_logps(logits, targets)
        old = current + 0.4 * torch.randn(N, T, dtype=torch.float64)
        ref = current + 0.3 * torch.randn(N, T, dtype=torch.float64)
    advantages = torch.tensor([1.2, -0.7, 0.0, 2.0, -1.5], dtype=torch.float64)
    mask = targets != IGNORE_INDEX
    eps, high = 0.2, 0.2 if clip_high is None else clip_high

    losses, figures = token_losses(token_logps(logits, targets), old, advantages, eps, clip_high, beta,
                                   ref if beta > 0 else None)
    loss = reduce_losses(losses, mask, loss_norm, max_new_tokens=9)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = naive_loss(logits, targets, old, advantages, ref, eps, high, beta, loss_norm, 9)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert grad.abs().sum() > 0

    # clipped: where the clip removed the gradient, counted by hand
    ratio = torch.exp(current - old)
    by_hand = [((ratio[i, t] < 1 - eps and advantages[i] < 0) or (ratio[i, t] > 1 + high and advantages[i] > 0))
               for i in range(N) for t in range(T) if mask[i, t]]
    assert 0 < sum(by_hand) < len(by_hand)
    assert figures["clipped"][mask].tolist() == [float(x) for x in by_hand]
    if beta > 0:
        d = ref - current
        torch.testing.assert_close(figures["kl"][mask], (torch.exp(d) - d - 1)[mask])
        assert (figures["kl"][mask] >= 0).all()


def test_with_ratio_one_the_gradient_is_the_policy_gradient():
    """One update per rollout batch: old = current (detached), so d loss = -A * d log p per token / tokens."""
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (3, 4))
    targets[1, :2] = IGNORE_INDEX
    advantages = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    logps = token_logps(logits, targets)
    losses, figures = token_losses(logps, logps.detach(), advantages, 0.2)
    mask = targets != IGNORE_INDEX
    (grad,) = torch.autograd.grad(reduce_losses(losses, mask, "token", 4), logits, retain_graph=True)
    surrogate = -(advantages[:, None] * logps * mask).sum() / mask.sum()
    (expected,) = torch.autograd.grad(surrogate, logits)
    torch.testing.assert_close(grad, expected)
    assert not figures["clipped"].any()


def test_entropy_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1.0, 1e-30, 1e-30]]]))
    torch.testing.assert_close(entropy(logits), torch.tensor([[1.5 * math.log(2), 0.0]]), atol=1e-6, rtol=0)
