"""Fine-tuning end to end: pretrain -> SFT (full or LoRA) -> chat with the eval command."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zer02llm import eval as eval_cli
from zer02llm.config import ConfigError, EvalConfig
from zer02llm.model.lora import apply_lora
from zer02llm.model import Transformer
from zer02llm.tokenizer import Tokenizer

from conftest import TINY, compose, read_metrics, run_module

FAST = [*TINY, "train.log_interval=5", "train.eval_interval=20"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny pretraining run, then full SFT and LoRA SFT from it, on the shipped sample data."""
    work = tmp_path_factory.mktemp("finetune")
    run_module("zer02llm.train", [*FAST, "train.max_steps=60", "train.lr=3e-3", "hydra.run.dir=pretrain"], cwd=work)
    pretrained = work / "pretrain" / "checkpoints" / "last"
    sft = [*FAST, "mode=sft", f"mode.init_from={pretrained}", "train.max_steps=40", "train.lr=2e-3"]
    run_module("zer02llm.train", [*sft, "hydra.run.dir=sft"], cwd=work)
    run_module("zer02llm.train", [*sft, "lora.rank=4", "lora.alpha=8", "hydra.run.dir=lora"], cwd=work)
    return {"work": work, "pretrain": pretrained, "sft": work / "sft", "lora": work / "lora"}


def test_sft_lowers_the_assistant_loss_from_pretrained_weights(runs):
    rows = read_metrics(runs["sft"])
    losses = [r["loss"] for r in rows if "loss" in r]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert losses[-1] < losses[0] and val[-1] < val[0]
    log = (runs["sft"] / "train.log").read_text()
    assert "initialised the weights from" in log and "data (sft)" in log
    saved = json.loads((runs["sft"] / "checkpoints" / "last" / "config.json").read_text())
    assert saved["mode"] == "sft"


def test_lora_trains_only_adapters_and_leaves_base_weights_unchanged(runs):
    base = load_file(str(runs["pretrain"] / "model.safetensors"))
    tuned = load_file(str(runs["lora"] / "checkpoints" / "last" / "model.safetensors"))
    adapters = [k for k in tuned if ".lora_" in k]
    assert adapters and all(k.split(".")[-2] in {"q_proj", "k_proj", "v_proj", "o_proj"} for k in adapters)
    for name, tensor in base.items():
        assert torch.equal(tensor, tuned[name]), name  # frozen
    assert any(tuned[k].abs().sum() > 0 for k in adapters if k.endswith("lora_b"))  # B left zero: not trained
    state = torch.load(runs["lora"] / "checkpoints" / "last" / "trainer.pt", weights_only=True)
    n_optimized = sum(len(group["params"]) for group in state["optimizer"]["param_groups"])
    assert n_optimized == len(adapters)
    adapter = runs["lora"] / "checkpoints" / "last" / "adapter" / "adapter.safetensors"
    model_file = runs["lora"] / "checkpoints" / "last" / "model.safetensors"
    assert adapter.stat().st_size * 20 < model_file.stat().st_size
    assert "trainable" in (runs["lora"] / "train.log").read_text()


