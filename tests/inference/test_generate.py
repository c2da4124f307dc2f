"""`python -m zer02llm.generate`: loads a checkpoint, streams text, never splits a UTF-8 character."""

from __future__ import annotations

import re

import pytest
import torch

from zer02llm import generate as generate_cli
from zer02llm.inference import sampling
from zer02llm.config import ConfigError, GenerateConfig, ModelConfig
from zer02llm.model import Transformer
from zer02llm.tokenizer import Tokenizer

from conftest import REPO, TINY, run_module

CHINESE = "小明在公园里看见了一只黄色的小狗，🐶很高兴！"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    work = tmp_path_factory.mktemp("gen")
    run_module("zer02llm.train", [*TINY, "train.max_steps=30", "hydra.run.dir=run"], cwd=work)
    return work / "run" / "checkpoints" / "last"


class RecordingStdout:
    """Stands in for sys.stdout and keeps every write separately."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_cli_streams_a_continuation_of_at_most_max_new_tokens(checkpoint, tmp_path):
    proc = run_module("zer02llm.generate", [f"checkpoint={checkpoint}", "prompt=星期三，天气很好", "max_new_tokens=12",
                                            "seed=3"], cwd=tmp_path)
    assert proc.stdout.startswith("星期三，天气很好")
    count = int(re.search(r"\[(\d+) tokens in", proc.stderr).group(1))
    assert 1 <= count <= 12
    again = run_module("zer02llm.generate", [f"checkpoint={checkpoint.parent.parent}", "prompt=星期三，天气很好",
                                             "max_new_tokens=12", "seed=3"], cwd=tmp_path)
    assert again.stdout == proc.stdout  # a run directory works too, and the seed makes it repeatable


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    proc = run_module("zer02llm.generate", ["prompt=hi"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "checkpoint=<dir> is required" in proc.stderr
    proc = run_module("zer02llm.generate", [f"checkpoint={tmp_path}", "prompt=hi"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no checkpoint at" in proc.stderr and "Traceback" not in proc.stderr


def test_streamed_pieces_are_valid_utf8_for_chinese_and_emoji(checkpoint, monkeypatch):
    """Script the generated ids (those of CHINESE) and check every write the terminal receives."""
    tokenizer = Tokenizer.load(checkpoint / "tokenizer")
    ids = tokenizer.encode(CHINESE)
    split = [i for i in ids if not _is_valid_utf8(tokenizer.token_bytes(i))]
    assert split, "the test text must contain tokens that cut a character in two"

    # the engine's sampler picks the scripted ids (generate decodes through the inference engine)
    monkeypatch.setattr("zer02llm.inference.engine.sampler.Sampler.sample",
                        lambda self, logits, seqs: [ids[s.num_output] for s in seqs])
    out = RecordingStdout()
    monkeypatch.setattr("sys.stdout", out)
    text = generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), prompt="题目：", max_new_tokens=len(ids)))
    assert text == CHINESE
    assert all("\ufffd" not in piece for piece in out.writes)
    assert "".join(out.writes) == "题目：" + CHINESE + "\n"
    assert len([w for w in out.writes if w]) > 3  # it streamed, piece by piece


def test_non_streaming_prints_the_whole_text_once(checkpoint, monkeypatch):
    out = RecordingStdout()
    monkeypatch.setattr("sys.stdout", out)
    text = generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), prompt="Once", max_new_tokens=5,
                                           stream=False, seed=0))
    assert out.writes == ["Once" + text + "\n"]


def test_bad_generation_settings(checkpoint):
    with pytest.raises(ConfigError, match="max_new_tokens=0"):
        generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), max_new_tokens=0))
    with pytest.raises(ValueError, match="top_p=1.5"):
        generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), top_p=1.5))
    with pytest.raises(ConfigError, match="threads=-1"):
        generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), threads=-1))


def test_generation_sets_the_cpu_threads_it_is_given(checkpoint, monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr("sys.stdout", RecordingStdout())
    try:
        torch.set_num_threads(2)
        generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), prompt="a", max_new_tokens=2))
        assert torch.get_num_threads() == 1  # the default: fast when other processes share the cores
        torch.set_num_threads(2)
        generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), prompt="a", max_new_tokens=2, threads=None))
        assert torch.get_num_threads() == 2  # null leaves whatever torch has
    finally:
        torch.set_num_threads(before)


def _is_valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_reply_says_why_it_ended_as_openai_names_it():
    """finish_reason "length" when cut at max_new_tokens or the model's max_seq_len, "stop" at the stop token."""
    from zer02llm.inference.loading import Loaded, check_sampling, stream_reply, truncation_note

    torch.manual_seed(0)
    tokenizer = Tokenizer.load(REPO / "tokenizer")
    model = Transformer(ModelConfig(vocab_size=6400, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16))
    loaded = Loaded(model.eval(), tokenizer, REPO, "pretrain")
    options = GenerateConfig(checkpoint="unused", max_new_tokens=3, temperature=0.0)
    params = check_sampling(options)
    never = -1  # a stop id no sampling produces

    cut = stream_reply(loaded, [tokenizer.bos_id], options, params, stop_id=never)
    assert (cut.finish_reason, cut.num_tokens) == ("length", 3)
    assert truncation_note(cut, options, loaded) == "[truncated at max_new_tokens=3]"
    full = stream_reply(loaded, [tokenizer.bos_id] * 14, options, params, stop_id=never)
    assert (full.finish_reason, full.num_tokens) == ("length", 2)
    assert truncation_note(full, options, loaded) == "[truncated at model.max_seq_len=16]"
    first = next(sampling.generate(model, [tokenizer.bos_id], 1, params))  # greedy: the same token again
    done = stream_reply(loaded, [tokenizer.bos_id], options, params, stop_id=first)
    assert (done.finish_reason, done.num_tokens) == ("stop", 1) and truncation_note(done, options, loaded) is None


def test_a_prompt_longer_than_the_trained_length_is_warned_about_as_eval_does(checkpoint, monkeypatch, capsys):
    """The checkpoint was trained on data.seq_len=32 (model.max_seq_len allows more): generate says so, in
    the words eval uses, and not for a prompt that fits."""
    from zer02llm.eval import Session
    from zer02llm.config import EvalConfig

    long_prompt = " ".join(["Once upon a time there was a little dog"] * 6)
    n_tokens = 1 + len(Tokenizer.load(checkpoint / "tokenizer").encode(long_prompt))
    assert n_tokens > 32
    expected = f"[the prompt has {n_tokens} tokens, the model was trained on 32: expect a poor reply]"
    generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), prompt=long_prompt, max_new_tokens=2, stream=False))
    assert expected in capsys.readouterr().err.splitlines()
    generate_cli.run(GenerateConfig(checkpoint=str(checkpoint), prompt="Once", max_new_tokens=2, stream=False))
    assert "trained on" not in capsys.readouterr().err

    notes: list[str] = []
    session = Session(EvalConfig(checkpoint=str(checkpoint), chat=False, max_new_tokens=2, stream=False),
                      write=lambda text: None, note=notes.append)
    session.reply(long_prompt)
    assert expected in notes
