"""mode=dpo: the loss against closed forms and a naive per-sequence loop, the reference, validation, and
end-to-end runs (pretrain -> SFT -> DPO, resume, LoRA, sweep summary; DDP, MoE and real data: slow)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from zer02llm.config import Config, ConfigError, ModelConfig, MoEConfig
from zer02llm.training.preflight import validate_run
from zer02llm.training.dpo import DPO, dpo_losses, sequence_logps, weights_fingerprint
from zer02llm.model import Transformer
from zer02llm.model.lora import apply_lora
from zer02llm.tokenizer import Tokenizer

from conftest import SHARED_DATA, TINY, compose, randomize, read_metrics, run_module, write_jsonl

LN2 = math.log(2.0)
NO_AUTOCAST = contextlib.nullcontext


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def naive_loss(h: float, beta: float, label_smoothing: float, loss: str) -> float:
    if loss == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return -(1 - label_smoothing) * logsigmoid(beta * h) - label_smoothing * logsigmoid(-beta * h)


@pytest.mark.parametrize("loss, label_smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_losses_and_gradients_match_their_formulas(loss, label_smoothing):
    beta, gen = 0.3, torch.Generator().manual_seed(0)
    policy = (-20 * torch.rand(8, generator=gen, dtype=torch.float64)).requires_grad_()
    reference = -20 * torch.rand(8, generator=gen, dtype=torch.float64)
    losses, figures = dpo_losses(policy, reference, beta, label_smoothing, loss)
    losses.sum().backward()
    for i in range(4):
        chosen, rejected = (policy[i] - reference[i]).item(), (policy[4 + i] - reference[4 + i]).item()
        h = chosen - rejected
        assert losses[i].item() == pytest.approx(naive_loss(h, beta, label_smoothing, loss), rel=1e-12)
        if loss == "ipo":
            dh = 2 * (h - 1 / (2 * beta))
        else:  # d/dh of -log sigmoid(beta h) is -beta * sigmoid(-beta h)
            sig = 1 / (1 + math.exp(-beta * h))
            dh = -(1 - label_smoothing) * beta * (1 - sig) + label_smoothing * beta * sig
        assert policy.grad[i].item() == pytest.approx(dh, rel=1e-10)
        assert policy.grad[4 + i].item() == pytest.approx(-dh, rel=1e-10)
        assert figures["rewards_chosen"][i].item() == pytest.approx(beta * chosen)
        assert figures["rewards_rejected"][i].item() == pytest.approx(beta * rejected)
        assert figures["reward_margin"][i].item() == pytest.approx(beta * h)
        assert figures["reward_accuracy"][i].item() == float(chosen > rejected)


def test_sequence_logps_by_hand():
    logits = torch.tensor([[[0.0, 0.0, LN2]] * 3, [[1.0, 1.0, 1.0]] * 3])  # softmax (1/4, 1/4, 1/2), uniform
    targets = torch.tensor([[2, 0, -100], [-100, 1, 1]])
    expected = [math.log(1 / 2) + math.log(1 / 4), 2 * math.log(1 / 3)]
    assert sequence_logps(logits, targets).tolist() == pytest.approx(expected, rel=1e-6)


# --- the objective on a toy model -------------------------------------------------------------

def pair(question: str, good: str, bad: str, earlier: tuple[str, str] | None = None) -> dict:
    prompt = [{"role": "user", "content": earlier[0]}, {"role": "assistant", "content": earlier[1]}] if earlier else []
    prompt.append({"role": "user", "content": question})
    return {"chosen": [*prompt, {"role": "assistant", "content": good}],
            "rejected": [*prompt, {"role": "assistant", "content": bad}]}


PAIRS = [pair("What is 2 plus 3?", "2 plus 3 is 5.", "2 plus 3 is 6."),
         pair("And 4 plus 4?", "4 plus 4 is 8.", "Blue.", earlier=("Hi", "Hello! How can I help?")),
         pair("What colour is the sky?", "The sky is blue on a clear day.", "Four.")]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


def toy_config(tmp_path: Path, **mode) -> Config:
    cfg = Config()
    cfg.mode.name, cfg.mode.init_from = "dpo", "start"
    for key, value in mode.items():
        setattr(cfg.mode, key, value)
    cfg.data.train_path = str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS))
    cfg.data.val_path, cfg.data.seq_len, cfg.data.cache_dir = None, 64, str(tmp_path / "cache")
    cfg.train.batch_size, cfg.train.eval_batches = 2, -1
    return cfg


def toy_model(dtype=torch.float64, cfg_class=ModelConfig) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(cfg_class(vocab_size=6400, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=128))
    return randomize(model.to(dtype))


def prepared(cfg: Config, tokenizer: Tokenizer, model: Transformer) -> tuple[DPO, object]:
    objective = DPO(cfg, tokenizer, torch.device("cpu"))
    train, _ = objective.datasets()
    objective.prepare(model, torch.device("cpu"), NO_AUTOCAST)
    return objective, train


def naive_logp(model: Transformer, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """log p of the supervised tokens of one unpadded sequence, token by token."""
    logp = torch.log_softmax(model(torch.tensor(ids[None, :-1])).logits[0].double(), dim=-1)
    return sum(logp[i - 1, ids[i]] for i in range(1, len(ids)) if mask[i])


def naive_pairs(policy: Transformer, reference: Transformer, data, cfg: Config) -> list[dict]:
    """Per pair: the loss and the rewards from one forward per sequence of each model."""
    out = []
    for (c, c_mask), (r, r_mask) in data.pairs(range(len(data))):
        with torch.no_grad():
            ref_c, ref_r = naive_logp(reference, c, c_mask), naive_logp(reference, r, r_mask)
        chosen, rejected = naive_logp(policy, c, c_mask) - ref_c, naive_logp(policy, r, r_mask) - ref_r
        h = chosen - rejected
        beta, ls = cfg.mode.beta, cfg.mode.label_smoothing
        loss = (h - 1 / (2 * beta)) ** 2 if cfg.mode.loss == "ipo" else \
            -(1 - ls) * torch.nn.functional.logsigmoid(beta * h) - ls * torch.nn.functional.logsigmoid(-beta * h)
        out.append({"loss": loss, "rewards_chosen": beta * chosen.item(), "rewards_rejected": beta * rejected.item()})
    return out


def test_at_step_zero_the_loss_is_ln2_and_the_rewards_zero(tokenizer, tmp_path):
    model = toy_model(torch.float32)
    objective, train = prepared(toy_config(tmp_path), tokenizer, model)
    computed = objective.compute(model, train.batch([0, 1]))  # the reference's own batch: the same forward
    assert computed.loss.item() == pytest.approx(LN2, rel=1e-7)
    for name in ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"):
        assert computed.metrics[name].item() == 0.0, name
    other = objective.compute(model, train.batch([2, 1]))  # another batch shape: equal up to rounding
    assert other.loss.item() == pytest.approx(LN2, abs=1e-5)
    assert abs(other.metrics["rewards_chosen"].item()) < 1e-5


@pytest.mark.parametrize("mode", [{}, {"label_smoothing": 0.1, "beta": 0.5}, {"loss": "ipo"}])
def test_loss_and_gradient_match_a_naive_loop_with_a_second_frozen_model(tokenizer, tmp_path, mode):
    cfg = toy_config(tmp_path, **mode)
    model = toy_model()
    reference = copy.deepcopy(model).requires_grad_(False)  # the naive way: a second, frozen model
    objective, train = prepared(cfg, tokenizer, model)
    with torch.no_grad():  # move the policy away from the reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    twin = copy.deepcopy(model)
    computed = objective.compute(model, train.batch([0, 1, 2]))  # one padded forward over 6 sequences
    computed.loss.backward()
    naive = naive_pairs(twin, reference, train, cfg)
    naive_loss_value = sum(p["loss"] for p in naive) / len(naive)
    naive_loss_value.backward()
    assert computed.loss.item() == pytest.approx(naive_loss_value.item(), rel=1e-5)
    for name in ("rewards_chosen", "rewards_rejected"):
        expected = sum(p[name] for p in naive) / 3
        assert computed.metrics[name].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        # the stored reference is float32 (as the policy's log-probs are in training): ~1e-5 of a sum of ~100
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * q.grad.abs().max().item(), msg=name)

    # validation gives the same figures over all pairs, whatever the batches
    values = objective.evaluate(model, train, torch.device("cpu"), 0, 1, NO_AUTOCAST)
    assert values["val_loss"] == pytest.approx(naive_loss_value.item(), rel=1e-5)
    chosen, rejected = (np.array([p[k] for p in naive]) for k in ("rewards_chosen", "rewards_rejected"))
    assert values["val_rewards_chosen"] == pytest.approx(chosen.mean(), rel=1e-4)
    assert values["val_reward_margin"] == pytest.approx((chosen - rejected).mean(), rel=1e-4)
    assert values["val_reward_accuracy"] == pytest.approx((chosen > rejected).mean())


def test_reference_is_cached_and_lora_at_zero_is_the_base(tokenizer, tmp_path, caplog):
    cfg = toy_config(tmp_path)
    model = toy_model(torch.float32)
    _, train = prepared(cfg, tokenizer, model)
    files = list((tmp_path / "cache").glob("*-reference-*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0]), train.reference)
    lora = copy.deepcopy(model)
    apply_lora(lora, rank=4, alpha=8)
    assert weights_fingerprint(lora) == weights_fingerprint(model)  # B = 0: the same function
    with caplog.at_level("INFO"):
        _, again = prepared(cfg, tokenizer, lora)
    assert f"from {files[0]}" in caplog.text and np.array_equal(again.reference, train.reference)
    cfg.data.cache_dir = str(tmp_path / "fresh")  # computed through the adapters: the same numbers
    _, fresh = prepared(cfg, tokenizer, lora)
    assert np.array_equal(fresh.reference, train.reference)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert weights_fingerprint(model) != weights_fingerprint(lora)


@pytest.mark.parametrize("damage, warning", [
    ("empty", "unreadable"), ("truncated", "unreadable"), ("pickled", "unreadable"),
    ("wrong_shape", "holds (3, 3) values, not those of"), ("non_finite", "non-finite value(s)")])
def test_a_damaged_reference_cache_is_computed_again_with_a_warning(tokenizer, tmp_path, caplog, damage, warning):
    cfg = toy_config(tmp_path)
    model = toy_model(torch.float32)
    _, train = prepared(cfg, tokenizer, model)
    (path,) = (tmp_path / "cache").glob("*-reference-*.npy")
    good = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "pickled":
        np.save(path, np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    elif damage == "wrong_shape":
        np.save(path, np.zeros((3, 3), dtype=np.float32))
    else:
        values = train.reference.copy()
        values[1, 0] = np.nan
        np.save(path, values)
    with caplog.at_level(logging.WARNING, logger="zer02llm.training.dpo"):
        _, again = prepared(cfg, tokenizer, model)
    assert warning in caplog.text and str(path) in caplog.text
    assert np.array_equal(again.reference, train.reference)  # computed again from the same weights
    assert np.array_equal(np.load(path), train.reference)  # and the cache repaired


def test_one_forward_over_both_sides_gives_the_moe_balance_loss(tokenizer, tmp_path):
    model = toy_model(torch.float32, MoEConfig)
    objective, train = prepared(toy_config(tmp_path), tokenizer, model)
    batch = train.batch([0, 1])
    computed = objective.compute(model, batch)
    assert computed.output.aux_loss is not None and computed.output.logits.shape[0] == 4
    # the value: the model's own balance loss over all four sequences at once (chosen and rejected together)
    with torch.no_grad():
        expected = model(batch[0]).aux_loss
    assert computed.output.aux_loss.item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 0
    (computed.loss + computed.output.aux_loss).backward()
    assert math.isfinite(computed.loss.item())


def test_a_steps_tokens_are_what_the_forward_pass_processes(tokenizer, tmp_path):
    """Prompts and answers of both sides (the forward pass's input tokens), not the answer tokens alone:
    the summary's FLOPs are 6 N per processed token."""
    objective, train = prepared(toy_config(tmp_path), tokenizer, toy_model(torch.float32))
    indices = [0, 1, 2]
    # each side's input is its ids but the last (the last id is only a target)
    expected = sum(len(chosen) - 1 + len(rejected) - 1 for (chosen, _), (rejected, _) in train.pairs(indices))
    answers = sum(int(mask[1:].sum()) for side in train.pairs(indices) for _, mask in side)
    assert objective.counts(train.batch(indices)) == (3, expected) and expected > answers


def test_bad_dpo_settings_are_refused_each_with_its_key():
    def problems(*overrides: str) -> str:
        cfg = OmegaConf.to_object(compose(["mode=dpo", *overrides]))
        with pytest.raises(ConfigError) as e:
            validate_run(cfg, check_files=False)
        return str(e.value)

    assert "mode=dpo needs mode.init_from=<an SFT run directory or checkpoint>" in problems()
    text = problems("mode.init_from=x", "mode.beta=0", "mode.label_smoothing=0.5", "mode.loss=kto",
                    "data.packing=bos_aligned", "data.document_mask=true")
    for piece in ("mode.beta=0.0: must be > 0", "mode.label_smoothing=0.5: must be in [0, 0.5)",
                  "mode.loss='kto': must be one of sigmoid, ipo", "data.packing=bos_aligned is for pretraining",
                  "data.document_mask=True is for pretraining"):
        assert piece in text
    assert "label smoothing is for the sigmoid loss" in problems("mode.init_from=x", "mode.loss=ipo",
                                                                  "mode.label_smoothing=0.1")
    validate_run(OmegaConf.to_object(compose(["mode=dpo", "mode.init_from=x", "mode.loss=ipo"])), check_files=False)


# --- end to end ---------------------------------------------------------------------------------

DPO_ARGS = [*TINY, "mode=dpo", "data.seq_len=64", "train.max_steps=20", "train.lr=2e-3", "train.log_interval=1",
            "train.save_interval=10", "train.eval_interval=10", "train.eval_batches=-1"]
METRICS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy")


def final_weights(run_dir: Path, step: int = 20) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """pretrain -> SFT -> DPO on the shipped samples, then the DPO run resumed at step 10, and DPO with LoRA."""
    work = tmp_path_factory.mktemp("dpo")
    run_module("zer02llm.train", [*TINY, "train.max_steps=40", "train.lr=3e-3", "hydra.run.dir=pretrain"], cwd=work)
    run_module("zer02llm.train", [*TINY, "mode=sft", "mode.init_from=pretrain", "train.max_steps=30", "train.lr=2e-3",
                                  "hydra.run.dir=sft"], cwd=work)
    dpo = [*DPO_ARGS, "mode.init_from=sft"]
    run_module("zer02llm.train", [*dpo, "hydra.run.dir=runs/dpo"], cwd=work)
    run_module("zer02llm.train", [*dpo, "train.resume=runs/dpo/checkpoints/step_0000010", "hydra.run.dir=runs/resumed"],
               cwd=work)
    run_module("zer02llm.train", [*dpo, "lora.rank=4", "lora.alpha=8", "train.max_steps=10", "hydra.run.dir=runs/lora"],
               cwd=work)
    return {"work": work, "sft": work / "sft", "dpo": work / "runs" / "dpo", "resumed": work / "runs" / "resumed",
            "lora": work / "runs" / "lora"}


def test_dpo_run_starts_at_ln2_logs_rewards_and_learns(runs):
    rows = read_metrics(runs["dpo"])
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 21)) and [r["step"] for r in val] == [10, 20]
    first = train[0]  # the first batch meets the reference's weights
    assert first["loss"] == pytest.approx(LN2, abs=1e-5) and abs(first["reward_margin"]) < 1e-5
    assert all(all(name in r for name in METRICS) for r in train)
    assert all(all(f"val_{name}" in r for name in METRICS) for r in val)
    assert val[-1]["val_reward_margin"] > 0 and val[-1]["val_loss"] < LN2  # held-out pairs: the preference took
    log = (runs["dpo"] / "train.log").read_text()
    assert "reward_accuracy" in log and "val_reward_accuracy" in log and "DPO reference log-probs written" in log
    summary = json.loads((runs["dpo"] / "summary.json").read_text())
    assert summary["mode"] == "dpo" and summary["final_val_loss"] == val[-1]["val_loss"]
    assert json.loads((runs["dpo"] / "checkpoints" / "last" / "config.json").read_text())["mode"] == "dpo"


