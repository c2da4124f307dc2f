"""Token and FLOPs budgets: the steps they buy against a hand count of the model's matmul weights, the
rounding, the refusals, and the config keys as the command line gives them."""

from __future__ import annotations

import math

import pytest

from zer02llm.training.budget import FLOPS_BUDGET, TOKEN_BUDGET, budget_steps, plan_budget
from zer02llm.config import Config, ConfigError, ModelConfig, TrainConfig
from zer02llm.training.preflight import validate_run

from conftest import compose


def hand_counted_flops_per_token(model: ModelConfig, seq_len: int) -> tuple[int, int]:
    """(non-embedding parameters, 6 * N_matmul + 12 * n_layers * dim * seq_len), counted from the config:
    per layer q/o (dim x dim), k/v (dim x kv_dim), the SwiGLU's three (dim x ffn), two norms; the final
    norm; the LM head (counted for FLOPs even when it shares the embedding's weights)."""
    head_dim = model.dim // model.n_heads
    kv_dim = model.n_kv_heads * head_dim
    ffn = model.hidden_dim if model.hidden_dim is not None else 64 * math.ceil(8 * model.dim / 3 / 64)
    per_layer = 2 * model.dim * model.dim + 2 * model.dim * kv_dim + 3 * model.dim * ffn + 2 * model.dim
    head = model.vocab_size * model.dim
    non_embedding = model.n_layers * per_layer + model.dim + (0 if model.tie_embeddings else head)
    matmul = non_embedding + (head if model.tie_embeddings else 0)
    return non_embedding, 6 * matmul + 12 * model.n_layers * model.dim * seq_len


MODELS = [ModelConfig(vocab_size=6400, dim=32, n_layers=2, n_heads=4, n_kv_heads=2),
          ModelConfig(vocab_size=1000, dim=48, n_layers=3, n_heads=6, n_kv_heads=3, hidden_dim=100,
                      tie_embeddings=False),
          ModelConfig()]


@pytest.mark.parametrize("model", MODELS, ids=["tiny", "untied-gqa", "default"])
def test_the_models_flops_per_token_is_the_hand_count(model):
    import torch

    from zer02llm.model.transformer import Transformer

    with torch.device("meta"):
        built = Transformer(model)
    non_embedding, flops = hand_counted_flops_per_token(model, 128)
    assert built.num_params(exclude_embeddings=True) == non_embedding
    assert built.flops_per_token(128) == flops


@pytest.mark.parametrize("model", MODELS, ids=["tiny", "untied-gqa", "default"])
def test_a_flops_budget_buys_whole_steps_of_the_models_hand_counted_flops(model):
    batch, accum, world, seq_len = 4, 2, 3, 64
    tokens_per_step = batch * accum * world * seq_len
    _, per_token = hand_counted_flops_per_token(model, seq_len)
    step_flops = tokens_per_step * per_token
    for budget, expected in ((10 * step_flops, 10), (10.4 * step_flops, 10), (10.5 * step_flops, 11),
                             (0.5 * step_flops, 1), (1e6 * step_flops, 1_000_000)):
        train = TrainConfig(batch_size=batch, grad_accum=accum, flops_budget=budget)
        plan = plan_budget(train, tokens_per_step, per_token)
        assert plan.steps == expected == budget_steps(train, tokens_per_step, per_token), budget
        assert plan.key == FLOPS_BUDGET and plan.tokens == expected * tokens_per_step
        assert plan.flops == expected * tokens_per_step * per_token
        assert abs(plan.flops - budget) <= step_flops / 2  # within half a step of the budget


def test_one_flops_budget_buys_each_model_steps_in_inverse_proportion_to_its_flops_per_token():
    """The name's claim across models: one budget, the models ordered by FLOPs per token, and the steps
    each buys ordered the other way (10,000 steps of the smallest; the others by the hand-counted ratio)."""
    batch, accum, world, seq_len = 4, 2, 1, 64
    tokens_per_step = batch * accum * world * seq_len
    per_token = sorted(hand_counted_flops_per_token(model, seq_len)[1] for model in MODELS)
    assert per_token[0] < per_token[1] < per_token[2]
    budget = 10_000 * tokens_per_step * per_token[0]
    train = TrainConfig(batch_size=batch, grad_accum=accum, flops_budget=budget)
    steps = [plan_budget(train, tokens_per_step, flops).steps for flops in per_token]
    assert steps[0] == 10_000 and steps[0] > steps[1] > steps[2] >= 1
    for flops, got in zip(per_token, steps):
        assert got == round(10_000 * per_token[0] / flops)


def test_a_token_budget_rounds_to_the_nearest_step():
    train = TrainConfig(token_budget=1000.0)
    assert [budget_steps(TrainConfig(token_budget=t), 128, 1) for t in (128, 191, 192, 1000, 2e6)] == \
        [1, 1, 2, 8, 15625]
    plan = plan_budget(train, 128, 10)
    assert (plan.key, plan.steps, plan.tokens, plan.flops) == (TOKEN_BUDGET, 8, 1024, 10240)
    line = plan.describe(params=1_234_567, non_embedding_params=34_567, max_steps=400)
    for text in ("train.token_budget=1000", "8 steps x 128 tokens = 1,024 tokens", "1.024e+04 FLOPs",
                 "+2.40% of the budget", "1,234,567 parameters", "34,567 without embeddings",
                 "train.max_steps=400 not used"):
        assert text in line, (text, line)


def test_no_budget_means_no_plan_and_too_small_a_budget_is_refused():
    assert plan_budget(TrainConfig(), 128, 10) is None and budget_steps(TrainConfig(), 128, 10) is None
    with pytest.raises(ConfigError, match=r"train.token_budget=63 buys less than half an optimizer step .*128 "
                                          r"tokens.*raise train.token_budget to at least 128"):
        plan_budget(TrainConfig(token_budget=63), 128, 10)
    with pytest.raises(ConfigError, match="train.flops_budget=.*x 10 FLOPs per token"):
        plan_budget(TrainConfig(flops_budget=600.0), 128, 10)
    with pytest.raises(ValueError, match="tokens_per_step=0"):
        plan_budget(TrainConfig(token_budget=1e6), 0, 10)


def test_validate_refuses_two_budgets_and_non_positive_ones():
    for train, message in ((TrainConfig(token_budget=1e6, flops_budget=1e12), "each sets the number of steps, give one"),
                           (TrainConfig(token_budget=0.0), "train.token_budget=0.0: must be > 0"),
                           (TrainConfig(flops_budget=-1.0), "train.flops_budget=-1.0: must be > 0"),
                           (TrainConfig(flops_budget=math.inf), "train.flops_budget=inf: must be > 0")):
        with pytest.raises(ConfigError, match=message):
            validate_run(Config(train=train), check_files=False)
    # a budget stands in for max_steps/epochs: epochs need not be positive then
    validate_run(Config(train=TrainConfig(token_budget=1e6, max_steps=-1, epochs=0)), check_files=False)


def test_budgets_from_the_command_line_accept_scientific_notation():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(compose(["train.flops_budget=1e12"]))
    assert cfg.train.flops_budget == 1e12 and cfg.train.token_budget is None
    cfg = OmegaConf.to_object(compose(["train.token_budget=2000000"]))
    assert cfg.train.token_budget == 2e6
