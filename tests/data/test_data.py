"""JSONL reading, the token cache, packed windows and the resumable sampler; the tests' own isolation."""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from zer02llm.config import ConfigError
from zer02llm.training.preflight import validate_run
from zer02llm.data.jsonl import BadLines, DataError
from zer02llm.data.pretrain import ByteProgress, PackedDataset, TokenFile, default_cache_dir, tokenize_to_cache
from zer02llm.data.sampler import BatchSampler
from zer02llm.tokenizer import Tokenizer

from conftest import REPO, TEST_HOME, TEST_ROOT, compose, write_jsonl

GOOD = ["The cat sat on the mat.", "小明在公园里看见了一只黄色的小狗。", "Numbers: 1 2 3, and 😀."]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


def expected_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    out: list[int] = []
    for text in texts:
        out += [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
    return out


def test_token_file_is_bos_text_eos_per_document(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "good.jsonl", [{"text": t} for t in GOOD])
    tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert tokens.num_documents == 3 and tokens.bad_lines == 0
    assert tokens.load().tolist() == expected_tokens(tokenizer, GOOD)
    assert tokens.load().dtype == np.uint16


def test_malformed_lines_are_skipped_counted_and_reported(tmp_path, tokenizer, caplog):
    path = tmp_path / "mixed.jsonl"
    lines = [
        '{"text": "The cat sat on the mat."}',  # 1 good
        '{"text": "broken',  # 2 bad JSON
        '{"content": "no text key"}',  # 3 missing text
        '{"text": 42}',  # 4 not a string
        '{"text": "   "}',  # 5 empty
        "",  # 6 blank: ignored, not counted
        '["a", "list"]',  # 7 not an object
        '{"text": "小明在公园里看见了一只黄色的小狗。"}',  # 8 good
    ]
    with open(path, "wb") as f:
        f.write("\n".join(lines).encode() + b"\n")
        f.write(b'{"text": "bad \xff\xfe bytes"}\n')  # 9 invalid UTF-8
        f.write('{"text": "Numbers: 1 2 3, and 😀."}\n'.encode())  # 10 good
    with caplog.at_level(logging.WARNING):
        tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert (tokens.num_documents, tokens.bad_lines) == (3, 6)
    assert tokens.load().tolist() == expected_tokens(tokenizer, GOOD)
    report = caplog.text
    assert "skipped 6 malformed line(s)" in report
    for line_no, reason in [(2, "invalid JSON"), (3, 'missing "text"'), (4, '"text" is a int'),
                            (5, 'empty "text"'), (7, "expected a JSON object")]:
        assert f"line {line_no}: {reason}" in report
    assert "(and 1 more)" in report  # lines 7 and 9 are past the first five


def test_strict_mode_fails_on_the_first_bad_line(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, "{oops", {"text": ""}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON .*data.strict=true"):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", strict=True, progress=False)
    # a cache built without strict mode does not let the bad lines through a strict run either
    assert tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False).bad_lines == 2
    with pytest.raises(DataError, match=r"bad.jsonl: has 2 malformed line\(s\): line 2: invalid JSON") as info:
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", strict=True, progress=False)
    assert "skipped 2" not in str(info.value)  # a strict run skipped nothing: it refused them


@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("", "is empty"),
                                              ('{"text": ""}\n{"x": 1}\n', "no usable document")])
def test_unusable_files_are_clear_errors(tmp_path, tokenizer, content, message):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.bin"))  # nothing half-written left as a cache


def test_second_run_reads_the_cache_and_a_changed_file_is_retokenized(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": t} for t in GOOD])
    first = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)

    def refuse(_texts):
        raise AssertionError("tokenized again although the cache holds this file")

    monkeypatch.setattr(tokenizer, "encode_batch", refuse)
    again = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert again.path == first.path and again.num_tokens == first.num_tokens
    monkeypatch.undo()

    write_jsonl(path, [{"text": "A different corpus."}])
    changed = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert changed.path != first.path
    assert changed.load().tolist() == expected_tokens(tokenizer, ["A different corpus."])
    assert not list((tmp_path / "cache").glob("*.tmp*"))  # temporary files renamed or removed


def test_packed_windows_are_consecutive_non_overlapping_and_shifted(tmp_path):
    tokens = np.arange(103, dtype=np.uint16)
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    data = PackedDataset(TokenFile(path, np.dtype(np.uint16), 103, 1, 0), seq_len=10)
    assert len(data) == 10  # (103 - 1) // 10
    inputs, targets = data.batch([0, 3, 9])
    assert inputs.dtype == torch.int64 and inputs.shape == (3, 10)
    assert inputs[1].tolist() == list(range(30, 40)) and targets[1].tolist() == list(range(31, 41))
    assert targets[2].tolist() == list(range(91, 101))


