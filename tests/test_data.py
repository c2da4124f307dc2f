"""JSONL reading, the token cache, packed windows and the resumable sampler."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from zer02llm.data.jsonl import BadLines, DataError
from zer02llm.data.pretrain import PackedDataset, TokenFile, tokenize_to_cache
from zer02llm.data.sampler import BatchSampler
from zer02llm.tokenizer import Tokenizer

from conftest import write_jsonl

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
    with pytest.raises(DataError, match=r"skipped 2 malformed line\(s\): line 2: invalid JSON"):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", strict=True, progress=False)


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
