"""Input forms (file, directory, glob, list; JSONL, gzip, zstd, Parquet) and each bad input's message."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from omegaconf import OmegaConf

from zer02llm.config import ConfigError, DataConfig
from zer02llm.training.preflight import validate_run
from zer02llm.data import sources
from zer02llm.data.inputs import pretrain_data, sft_data
from zer02llm.data.jsonl import DataError
from zer02llm.data.pretrain import tokenize_to_cache
from zer02llm.tokenizer import Tokenizer

from conftest import compose

TEXTS = [f"Document {i}: the cat sat on mat number {i}. 小狗{i}只。" * (1 + i % 3) for i in range(60)]
# ~1.3 MB that compresses poorly: a cut or a corrupt spot falls after many whole documents
_rng = np.random.default_rng(0)
BIG = [" ".join(f"w{n}" for n in _rng.integers(0, 10**6, 40)) for _ in range(4000)]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


def jsonl_bytes(texts, column="text") -> bytes:
    return "".join(json.dumps({column: t}, ensure_ascii=False) + "\n" for t in texts).encode()


def reference(tokenizer, texts) -> list[int]:
    """The naive token stream: bos + encode(text) + eos per document."""
    out = []
    for t in texts:
        out += [tokenizer.bos_id, *tokenizer.encode(t), tokenizer.eos_id]
    return out


def write(path: Path, texts, kind: str, column="text") -> Path:
    if kind == "jsonl":
        path.write_bytes(jsonl_bytes(texts, column))
    elif kind == "gzip":
        path.write_bytes(gzip.compress(jsonl_bytes(texts, column)))
    elif kind == "zstd":
        path.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(texts, column)))
    else:
        pq.write_table(pa.table({column: texts, "id": list(range(len(texts)))}), path, row_group_size=7)
    return path


SUFFIX = {"jsonl": ".jsonl", "gzip": ".jsonl.gz", "zstd": ".jsonl.zst", "parquet": ".parquet"}


@pytest.mark.parametrize("kind", list(SUFFIX))
def test_each_format_tokenizes_to_the_naive_stream(tmp_path, tokenizer, kind):
    path = write(tmp_path / f"d{SUFFIX[kind]}", TEXTS, kind)
    tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert tokens.load().tolist() == reference(tokenizer, TEXTS)


def test_small_chunks_and_parquet_batches_change_nothing(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_BYTES", 300)
    monkeypatch.setattr(sources, "PARQUET_BATCH", 3)
    for kind in SUFFIX:
        path = write(tmp_path / f"d{SUFFIX[kind]}", TEXTS, kind)
        assert tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False).load().tolist() == \
            reference(tokenizer, TEXTS)


def test_text_column_for_jsonl_and_parquet(tmp_path, tokenizer):
    for kind in ("jsonl", "parquet"):
        path = write(tmp_path / f"d{SUFFIX[kind]}", TEXTS[:5], kind, column="content")
        tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False, text_column="content")
        assert tokens.load().tolist() == reference(tokenizer, TEXTS[:5])


def test_parquet_without_the_text_column_names_file_column_and_key(tmp_path, tokenizer):
    path = write(tmp_path / "d.parquet", TEXTS[:5], "parquet", column="body")
    with pytest.raises(DataError, match=r"d.parquet has no column 'text' \(data.text_column\): its columns are "
                                        r"body, id; set data.text_column"):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)


def test_directory_glob_and_list_expand_to_sorted_files(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    names = ["b.parquet", "a.jsonl", "c.jsonl.zst", "d.jsonl.gz"]
    for name in names + ["notes.txt"]:
        (d / name).write_bytes(b"x")
    (d / "sub").mkdir()
    assert sources.expand(str(d), "k") == [str(d / n) for n in sorted(names)]
    assert sources.expand(str(d / "*.jsonl*"), "k") == [str(d / n) for n in ("a.jsonl", "c.jsonl.zst", "d.jsonl.gz")]
    assert sources.expand([str(d / "d.jsonl.gz"), str(d), str(d / "a.jsonl")], "k") == \
        [str(d / "d.jsonl.gz")] + [str(d / n) for n in sorted(names) if n != "d.jsonl.gz"]


@pytest.mark.parametrize("make, pattern", [
    (lambda t: (t / "empty").mkdir() or str(t / "empty"),
     r"data.train_path=.*empty: the directory has no \*.jsonl, \*.jsonl.gz, \*.jsonl.zst, \*.parquet file \(it is empty\)"),
    (lambda t: str(t / "nothing-*.jsonl"), r"data.train_path=.*nothing-\*.jsonl: the glob matches no file"),
    (lambda t: str(t / "missing.jsonl"), r"data.train_path=.*missing.jsonl: no such file or directory"),
    (lambda t: [], r"data.train_path is an empty list"),
], ids=["empty-dir", "glob", "missing", "empty-list"])
def test_bad_input_forms_are_config_errors_naming_key_and_path(tmp_path, make, pattern):
    cfg = OmegaConf.to_object(compose([]))
    cfg.data.train_path = make(tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        validate_run(cfg)


def test_a_directory_of_other_files_names_what_it_holds(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"the directory has no .* file \(it holds: readme.txt\)"):
        sources.expand(str(tmp_path), "data.val_path")


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_truncated_stream_uses_the_good_part_and_reports_the_damage(tmp_path, tokenizer, kind, caplog):
    full = write(tmp_path / f"full{SUFFIX[kind]}", BIG, kind).read_bytes()
    path = tmp_path / f"cut{SUFFIX[kind]}"
    path.write_bytes(full[:len(full) // 2])
    tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    # a prefix of the documents, each whole: the line cut by the damage is dropped
    assert len(BIG) // 4 < tokens.num_documents < len(BIG)
    assert tokens.load().tolist() == reference(tokenizer, BIG[:tokens.num_documents])
    assert re.search(rf"cut{re.escape(SUFFIX[kind])}: the {kind} stream ends early \(truncated file\), at byte "
                     rf"\d+ of the file \(\d+ bytes of text, after line \d+\)", caplog.text)
    with pytest.raises(DataError, match=r"truncated file.*data.strict=true"):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache2", strict=True, progress=False)
    with pytest.raises(DataError, match=r"truncated file.*data.strict=true"):  # also from the cache
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", strict=True, progress=False)


def test_corrupt_gzip_is_damage_not_a_crash(tmp_path, tokenizer):
    data = bytearray(gzip.compress(jsonl_bytes(BIG)))
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(data))
    tokens = tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)
    assert len(BIG) // 4 < tokens.num_documents < len(BIG)
    assert tokens.load()[:1000].tolist() == reference(tokenizer, BIG)[:1000]


@pytest.mark.parametrize("kind, module", [("zstd", "zstandard"), ("parquet", "pyarrow.parquet")])
def test_a_missing_optional_package_names_the_extra(tmp_path, tokenizer, monkeypatch, kind, module):
    path = write(tmp_path / f"d{SUFFIX[kind]}", TEXTS[:3], kind)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    extra = rf'needs the {module.split(".")[0]} package: pip install "zer02llm\[data\]"'
    assert re.search(extra, sources.file_problems("data.train_path", str(path))[0])
    with pytest.raises(DataError, match=extra):
        tokenize_to_cache(path, tokenizer, tmp_path / "cache", progress=False)


def _data(tmp_path, **kw) -> DataConfig:
    return DataConfig(seq_len=16, cache_dir=str(tmp_path / "cache"), **kw)


def test_pretrain_data_over_a_directory_of_every_format(tmp_path, tokenizer):
    d = tmp_path / "corpus"
    d.mkdir()
    for i, kind in enumerate(SUFFIX):
        write(d / f"part-{i}{SUFFIX[kind]}", TEXTS[i * 15:(i + 1) * 15], kind)
    val = write(tmp_path / "val.jsonl", TEXTS[:10], "jsonl")
    train, vals = pretrain_data(_data(tmp_path, train_path=str(d), val_path=str(val)), tokenizer, seed=0)
    # each file's windows in file order: the concatenation of the per-file naive windows
    expected = []
    for i in range(4):
        stream = reference(tokenizer, TEXTS[i * 15:(i + 1) * 15])
        expected += [stream[k * 16:k * 16 + 17] for k in range((len(stream) - 1) // 16)]
    inputs, targets = train.batch(list(range(len(train))))
    assert len(train) == len(expected)
    assert np.array_equal(np.concatenate([inputs.numpy(), targets[:, -1:].numpy()], 1), np.array(expected))
    assert list(vals) == ["val"] and len(vals["val"]) > 0


def test_sample_corpus_default_and_val_auto(tmp_path, tokenizer):
    train, vals = pretrain_data(_data(tmp_path), tokenizer, seed=0)
    assert len(train) > 0 and list(vals) == ["val"]
    own = write(tmp_path / "own.jsonl", TEXTS, "jsonl")
    _, vals = pretrain_data(_data(tmp_path, train_path=str(own)), tokenizer, seed=0)
    assert vals == {}  # "auto" validates only the sample corpus


def test_sft_data_takes_a_glob_of_compressed_and_plain_files(tmp_path, tokenizer):
    record = {"conversations": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]}
    line = (json.dumps(record) + "\n").encode()
    (tmp_path / "sft-0.jsonl").write_bytes(line * 5)
    (tmp_path / "sft-1.jsonl.gz").write_bytes(gzip.compress(line * 7))
    train, vals = sft_data(_data(tmp_path, train_path=str(tmp_path / "sft-*"), val_path=None), tokenizer, seed=0)
    assert len(train) == 12 and vals == {}
    inputs, targets = train.batch([0, 11])
    assert torch_equal(inputs[0], inputs[1]) and torch_equal(targets[0], targets[1])


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
