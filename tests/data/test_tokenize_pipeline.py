"""The tokenizing pipeline: an interrupted tokenization resumes from its last chunk and ends equal to an
uninterrupted one (pretraining and SFT); a partial build that does not match its state starts afresh."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from zer02llm.data import sources
from zer02llm.data.pretrain import TextEncoder, tokenize_to_cache
from zer02llm.data.sft import ConversationEncoder, tokenize_sft_to_cache
from zer02llm.tokenizer import Tokenizer

TEXTS = [f"Document {i}: " + " ".join(f"word{(i * 7 + k) % 97}" for k in range(20 + i % 30)) for i in range(400)]


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


def interrupt_after(monkeypatch, cls, calls: int) -> list[int]:
    """Make cls.encode raise on call number `calls` + 1; returns the list of chunk sizes it encoded."""
    original, seen = cls.encode, []

    def encode(self, items):
        if len(seen) == calls:
            raise Interrupted
        seen.append(len(items))
        return original(self, items)

    monkeypatch.setattr(cls, "encode", encode)
    return seen


@pytest.mark.parametrize("compress", [False, True], ids=["jsonl", "gzip"])
def test_resumed_tokenization_equals_uninterrupted(tmp_path, tokenizer, monkeypatch, compress):
    monkeypatch.setattr(sources, "CHUNK_BYTES", 2000)  # many chunks from a small file
    raw = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS).encode()
    path = tmp_path / ("d.jsonl.gz" if compress else "d.jsonl")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    whole = tokenize_to_cache(path, tokenizer, tmp_path / "whole", progress=False).load().tolist()

    seen = interrupt_after(monkeypatch, TextEncoder, 5)
    with pytest.raises(Interrupted):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.part"))) == 2  # the tokens so far and their state
    assert not list((tmp_path / "cache").glob("*.bin"))  # nothing that looks complete
    monkeypatch.undo()
    monkeypatch.setattr(sources, "CHUNK_BYTES", 2000)
    again = interrupt_after(monkeypatch, TextEncoder, 10**9)
    tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert tokens.load().tolist() == whole and tokens.num_documents == len(TEXTS)
    # the chunks finished before the interruption were not encoded again
    assert sum(again) <= len(TEXTS) - sum(seen[:4])
    assert not list((tmp_path / "cache").glob("*.part"))


def test_a_partial_longer_in_its_state_than_on_disk_starts_afresh(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_BYTES", 2000)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    interrupt_after(monkeypatch, TextEncoder, 3)
    with pytest.raises(Interrupted):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    part = next(p for p in (tmp_path / "cache").glob("*.bin.part"))
    part.write_bytes(part.read_bytes()[:10])  # as after a crash before the OS wrote the file
    monkeypatch.undo()
    tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    expected = []
    for t in TEXTS:
        expected += [tokenizer.bos_id, *tokenizer.encode(t), tokenizer.eos_id]
    assert tokens.load().tolist() == expected


def test_resumed_sft_tokenization_equals_uninterrupted(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_BYTES", 1500)
    lines = [{"conversations": [{"role": "user", "content": f"Question {i}?"},
                                {"role": "assistant", "content": TEXTS[i]}]} for i in range(120)]
    lines.insert(30, {"conversations": []})  # a bad line before the interruption: counted once
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    whole = tokenize_sft_to_cache(path, tokenizer, tmp_path / "whole", progress=False)
    interrupt_after(monkeypatch, ConversationEncoder, 4)
    with pytest.raises(Interrupted):
        tokenize_sft_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(sources, "CHUNK_BYTES", 1500)
    resumed = tokenize_sft_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert (resumed.num_conversations, resumed.bad_lines) == (whole.num_conversations, whole.bad_lines) == (120, 1)
    for a, b in zip(whole.load(), resumed.load()):
        assert np.array_equal(a, b)


def test_processes_that_miss_the_cache_together_build_it_once(tmp_path, tokenizer, monkeypatch):
    """The ranks of a torchrun job (here: threads, each its own lock file handle) tokenizing one file into
    one cache at once: one builds the entry, the others wait and read it; every one gets the same tokens.
    (Without cache.entry_lock the builders share the .part files and crash.)"""
    import threading

    monkeypatch.setattr(sources, "CHUNK_BYTES", 2000)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 3))
    encoded, original = [], TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, items: encoded.append(len(items)) or original(self, items))
    results, errors = [None] * 4, []

    def rank(i: int) -> None:
        try:
            results[i] = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False).load().tolist()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    alone = tokenize_to_cache(path, tokenizer, tmp_path / "alone", progress=False).load().tolist()
    assert all(r == alone for r in results)
    assert sum(encoded) == 2 * len(TEXTS) * 3  # built once for the four, once alone