def test_corpus_shorter_than_one_window_is_an_error(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(5, dtype=np.uint16).tofile(path)
    with pytest.raises(DataError, match="fewer than data.seq_len"):
        PackedDataset(TokenFile(path, np.dtype(np.uint16), 5, 1, 0), seq_len=8)


def test_sampler_visits_each_sample_once_per_epoch_and_reshuffles():
    sampler = BatchSampler(num_samples=23, batch_size=4, seed=7)
    epoch0 = torch.cat([sampler.next_batch() for _ in range(5)])  # 5 full batches, 3 samples dropped
    epoch1 = torch.cat([sampler.next_batch() for _ in range(5)])
    assert len(set(epoch0.tolist())) == 20 and len(set(epoch1.tolist())) == 20
    assert sampler.epoch == 1 and epoch0.tolist() != epoch1.tolist()


def test_sampler_resumes_exactly_from_its_state():
    reference = BatchSampler(50, 3, seed=1)
    expected = [reference.next_batch().tolist() for _ in range(40)]  # crosses two epoch boundaries
    first = BatchSampler(50, 3, seed=1)
    got = [first.next_batch().tolist() for _ in range(21)]
    resumed = BatchSampler(50, 3, seed=1)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.next_batch().tolist() for _ in range(19)]
    assert got == expected


def test_ranks_take_disjoint_slices_of_the_global_batch():
    single = BatchSampler(40, 4, seed=3)
    ranks = [BatchSampler(40, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):
        parts = [s.next_batch().tolist() for s in ranks]
        assert not set(parts[0]) & set(parts[1])
        assert parts[0] + parts[1] == single.next_batch().tolist()


def test_resume_with_another_world_size_of_the_same_global_batch():
    single = BatchSampler(40, 4, seed=3)
    for _ in range(3):
        single.next_batch()
    two = BatchSampler(40, 2, seed=3, rank=1, world_size=2)
    two.load_state_dict(single.state_dict())
    assert two.next_batch().tolist() == single.next_batch().tolist()[2:]
    odd = BatchSampler(40, 5, seed=3)
    with pytest.raises(DataError, match="not a multiple of this run's global batch 5"):
        odd.load_state_dict(single.state_dict())
    with pytest.raises(DataError, match="is for 40 samples"):
        BatchSampler(41, 4, seed=3).load_state_dict(single.state_dict())


def test_too_few_samples_for_one_batch():
    with pytest.raises(DataError, match="fewer than one global batch"):
        BatchSampler(3, 4, seed=0)


def test_bad_lines_summary_names_lines_and_counts_the_rest():
    bad = BadLines()
    for n in range(1, 9):
        bad.add(n, "invalid JSON")
    assert bad.summary("f.jsonl") == ("f.jsonl: skipped 8 malformed line(s): " + "; ".join(
        f"line {n}: invalid JSON" for n in range(1, 6)) + " (and 3 more)")


def test_lone_surrogate_is_a_bad_line_not_a_crash(tmp_path, tokenizer):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "\\ud800 broken"}\n')
    tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert (tokens.num_documents, tokens.bad_lines) == (1, 1)


# --- inputs that are not a JSONL file --------------------------------------------------------------

def test_a_directory_given_as_one_file_names_the_keys_that_take_directories(tmp_path, tokenizer):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-0.jsonl", [{"text": t} for t in GOOD])
    with pytest.raises(DataError, match=r"shards is a directory: expected one data file here \(data.train_path"):
        tokenize_to_cache(shards, tokenizer, tmp_path / "cache", progress=False)
    for key in ("data.train_path", "data.val_path"):  # the config takes it (tests/test_sources.py reads it)
        validate_run(OmegaConf.to_object(compose([f"{key}={shards}"])))


JSONL = b'{"text": "The cat sat on the mat."}\n' * 200


@pytest.mark.parametrize("name, content, kind", [
    ("d.jsonl.bz2", bz2.compress(JSONL), "bzip2"),
    ("d.jsonl.xz", lzma.compress(JSONL), "xz"),
], ids=["bz2", "xz"])
def test_unreadable_compression_is_refused_up_front_with_the_command_to_decompress(tmp_path, tokenizer, name,
                                                                                  content, kind):
    path = tmp_path / name
    path.write_bytes(content)
    expected = (rf"is {kind}-compressed: readable inputs are JSONL, .jsonl.gz, .jsonl.zst and Parquet; decompress "
                rf"it first, e\.g\. {kind} -dc ")
    with pytest.raises(DataError, match=expected) as info:
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert "invalid UTF-8" not in str(info.value) and "\n" not in str(info.value)
    assert f"> {tmp_path / 'd.jsonl'}" in str(info.value)
    with pytest.raises(ConfigError, match=rf"data.train_path: {re.escape(str(path))} " + expected):
        validate_run(OmegaConf.to_object(compose([f"data.train_path={path}"])))


def test_gzip_input_is_read_by_its_magic_bytes_whatever_its_name(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_bytes(gzip.compress(JSONL))
    assert tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False).num_documents == 200


def test_a_compressed_name_over_neither_data_nor_json_is_refused(tmp_path, tokenizer):
    path = tmp_path / "d.zst"
    path.write_bytes(b"\x00\x01not json")
    with pytest.raises(DataError, match=r"d.zst is named .zst but holds neither zstd data nor JSON lines"):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)