def test_init_from_another_model_config_is_refused(runs, tmp_path):
    proc = run_module("zer02llm.train", [*FAST, "mode=sft", f"mode.init_from={runs['pretrain']}", "model.dim=64",
                                         "train.max_steps=2", "hydra.run.dir=x"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "model.dim: checkpoint 32, this run 64" in proc.stdout + proc.stderr


def test_merged_adapter_equals_the_lora_checkpoint(runs, tmp_path):
    """base + adapter directory, merged at load, computes what the LoRA run's own checkpoint does."""
    from zer02llm.inference.loading import load_for_inference

    tokens = torch.randint(0, 6400, (2, 24), generator=torch.Generator().manual_seed(0))
    own = load_for_inference(str(runs["lora"]), "cpu")
    merged = load_for_inference(str(runs["pretrain"]), "cpu",
                                adapter=str(runs["lora"] / "checkpoints" / "last" / "adapter"))
    base = load_for_inference(str(runs["pretrain"]), "cpu")
    with torch.no_grad():
        own_logits, merged_logits = own.model(tokens).logits, merged.model(tokens).logits
        base_logits = base.model(tokens).logits
    torch.testing.assert_close(merged_logits, own_logits, rtol=1e-5, atol=1e-5)
    assert (own_logits - base_logits).abs().max() > 1e-3  # the adapters do change the model
    assert not [n for n, _ in own.model.named_parameters() if "lora" in n]  # merged: plain linear layers
    common = ["prompts=What is 2 plus 3?", "temperature=0", "max_new_tokens=8", "chat=true"]
    run_module("zer02llm.eval", [f"checkpoint={runs['pretrain']}", *common,
                                 f"adapter={runs['lora'] / 'checkpoints' / 'last' / 'adapter'}"], cwd=tmp_path)


def test_eval_non_interactive_writes_jsonl(runs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What colour is a frog?\n\n一加一等于几？\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    proc = run_module("zer02llm.eval", [f"checkpoint={runs['sft']}", f"prompts_file={prompts}", f"output={out}",
                                        "max_new_tokens=16", "seed=1"], cwd=tmp_path)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in records] == ["What colour is a frog?", "一加一等于几？"]
    assert all(r["mode"] == "chat" and 1 <= r["tokens"] <= 16 for r in records)  # sft checkpoint: chat by default
    assert ">>> 一加一等于几？" in proc.stdout and "\ufffd" not in proc.stdout.split(">>>")[0]
    piped = subprocess.run([sys.executable, "-m", "zer02llm.eval", f"checkpoint={runs['pretrain']}",
                            "max_new_tokens=5", "stream=false"], input="Once upon\n", capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
    assert piped.returncode == 0 and ">>> Once upon\nOnce upon" in piped.stdout  # pretrained: continuation


class Terminal(io.StringIO):
    """stdout stand-in that records each write."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_stream_false_prints_each_reply_once_and_history_is_kept(runs):
    out = Terminal()
    cfg = EvalConfig(checkpoint=str(runs["sft"]), prompts=["Hi", "And then?"], stream=False, max_new_tokens=6,
                     history_turns=1, temperature=0.0)
    records = eval_cli.run(cfg, stdin=io.StringIO(), stdout=out)
    replies = [w for w in out.writes if not w.startswith(">>>")]
    assert replies == [records[0]["response"] + "\n", records[1]["response"] + "\n"]

    session = eval_cli.Session(cfg, out.write)
    first = session.reply("Hi")
    with_history = session.prompt_ids("And then?")
    session.reset()
    without = session.prompt_ids("And then?")
    tokenizer = session.loaded.tokenizer
    assert len(with_history) > len(without)
    assert tokenizer.decode(with_history).count("<|im_start|>user") == 2
    assert first["response"] in tokenizer.decode(with_history)


def test_interactive_session_in_a_pseudo_terminal(runs, tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "zer02llm.eval", f"checkpoint={runs['sft']}", "max_new_tokens=6"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, close_fds=True)
    os.close(slave)
    screen = b""

    def read_until(marker: bytes, count: int = 1, timeout: float = 120) -> None:
        nonlocal screen
        deadline = time.time() + timeout
        while screen.count(marker) < count:
            assert time.time() < deadline, f"no {marker!r} in {screen.decode(errors='replace')!r}"
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(master, 4096)
                except OSError:
                    break

    try:
        read_until(b">>> ")
        os.write(master, "你好\n".encode())
        read_until(b">>> ", count=2)  # the reply streamed, then the next prompt
        os.write(master, b"/reset\n")
        read_until(b"(history cleared)")
        os.write(master, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(master)
    text = screen.decode(errors="replace")
    assert "chat with" in text and "/reset clears the history" in text


def test_sft_mode_composes_with_every_hardware_preset():
    for preset in ("cpu", "16gb", "24gb", "40gb"):
        cfg = compose(["mode=sft", f"hardware={preset}"])
        assert cfg.mode.name == "sft" and cfg.train.lr == 5e-5 and cfg.train.warmup_steps == 0


def test_lora_on_moe_shared_experts_and_attention():
    from zer02llm.config import MoEConfig

    model = Transformer(MoEConfig(vocab_size=64, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32))
    wrapped = apply_lora(model, 2, 4.0, targets=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
    assert any("shared_experts" in name for name in wrapped)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    out = model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))
    (out.loss + out.aux_loss).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_merge_script_exports_a_model_that_answers_like_the_lora_run(runs, tmp_path):
    from zer02llm.inference.loading import load_for_inference

    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "merge_lora.py"),
                           str(runs["lora"]), str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not [k for k in load_file(str(out / "model.safetensors")) if "lora" in k]
    tokens = torch.randint(0, 6400, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = load_for_inference(str(runs["lora"]), "cpu").model(tokens).logits
        got = load_for_inference(str(out), "cpu").model(tokens).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    again = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "merge_lora.py"),
                            str(runs["lora"]), str(out)], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "exists" in again.stderr


MERGE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "merge_lora.py"


@pytest.mark.slow
def test_an_sft_adapter_on_a_pretrained_base_chats_and_merges_as_sft(runs, tmp_path):
    from zer02llm.inference.loading import load_for_inference

    adapter = runs["lora"] / "checkpoints" / "last" / "adapter"
    assert json.loads((adapter / "adapter.json").read_text())["mode"] == "sft"
    assert load_for_inference(str(runs["pretrain"]), "cpu", adapter=str(adapter)).mode == "sft"
    assert eval_cli.Session(EvalConfig(checkpoint=str(runs["pretrain"]), adapter=str(adapter)), print).chat
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, str(MERGE_SCRIPT), str(runs["pretrain"]), str(out), "--adapter",
                           str(adapter)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["mode"] == "sft"
    # an adapter.json written before the mode was recorded: the base's mode decides, as before
    old = tmp_path / "old_adapter"
    shutil.copytree(adapter, old)
    meta = json.loads((old / "adapter.json").read_text())
    assert meta["seq_len"] == 32  # the length the adapter was tuned on bounds eval's history
    meta["seq_len"] = 24
    (old / "adapter.json").write_text(json.dumps(meta))
    assert load_for_inference(str(runs["pretrain"]), "cpu", adapter=str(old)).trained_seq_len == 24
    del meta["mode"], meta["seq_len"]
    (old / "adapter.json").write_text(json.dumps(meta))
    older = load_for_inference(str(runs["pretrain"]), "cpu", adapter=str(old))
    assert older.mode == "pretrain" and older.trained_seq_len == 32  # the base run's data.seq_len


@pytest.mark.slow
def test_history_is_trimmed_to_the_trained_length_and_says_so(runs, tmp_path):
    notes: list[str] = []
    cfg = EvalConfig(checkpoint=str(runs["sft"]), history_turns=4, max_new_tokens=3, stream=False)
    session = eval_cli.Session(cfg, lambda text: None, notes.append)
    assert session.context_len == 32 < session.loaded.model.cfg.max_seq_len  # data.seq_len of the run (TINY)
    exchange = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    session.history = exchange * 3
    assert len(session.prompt_ids("And 2 plus 2?")) < 32
    session.reply("And 2 plus 2?")
    assert "dropped the 3 oldest exchanges" in notes[0] and "32 tokens" in notes[0]
    assert [turn["content"] for turn in session.history[:1]] == ["And 2 plus 2?"]  # the dropped ones stay dropped
    # a checkpoint whose config.json lacks the run's config: the model's max_seq_len, as before
    bare = tmp_path / "bare"
    shutil.copytree(runs["sft"] / "checkpoints" / "last", bare)
    saved = json.loads((bare / "config.json").read_text())
    del saved["config"]
    (bare / "config.json").write_text(json.dumps(saved))
    session = eval_cli.Session(EvalConfig(checkpoint=str(bare)), lambda text: None)
    assert session.loaded.trained_seq_len is None and session.context_len == session.loaded.model.cfg.max_seq_len


def test_empty_input_is_an_error_not_a_silent_success(tmp_path):
    cfg = EvalConfig(checkpoint="unused")
    for text in ("", "\n  \n"):
        with pytest.raises(ConfigError, match="no prompt was read from standard input"):
            eval_cli.read_prompts(cfg, io.StringIO(text))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    with pytest.raises(ConfigError, match=f"prompts_file={blank}: no prompt in it"):
        eval_cli.read_prompts(EvalConfig(checkpoint="unused", prompts_file=str(blank)), io.StringIO("ignored\n"))


@pytest.mark.slow
def test_empty_standard_input_exits_2_with_a_message(runs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zer02llm.eval", f"checkpoint={runs['pretrain']}"], input="",
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "no prompt was read from standard input" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_jsonl_and_terminal_say_why_a_reply_ended(runs, tmp_path, monkeypatch):
    out, err = Terminal(), io.StringIO()
    cfg = EvalConfig(checkpoint=str(runs["pretrain"]), prompts=["Once upon"], max_new_tokens=2, seed=0,
                     output=str(tmp_path / "cut.jsonl"))
    sample = "zer02llm.inference.engine.sampler.Sampler.sample"  # eval decodes through the inference engine
    monkeypatch.setattr(sample, lambda self, logits, seqs: [[40, 41, 42][s.num_output] for s in seqs])
    [cut] = eval_cli.run(cfg, stdin=io.StringIO(), stdout=out, stderr=err)
    assert cut["finish_reason"] == "length" and cut["tokens"] == 2
    assert json.loads((tmp_path / "cut.jsonl").read_text())["finish_reason"] == "length"
    assert err.getvalue() == "[truncated at max_new_tokens=2]\n"
    eos = Tokenizer.load(runs["pretrain"] / "tokenizer").eos_id
    monkeypatch.setattr(sample, lambda self, logits, seqs: [[40, eos][s.num_output] for s in seqs])
    err = io.StringIO()
    [done] = eval_cli.run(cfg, stdin=io.StringIO(), stdout=out, stderr=err)
    assert done["finish_reason"] == "stop" and done["tokens"] == 2 and err.getvalue() == ""