def test_resume_is_bit_exact_and_reads_the_reference_of_the_starting_weights(runs):
    expected, got = final_weights(runs["dpo"]), final_weights(runs["resumed"])
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    def after_10(run):
        return [r for r in read_metrics(run) if r["step"] > 10]
    assert after_10(runs["resumed"]) == [{**r, "tokens_per_s": a["tokens_per_s"]} if "tokens_per_s" in r else r
                                         for r, a in zip(after_10(runs["dpo"]), after_10(runs["resumed"]))]
    log = (runs["resumed"] / "train.log").read_text()
    assert "resumed from" in log and "DPO reference log-probs of" in log and "written" not in log


def test_lora_trains_adapters_only_against_the_same_reference(runs):
    base = load_file(str(runs["sft"] / "checkpoints" / "last" / "model.safetensors"))
    tuned = load_file(str(runs["lora"] / "checkpoints" / "last" / "model.safetensors"))
    for name, tensor in base.items():
        assert torch.equal(tensor, tuned[name]), name
    assert any(".lora_b" in k and tuned[k].abs().sum() > 0 for k in tuned)
    written = next(line for line in (runs["dpo"] / "train.log").read_text().splitlines() if "written to" in line)
    path = written.rsplit("written to ", 1)[1]
    assert f"from {path}" in (runs["lora"] / "train.log").read_text()  # LoRA at zero: the base's reference
    assert all(all(name in r for name in METRICS) for r in read_metrics(runs["lora"]) if "loss" in r)


