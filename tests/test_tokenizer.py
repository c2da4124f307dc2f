"""Tests of the byte-level BPE tokenizer (zer02llm.tokenizer) and scripts/train_tokenizer.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zer02llm.cli import run_reporting_errors
from zer02llm.config import ConfigError
from zer02llm.resources import shipped_path
from zer02llm.tokenizer import StreamDecoder, Tokenizer, TokenizerError, bytes_to_unicode

from conftest import TINY, run_module

REPO_DIR = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_DIR / "scripts" / "train_tokenizer.py"

ENGLISH = "It is a truth universally acknowledged, that a single man in possession of a good fortune."
CHINESE = "上海有线02足球俱乐部是一支已经不存在的足球俱乐部，位于上海。"
EMOJI = "👍🏽 🚀✨ 🇨🇳 👨‍👩‍👧 🙂"
MIXED = "Hello, 世界! naïve café — 你好😀\n\tcode: `x = 1`  trailing  "
# Rare characters (emoji, CJK extension B, Devanagari) are split into single bytes by a 6400 vocab.
STREAM_TEXT = "你好，世界！今天天气很好😀🎉。𠀋𠀍 नमस्ते ça va? 中文和emoji混合🚀"
SAMPLES = [ENGLISH, CHINESE, EMOJI, MIXED, STREAM_TEXT, "", " ", "a"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.load()


def _is_valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_bytes_to_unicode_matches_library_alphabet():
    from tokenizers.pre_tokenizers import ByteLevel

    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert sorted(table.values()) == sorted(ByteLevel.alphabet())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def test_shipped_tokenizer_basics(tok: Tokenizer):
    assert tok.path == shipped_path("tokenizer")
    assert tok.vocab_size == 6400 == len(tok)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.id_to_token(0) == "<|endoftext|>"
    assert tok.id_to_token(1) == "<|im_start|>"
    assert tok.id_to_token(2) == "<|im_end|>"
    assert tok.special_ids == frozenset({0, 1, 2})
    raw = (tok.path / "tokenizer.json").read_bytes()
    import hashlib

    assert tok.fingerprint == hashlib.sha256(raw).hexdigest()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert max(tok.encode(MIXED + STREAM_TEXT)) < tok.vocab_size


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok: Tokenizer, text: str):
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text


def test_encode_adds_no_special_tokens(tok: Tokenizer):
    ids = tok.encode(ENGLISH)
    assert not set(ids) & {0, 1, 2}
    # English compresses: far fewer tokens than bytes.
    assert len(ids) < len(ENGLISH.encode("utf-8")) / 2


def test_encode_batch_matches_encode(tok: Tokenizer):
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]


def test_decode_special_tokens(tok: Tokenizer):
    ids = [tok.bos_id] + tok.encode("user\nhi") + [tok.eos_id]
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.decode(ids, skip_special=True) == "user\nhi"


@pytest.mark.parametrize("text", [CHINESE, EMOJI, MIXED, STREAM_TEXT])
def test_token_bytes_concatenate_to_utf8(tok: Tokenizer, text: str):
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_token_bytes_specials_and_range(tok: Tokenizer):
    assert tok.token_bytes(0) == b"<|endoftext|>"
    assert tok.token_bytes(2) == b"<|im_end|>"
    # Every single byte value is reachable as a token (initial alphabet).
    singles = {tok.token_bytes(i) for i in range(tok.vocab_size)}
    assert all(bytes([b]) in singles for b in range(256))
    with pytest.raises(IndexError):
        tok.token_bytes(tok.vocab_size)
    with pytest.raises(IndexError):
        tok.token_bytes(-1)


def test_stream_decoder_never_splits_characters(tok: Tokenizer):
    ids = tok.encode(STREAM_TEXT)
    # The test must really cover tokens that are partial UTF-8 sequences.
    partial = [i for i in ids if not _is_valid_utf8(tok.token_bytes(i))]
    assert partial, "test string has no token splitting a UTF-8 character"

    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    assert "".join(pieces) == STREAM_TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # some pushes had to wait for the rest of a character
    # Naive per-token decoding would produce replacement characters.
    assert any("\ufffd" in tok.decode([i]) for i in partial)


def test_stream_decoder_specials_and_flush(tok: Tokenizer):
    ids = [tok.bos_id] + tok.encode("你好") + [tok.eos_id]
    dec = StreamDecoder(tok)
    assert "".join(dec.push(i) for i in ids) + dec.flush() == "你好"
    dec = StreamDecoder(tok, skip_special=False)
    assert "".join(dec.push(i) for i in ids) + dec.flush() == "<|im_start|>你好<|im_end|>"

    # An incomplete character left at the end comes out as U+FFFD on flush.
    emoji_ids = tok.encode("😀")
    assert len(emoji_ids) > 1
    dec = StreamDecoder(tok)
    assert dec.push(emoji_ids[0]) == ""
    assert dec.flush() == "\ufffd"
    assert dec.flush() == ""


def test_load_missing_directory(tmp_path: Path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        Tokenizer.load(missing)


def test_load_directory_without_tokenizer_json(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json") as info:
        Tokenizer.load(tmp_path)
    assert str(tmp_path) in str(info.value)


def copy_of_shipped(directory: Path, config: bool = True) -> Path:
    """A copy of the shipped tokenizer in `directory`, with or without its tokenizer_config.json."""
    directory.mkdir(parents=True)
    shutil.copy(shipped_path("tokenizer") / "tokenizer.json", directory)
    if config:
        shutil.copy(shipped_path("tokenizer") / "tokenizer_config.json", directory)
    return directory


def transformers5_layout(directory: Path) -> tuple[Path, str]:
    """The shipped tokenizer as transformers 5 saves it: the chat template in chat_template.jinja, not in
    tokenizer_config.json."""
    copy_of_shipped(directory)
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.pop("chat_template")
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    return directory, template


def test_the_chat_template_is_read_from_chat_template_jinja_too(tmp_path):
    from zer02llm.data.sft import ChatTemplate

    directory, template = transformers5_layout(tmp_path / "tok")
    tok = Tokenizer.load(directory)
    assert tok.chat_template == template
    shipped = Tokenizer.load()
    messages = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    assert ChatTemplate(tok).encode(messages) == ChatTemplate(shipped).encode(messages)
    # where both hold one, the file wins, as in transformers
    (directory / "chat_template.jinja").write_text("{{ 'file' }}", encoding="utf-8")
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    assert Tokenizer.load(directory).chat_template == "{{ 'file' }}"


def test_a_checkpoint_keeps_a_chat_template_jinja(tmp_path):
    import dataclasses

    from zer02llm import checkpoint as ckpt
    from zer02llm.config import ModelConfig
    from zer02llm.model import Transformer

    directory, template = transformers5_layout(tmp_path / "tok")
    model_cfg = ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32)
    saved = ckpt.save_checkpoint(tmp_path / "checkpoints", 1, Transformer(model_cfg), {"step": 1},
                                 {"model": dataclasses.asdict(model_cfg)}, directory, keep=1)
    assert Tokenizer.load(saved / "tokenizer").chat_template == template


@pytest.mark.parametrize("name, content, message", [
    ("tokenizer.json", "{1: 2}", r"tokenizer.json: the tokenizer file is not valid JSON \(Expecting property name "
                                 r"enclosed in double quotes at line 1 column 2\)"),
    ("tokenizer.json", '{"vocab": {"a": 0}}', r"tokenizer.json is JSON but not a Hugging Face `tokenizers` file"),
    ("tokenizer.json", "[1, 2]", r"tokenizer.json: expected a JSON object \(a `tokenizers` file\), got list"),
    ("tokenizer.json", b"\x89PNG\r\n", r"tokenizer.json: the tokenizer file is not UTF-8 text"),
    ("tokenizer_config.json", '{"chat_template": "x",}', r"tokenizer_config.json: the tokenizer config is not valid "
                                                         r"JSON \(Expecting property name .* line 1 column 23\)"),
    ("tokenizer_config.json", '"ChatML"', r"tokenizer_config.json: expected a JSON object, got str"),
])
def test_unusable_tokenizer_files_are_named_with_what_is_wrong(tmp_path: Path, name, content, message):
    directory = copy_of_shipped(tmp_path / "tok")
    target = directory / name
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TokenizerError, match=message) as info:
        Tokenizer.load(directory)
    assert str(directory / name) in str(info.value)
    assert isinstance(info.value, ConfigError)  # one line and exit status 2 in train, generate and eval


def test_unreadable_tokenizer_file(tmp_path: Path, monkeypatch):
    directory = copy_of_shipped(tmp_path / "tok")
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "tokenizer.json":
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)  # tests run as root, so chmod cannot refuse a read
    with pytest.raises(TokenizerError, match=r"tokenizer.json: cannot read the tokenizer file \(Permission denied\)"):
        Tokenizer.load(directory)


def test_special_tokens_not_found_say_whether_there_is_a_config(tmp_path: Path):
    directory = copy_of_shipped(tmp_path / "tok", config=False)
    raw = json.loads((directory / "tokenizer.json").read_text())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|im_start|>"]
    raw["model"]["vocab"].pop("<|im_start|>", None)
    (directory / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(TokenizerError, match=r"no bos_token found .*there is no .*tokenizer_config.json to name it"):
        Tokenizer.load(directory)


def test_generate_and_eval_report_a_bad_tokenizer_in_one_line(tmp_path: Path, capsys):
    directory = copy_of_shipped(tmp_path / "tok")
    (directory / "tokenizer.json").write_text("{1: 2}")
    with pytest.raises(SystemExit) as info:
        run_reporting_errors(Tokenizer.load, directory)  # what generate/eval wrap their command in
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {directory / 'tokenizer.json'}: the tokenizer file is not valid JSON")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_training_reports_a_bad_tokenizer_in_one_line(tmp_path: Path):
    broken = copy_of_shipped(tmp_path / "tok")
    (broken / "tokenizer.json").write_text("{1: 2}")
    proc = run_module("zer02llm.train", [*TINY, "train.max_steps=1", f"tokenizer.path={broken}",
                                         "hydra.run.dir=broken"], cwd=tmp_path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert f"{broken / 'tokenizer.json'}: the tokenizer file is not valid JSON" in output

    no_config = copy_of_shipped(tmp_path / "no-config", config=False)  # loads: ChatML names are the defaults
    proc = run_module("zer02llm.train", [*TINY, "train.max_steps=1", "mode=sft", f"tokenizer.path={no_config}",
                                         "hydra.run.dir=sft"], cwd=tmp_path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert f"tokenizer at {no_config} has no chat template" in output


def test_matches_transformers(tok: Tokenizer):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok.path / "tokenizer.json"))
    for text in SAMPLES:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert hf.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_transformers_chat_template(tok: Tokenizer):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tok.path))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    messages = [
        {"role": "user", "content": "你好，介绍一下你自己。"},
        {"role": "assistant", "content": "I am a small model."},
    ]
    expected = (
        "<|im_start|>user\n你好，介绍一下你自己。<|im_end|>\n"
        "<|im_start|>assistant\nI am a small model.<|im_end|>\n"
    )
    assert hf.apply_chat_template(messages, tokenize=False) == expected
    prompt = hf.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n你好，介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n"
    # The ChatML string tokenizes with the special ids where the markers are.
    ids = tok.encode(expected)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 2 and ids.count(tok.eos_id) == 2


def test_train_script_tiny_corpus(tmp_path: Path):
    pretrain = tmp_path / "pretrain.jsonl"
    sft = tmp_path / "sft.jsonl"
    docs = [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。",
        "Tokenizers split text into tokens; tokens map to ids. 😀",
    ]
    pretrain.write_text(
        "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )
    conv = {
        "conversations": [
            {"role": "user", "content": "你好，请问今天天气怎么样？"},
            {"role": "assistant", "content": "今天天气很好，适合出门散步。"},
        ]
    }
    sft.write_text(json.dumps(conv, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), str(pretrain), str(sft), "--vocab-size", "300",
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "vocab size: 300" in result.stdout
    assert "4 docs" in result.stdout
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (out / name).is_file(), name

    small = Tokenizer.load(out)
    assert small.vocab_size == 300
    assert (small.pad_id, small.bos_id, small.eos_id) == (0, 1, 2)
    text = "The fox says 你好 😀"
    assert small.decode(small.encode(text)) == text
    assert len(json.loads((out / "vocab.json").read_text(encoding="utf-8"))) == 300
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["bos_token"] == "<|im_start|>" and config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == config["unk_token"] == "<|endoftext|>"
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert config["model_max_length"] == 32768
    assert set(config["added_tokens_decoder"]) == {"0", "1", "2"}
    assert small.chat_template == config["chat_template"]
