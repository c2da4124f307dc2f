"""mode=grpo: the objective's batches and loss against a naive per-completion loop, validation figures,
config checks, and end-to-end runs (metrics, exact resume between the updates of one rollout batch;
slow: held-out reward rising where the model can reach it, two ranks as one process)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zer02llm.config import Config, ConfigError, ModelConfig, validate
from zer02llm.model import IGNORE_INDEX, Transformer
from zer02llm.tokenizer import Tokenizer
from zer02llm.training.grpo import GRPO, training_rows
from zer02llm.training.rewards import Term

from conftest import TINY, randomize, read_metrics, run_module, write_jsonl

NO_AUTOCAST = contextlib.nullcontext
PROMPTS = [{"prompt": "What is 2 plus 3?", "answer": "5"},
           {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "What is 4 times 2?"}], "answer": 8},
           {"prompt": "小明有三个苹果，又买了两个。他现在有几个？", "answer": "5"}]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


def toy_config(tmp_path: Path, **mode) -> Config:
    cfg = Config()
    cfg.mode.name = "grpo"
    cfg.mode.group_size, cfg.mode.max_new_tokens, cfg.mode.beta = 3, 6, 0.0
    for key, value in mode.items():
        setattr(cfg.mode, key, value)
    cfg.data.train_path = str(write_jsonl(tmp_path / "prompts.jsonl", PROMPTS))
    cfg.data.val_path, cfg.data.seq_len = None, 96
    cfg.train.batch_size = 2
    return cfg


def toy_model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=6400, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=128))
    return randomize(model.double())


def length_reward(completion: str, answer: str, prompt: str) -> float:
    """Rewards that differ within a group (a random model's answers are never right)."""
    return float(len(completion) % 5)


def prepared(cfg: Config, tokenizer: Tokenizer, model: Transformer) -> tuple[GRPO, object]:
    objective = GRPO(cfg, tokenizer, torch.device("cpu"))
    objective.rewards.terms = [Term("length", 1.0, length_reward, False)]
    train, _ = objective.datasets()
    objective.prepare(model, torch.device("cpu"), NO_AUTOCAST)
    return objective, train


def naive_step_loss(policy, sampler, reference, objective, micro_batches, rewards_by_row):
    """The step's loss from the formulas: one unpadded forward per completion, python sums over tokens."""
    mode = objective.mode
    G = mode.group_size
    total, tokens = 0.0, 0
    for indices, completions in micro_batches:
        for p, i in enumerate(indices):
            group = torch.tensor([rewards_by_row[(i, g)] for g in range(G)], dtype=torch.float64)
            adv = (group - group.mean()) / (group.std() + 1e-4)
            for g in range(G):
                prompt, completion = objective.train_set.ids[i], completions[p * G + g]
                ids = torch.tensor([prompt + completion])
                T = mode.temperature
                logp = torch.log_softmax(policy(ids).logits[0].double() / T, -1)
                with torch.no_grad():
                    old = torch.log_softmax(sampler(ids).logits[0].double() / T, -1)
                    ref = torch.log_softmax(reference(ids).logits[0].double() / T, -1)
                for t, token in enumerate(completion):
                    at = len(prompt) - 1 + t
                    ratio = torch.exp(logp[at, token] - old[at, token])
                    high = mode.clip_eps if mode.clip_eps_high is None else mode.clip_eps_high
                    loss = -torch.min(ratio * adv[g], torch.clamp(ratio, 1 - mode.clip_eps, 1 + high) * adv[g])
                    d = ref[at, token] - logp[at, token]
                    total = total + loss + mode.beta * (torch.exp(d) - d - 1)
                    tokens += 1
    return total / tokens


@pytest.mark.parametrize("updates,beta", [(1, 0.0), (2, 0.1)])
def test_step_loss_and_gradient_equal_a_naive_per_completion_loop(tokenizer, tmp_path, updates, beta):
    cfg = toy_config(tmp_path, updates_per_rollout=updates, beta=beta, clip_eps_high=0.3, temperature=0.8)
    model = toy_model()
    objective, train = prepared(cfg, tokenizer, model)
    assert (objective.reference is not None) == (beta > 0)  # no second model without the KL term
    start = {k: v.clone() for k, v in model.state_dict().items()}
    micro = [[0, 2], [1]]
    batches = objective.step_batches(lambda: [train.batch(m) for m in micro], step=0)
    sampler = toy_model()
    sampler.load_state_dict(start)
    if updates > 1:  # move the policy away from the weights that sampled: ratios != 1, some clipped
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        assert objective.step_batches(lambda: pytest.fail("drew within a rollout batch"), step=1) is batches

    completions, rewards_by_row = [], {}
    for indices, batch in zip(micro, batches):
        inputs, targets = batch[0], batch[1]
        rows = []
        for r in range(inputs.shape[0]):
            keep = targets[r] != IGNORE_INDEX
            rows.append(targets[r][keep].tolist())
        completions.append((indices, rows))
        for p, i in enumerate(indices):
            for g in range(3):
                text = tokenizer.decode([t for t in rows[p * 3 + g] if t != tokenizer.eos_id])
                rewards_by_row[(i, g)] = length_reward(text, "", "")
    # the trainer's weighting: each micro-batch's mean over its units (tokens) times its share of the step's
    counts = [objective.counts(b) for b in batches]
    total_units = sum(u for u, _ in counts)
    step_loss, metrics = 0.0, []
    for batch, (u, _) in zip(batches, counts):
        computed = objective.compute(model, batch)
        step_loss = step_loss + computed.loss * u / total_units
        metrics.append(computed.metrics)
    grads = torch.autograd.grad(step_loss, list(model.parameters()))
    expected = naive_step_loss(model, sampler, sampler, objective, completions, rewards_by_row)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(step_loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    assert sum(g.abs().sum() for g in grads) > 0
    # rollout figures over the whole rollout batch, the same in every micro-batch
    all_rewards = torch.tensor(list(rewards_by_row.values()), dtype=torch.float64)
    assert metrics[0]["reward"].item() == pytest.approx(all_rewards.mean().item())
    assert metrics[1]["reward"].item() == metrics[0]["reward"].item()
    lengths = [len(c) for _, rows in completions for c in rows]
    assert metrics[0]["response_length"].item() == pytest.approx(sum(lengths) / len(lengths))
    assert ("kl" in objective.metric_names) == (beta > 0)
    if updates > 1:
        assert any(m["clip_fraction"] > 0 for m in metrics)
    else:
        assert all(m["clip_fraction"] == 0 for m in metrics)


def test_training_rows_align_targets_with_the_completion():
    inputs, targets = training_rows([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    # row 0: 1 2 3 5 6 -> inputs 1 2 3 5, targets . . 5 6; row 1: 4 7 8 9 -> inputs 4 7 8, targets 7 8 9
    assert inputs.tolist() == [[1, 2, 3, 5], [4, 7, 8, 0]]
    assert targets.tolist() == [[-100, -100, 5, 6], [7, 8, 9, -100]]


def test_validation_greedy_pass_at_1_and_pass_at_k(tokenizer, tmp_path):
    cfg = toy_config(tmp_path, eval_samples=3)
    model = toy_model()
    objective, train = prepared(cfg, tokenizer, model)
    # an answer term (accuracy, pass@k) and a graded shape term, so that rewards are not just right or wrong
    objective.rewards.terms = [Term("first", 1.0, lambda c, a, p: float(c[:1] in "abcdefghijklm"), True),
                               Term("length", 0.1, length_reward, False)]
    values = objective.evaluate(model, train, torch.device("cpu"), 0, 1, NO_AUTOCAST)
    # by hand, from the same completions
    greedy, rewards, correct, _ = objective.complete(model, train, [0, 1, 2], 1, 0.0, ("eval",), NO_AUTOCAST)
    _, sampled_rewards, sampled, _ = objective.complete(model, train, [0, 1, 2], 3, cfg.mode.temperature,
                                                        (cfg.train.seed, "eval"), NO_AUTOCAST)
    assert not torch.equal(sampled_rewards, sampled.to(sampled_rewards.dtype))  # the two figures can differ
    assert values["val_sampled_reward"] == pytest.approx(sampled_rewards.mean().item())
    assert values["val_accuracy"] == pytest.approx(correct.float().mean().item())
    assert values["val_reward"] == pytest.approx(rewards.mean().item()) == pytest.approx(-values["val_loss"])
    assert values["val_pass@1"] == pytest.approx(sampled.float().mean().item())
    assert values["val_pass@3"] == pytest.approx(sampled.any(dim=1).float().mean().item())
    assert values["val_pass@3"] >= values["val_pass@1"]


def test_bad_grpo_settings_are_refused_each_with_its_key():
    cfg = Config()
    cfg.mode.name = "grpo"
    cfg.mode.group_size, cfg.mode.temperature, cfg.mode.clip_eps, cfg.mode.clip_eps_high = 1, 0.0, 1.5, 0.1
    cfg.mode.beta, cfg.mode.updates_per_rollout, cfg.mode.loss_norm = -1.0, 0, "tokens"
    cfg.mode.max_new_tokens, cfg.data.seq_len, cfg.mode.eval_samples = 600, 512, -1
    cfg.distributed.strategy = "fsdp"
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    for key in ("mode.group_size=1", "mode.temperature=0.0", "mode.clip_eps=1.5", "mode.clip_eps_high=0.1",
                "mode.beta=-1.0", "mode.updates_per_rollout=0", "mode.loss_norm='tokens'", "mode.max_new_tokens=600",
                "mode.eval_samples=-1", "distributed.strategy=fsdp with mode=grpo"):
        assert key in str(e.value)
    validate(toy_config_default())


def toy_config_default() -> Config:
    cfg = Config()
    cfg.mode.name = "grpo"
    return cfg


GRPO_ARGS = [*TINY, "mode=grpo", "data.seq_len=64", "mode.group_size=4", "mode.max_new_tokens=8",
             "mode.updates_per_rollout=2", "mode.beta=0.05", "mode.eval_samples=2", "train.batch_size=2",
             "train.max_steps=6", "train.lr=1e-3", "train.log_interval=1", "train.save_interval=3",
             "train.eval_interval=6", "train.eval_batches=2"]


def final_weights(run_dir: Path, step: int = 6) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """pretrain -> GRPO (two updates per rollout batch, KL) on the shipped sums; then the GRPO run resumed at
    step 3, between the two updates of a rollout batch."""
    work = tmp_path_factory.mktemp("grpo")
    run_module("zer02llm.train", [*TINY, "train.max_steps=30", "train.lr=3e-3", "hydra.run.dir=pretrain"], cwd=work)
    grpo = [*GRPO_ARGS, "mode.init_from=pretrain"]
    run_module("zer02llm.train", [*grpo, "hydra.run.dir=runs/grpo"], cwd=work)
    run_module("zer02llm.train", [*grpo, "train.resume=runs/grpo/checkpoints/step_0000003",
                                  "hydra.run.dir=runs/resumed"], cwd=work)
    return {"work": work, "grpo": work / "runs" / "grpo", "resumed": work / "runs" / "resumed"}


def test_grpo_run_logs_its_figures_and_validates(runs):
    rows = read_metrics(runs["grpo"])
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 7))
    for name in ("reward", "reward_std", "accuracy", "response_length", "reward_errors", "clip_fraction", "entropy",
                 "kl"):
        assert all(name in r for r in train), name
    assert all(0 < r["response_length"] <= 8 and r["entropy"] > 0 for r in train)
    # the second update of each rollout batch sees the same rollout figures and a ratio away from 1
    assert [r["reward"] for r in train[::2]] == [r["reward"] for r in train[1::2]]
    assert all(r["kl"] == 0 for r in train[:1]) and any(r["kl"] > 0 for r in train[1:])
    start, val = [r for r in rows if "val_loss" in r]  # the starting weights' figures, then the last step's
    assert start["step"] == 0 and "loss" not in start and val["step"] == 6
    assert {"val_reward", "val_accuracy", "val_pass@1", "val_pass@2", "val_sampled_reward"} <= set(val)
    summary = json.loads((runs["grpo"] / "summary.json").read_text())
    assert summary["mode"] == "grpo" and summary["final_val_loss"] == -val["val_reward"]


def test_resume_between_the_updates_of_a_rollout_batch_is_bit_exact(runs):
    uninterrupted, resumed = final_weights(runs["grpo"]), final_weights(runs["resumed"])
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    rows = {r["step"]: r for r in read_metrics(runs["grpo"]) if "loss" in r}
    again = {r["step"]: r for r in read_metrics(runs["resumed"]) if "loss" in r}
    assert [again[s]["loss"] for s in (4, 5, 6)] == [rows[s]["loss"] for s in (4, 5, 6)]


@pytest.mark.slow
def test_two_ranks_roll_out_their_shares_and_train_as_one_process(runs):
    """Each rank rolls out its prompts (the same samples: each prompt has its own seed) and the step's loss is
    over all ranks' completion tokens: the run of one process, to float tolerance."""
    work = runs["work"]
    run_module("torch.distributed.run", ["--standalone", "--nproc_per_node=2", "-m", "zer02llm.train", *GRPO_ARGS,
                                         "mode.init_from=pretrain", "train.batch_size=1", "train.eval_batches=4",
                                         "hydra.run.dir=ddp"], cwd=work)
    ddp = {r["step"]: r for r in read_metrics(work / "ddp")}
    single = {r["step"]: r for r in read_metrics(runs["grpo"])}
    assert ddp.keys() == single.keys()
    for step, b in single.items():
        for key in ("loss", "reward", "response_length", "kl", "val_reward", "val_response_length", "val_pass@2"):
            if key in b:
                assert ddp[step][key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), (step, key)
    # atol 1e-4: a few embedding rows that barely occur get near-zero gradients, whose float noise (batches of
    # other shapes on each rank) Adam's normalisation scales up; measured 3e-5 on 3 of 204800 lm_head weights
    for name, tensor in final_weights(runs["grpo"]).items():
        torch.testing.assert_close(final_weights(work / "ddp")[name], tensor, rtol=1e-3, atol=1e-4, msg=name)


def held_out_figures(checkpoint: Path, overrides: list[str]) -> dict[str, float]:
    """GRPO's validation figures of a checkpoint on the shipped held-out sums, in this process."""
    from zer02llm.inference.loading import load_for_inference
    from zer02llm.train import checked_config

    from conftest import compose

    cfg = checked_config(compose(["mode=grpo", *overrides]))
    loaded = load_for_inference(str(checkpoint), device="cpu")
    objective = GRPO(cfg, loaded.tokenizer, torch.device("cpu"))
    _, vals = objective.datasets()
    return objective.evaluate(loaded.model, vals["val"], torch.device("cpu"), 0, 1, NO_AUTOCAST)


SAYS_SOMETHING = ["reward.numeric=0", "reward.format=1", "reward.format_pattern='[a-zA-Z0-9]'",
                  "mode.max_new_tokens=8", "mode.group_size=8", "data.seq_len=64", "train.eval_batches=-1"]


@pytest.mark.slow
def test_held_out_reward_rises_where_the_model_can_reach_it(runs):
    """A reward the tiny pretrained model reaches when sampling but not greedily: its answer holds a letter or
    digit before eos (sampled, nearly always; greedy, eos comes first, reward 0). 40 GRPO steps must make the
    greedy answers to the 100 held-out prompts earn it; a zero or sign-flipped gradient leaves eos first."""
    work = runs["work"]
    run_module("zer02llm.train", [*TINY, "mode=grpo", "mode.init_from=pretrain", *SAYS_SOMETHING, "train.batch_size=4",
                                  "train.max_steps=40", "train.lr=3e-3", "train.eval_interval=40",
                                  "hydra.run.dir=says"], cwd=work)
    before = held_out_figures(work / "pretrain", [*TINY, *SAYS_SOMETHING])
    after = held_out_figures(work / "says", [*TINY, *SAYS_SOMETHING])
    print(f"held-out reward (an answer with a letter or digit) before GRPO: {before}\nafter: {after}")
    assert before["val_reward"] < 0.2 and before["val_pass@1"] > 0.5  # reached by sampling, not greedily
    assert after["val_reward"] > before["val_reward"] + 0.6
    assert after["val_pass@1"] >= before["val_pass@1"] - 0.05