def test_sweep_summary_reads_dpo_runs(runs):
    from zer02llm.sweep import main
    from zer02llm.sweeps.summary import collect

    assert main([str(runs["dpo"].parent)]) == 0
    jobs = {job.name: job for job in collect(runs["dpo"].parent)}
    summary = json.loads((runs["dpo"] / "summary.json").read_text())
    assert jobs["dpo"].status == "ok" and jobs["dpo"].final_val_loss == summary["final_val_loss"]
    assert (runs["dpo"].parent / "summary.md").exists()


@pytest.mark.slow
def test_two_ranks_compute_the_reference_and_train_as_one_process(runs, tmp_path):
    work = runs["work"]
    run_module("torch.distributed.run", ["--standalone", "--nproc_per_node=2", "-m", "zer02llm.train", *DPO_ARGS,
                                         "mode.init_from=sft", "train.batch_size=2", f"data.cache_dir={tmp_path}",
                                         "hydra.run.dir=ddp"], cwd=work)
    ddp, single = read_metrics(work / "ddp"), read_metrics(runs["dpo"])
    assert [r["step"] for r in ddp] == [r["step"] for r in single]
    for a, b in zip(ddp, single):
        for key in ("loss", "reward_margin", "val_loss", "val_reward_margin"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), (a["step"], key)
    for name, tensor in final_weights(runs["dpo"]).items():
        torch.testing.assert_close(final_weights(work / "ddp")[name], tensor, rtol=1e-3, atol=1e-5, msg=name)
    # each rank computed its share of the batches (in other batch shapes): the same table as one process
    for line in (runs["dpo"] / "train.log").read_text().splitlines():
        if "written to" in line:
            alone = Path(line.rsplit("written to ", 1)[1])
            shared = next(tmp_path.glob(alone.name.split("-reference-")[0] + "-reference-*.npy"))
            np.testing.assert_allclose(np.load(shared), np.load(alone), rtol=1e-5)
    assert (work / "ddp" / "train.log").read_text().count("DPO reference computed") == 2  # train and val