def test_plain_jsonl_with_a_compressed_name_is_read(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "misnamed.jsonl.gz", [{"text": t} for t in GOOD])
    assert tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False).num_documents == 3


def test_sft_records_given_to_pretraining_suggest_mode_sft(tmp_path, tokenizer, caplog):
    conversation = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    path = write_jsonl(tmp_path / "sft.jsonl", [conversation] * 8)
    with pytest.raises(DataError) as info:
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    message = str(info.value)
    assert 'no usable document (expected lines like {"text": "..."})' in message
    assert message.count("mode=sft") == 1 and message.endswith(
        'Lines with "conversations" are SFT data: train on them with mode=sft')
    with pytest.raises(DataError, match=r"sft.jsonl:1: missing \"text\" .*data.strict=true.*with mode=sft"):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", strict=True, progress=False)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"text": GOOD[0]}, conversation])
    with caplog.at_level(logging.WARNING):
        tokenize_to_cache(mixed, tokenizer, tmp_path / "cache", progress=False)
    assert "line 2: missing \"text\"" in caplog.text and "with mode=sft" in caplog.text
    with caplog.at_level(logging.WARNING):  # the cache keeps the hint for the next run
        tokenize_to_cache(mixed, tokenizer, tmp_path / "cache", progress=False)
    assert caplog.text.count("with mode=sft") == 2


def test_a_short_corpus_is_named_by_its_data_file_not_its_cache(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "short.jsonl", [{"text": "Hi"}])
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'short.jsonl'))} holds \d+ tokens, fewer than"):
        PackedDataset(tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False), seq_len=64)


# --- the tokenizing progress -----------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tokenizing_progress_in_a_log_is_periodic_lines_not_bar_frames(tmp_path, tokenizer, capsys, caplog):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in GOOD * 50])
    tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=True)  # stderr is pytest's capture: no tty
    assert "\r" not in capsys.readouterr().err

    clock = iter(range(0, 1000, 3))  # 3 s per update of 1 MB: a line at every 10% once 5 s have passed
    with caplog.at_level(logging.INFO, logger="zer02llm.data.cache"):
        progress = ByteProgress(20_000_000, "big.jsonl", stream=io.StringIO(), clock=lambda: next(clock))
        for _ in range(20):
            progress.update(1_000_000)
        progress.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tokenizing big.jsonl")]
    assert lines[0] == "tokenizing big.jsonl: 2.0 of 20.0 MB (10%), 0.3 MB/s, ETA 00:54"
    assert [line.split("(")[1].split(")")[0] for line in lines] == [f"{p}%" for p in range(10, 101, 10)]


def test_tokenizing_progress_on_a_terminal_is_a_live_bar(caplog):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="zer02llm.data.cache"):
        progress = ByteProgress(1000, "d.jsonl", stream=terminal, min_gap=0)
        for _ in range(10):
            progress.update(100)
        progress.close()
    assert "tokenizing d.jsonl" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert not caplog.records
    quiet = Terminal()
    ByteProgress(1000, "d.jsonl", enabled=False, stream=quiet).update(1000)
    assert quiet.getvalue() == ""


# --- the tests write nothing outside their temporary directories -------------------------------------

PRINT_CACHE_DIR = "from zer02llm.data.pretrain import default_cache_dir; print(default_cache_dir())"


@pytest.fixture(scope="module")
def module_subprocess_cache_dir() -> Path:
    """Where a subprocess started by a module-scoped fixture (as the training fixtures do) caches tokens."""
    out = subprocess.run([sys.executable, "-c", PRINT_CACHE_DIR], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def test_module_fixtures_and_their_subprocesses_cache_under_the_test_root(module_subprocess_cache_dir):
    assert module_subprocess_cache_dir.is_relative_to(TEST_ROOT)
    assert default_cache_dir().is_relative_to(TEST_ROOT) and Path.home() == TEST_HOME


LEAKY_TEST = f'''
import subprocess, sys
import pytest

@pytest.fixture(scope="module")
def trained():
    # a fixture whose subprocess ignores the isolation and caches tokens under HOME
    code = ("import os; from pathlib import Path; os.environ.pop('XDG_CACHE_HOME'); "
            "from zer02llm.data.pretrain import default_cache_dir; d = default_cache_dir(); "
            "d.mkdir(parents=True); (d / 'pretrain-0123.bin').write_bytes(b'x')")
    subprocess.run([sys.executable, "-c", code], check=True)

def test_uses_it(trained):
    pass
'''


def test_a_write_into_home_fails_the_session(tmp_path):
    """The session check itself: a module fixture's subprocess that caches under HOME fails the run."""
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leak.py").write_text(LEAKY_TEST)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                           str(tmp_path / "basetemp"), "test_leak.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed, 1 error" in proc.stdout and "tests wrote into HOME" in proc.stdout, proc.stdout
    assert ".cache/zer02llm/pretrain-0123.bin" in proc.stdout
    assert not list(TEST_HOME.rglob("*"))  # the inner session had a HOME of its own