@pytest.mark.slow
def test_moe_dpo_logs_the_balance_loss_beside_the_rewards(tmp_path):
    moe = [*TINY, "model=moe", "train.max_steps=5"]
    run_module("zer02llm.train", [*moe, "hydra.run.dir=pretrain"], cwd=tmp_path)
    run_module("zer02llm.train", [*moe, "mode=dpo", "mode.init_from=pretrain", "train.log_interval=1",
                                  "hydra.run.dir=dpo"], cwd=tmp_path)
    rows = [r for r in read_metrics(tmp_path / "dpo") if "loss" in r]
    assert len(rows) == 5 and all("aux_loss" in r and "reward_accuracy" in r for r in rows)
    assert rows[0]["loss"] == pytest.approx(LN2, abs=1e-4)


@pytest.mark.slow
def test_held_out_reward_accuracy_rises_on_pairs_from_the_shared_sft_data(runs, tmp_path):
    """Pairs from real conversations: chosen = the answer, rejected = its first half (an answer cut off)."""
    source = SHARED_DATA / "sft.jsonl"
    if not source.exists():
        pytest.skip(f"{source} is absent (the shared data set is not part of the repository)")

    def pairs(path: Path, count: int, skip: int = 0) -> list[dict]:
        out = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                turns = json.loads(line)["conversations"]
                answer = turns[-1]["content"]
                if turns[-1]["role"] != "assistant" or not 8 <= len(answer) or sum(len(t["content"]) for t in turns) > 240:
                    continue
                out.append({"chosen": turns, "rejected": [*turns[:-1], {"role": "assistant",
                                                                         "content": answer[:len(answer) // 2]}]})
        return out[skip:skip + count]

    val_source = SHARED_DATA / "sft_val.jsonl"
    val = pairs(val_source, 60) if val_source.exists() else pairs(source, 60, skip=300)
    write_jsonl(tmp_path / "train.jsonl", pairs(source, 300))
    write_jsonl(tmp_path / "val.jsonl", val)
    run_module("zer02llm.train", [*TINY, "mode=dpo", f"mode.init_from={runs['sft']}", "data.train_path=train.jsonl",
                                  "data.val_path=val.jsonl", "data.seq_len=160", "train.batch_size=8",
                                  "train.max_steps=40", "train.lr=3e-3", "train.eval_interval=40",
                                  "train.eval_batches=-1", "hydra.run.dir=run"], cwd=tmp_path)
    final = [r for r in read_metrics(tmp_path / "run") if "val_reward_accuracy" in r][-1]
    assert final["val_reward_accuracy"] >= 0.7 and final["val_reward_margin"] > 0
