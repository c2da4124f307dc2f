"""Where documents come from: a path, directory, glob or list of them expanded to files, and each
file read as records in chunks, whatever its format (JSONL, .jsonl.gz, .jsonl.zst, Parquet).

Everything above this module (caching, packing, mixtures) sees only chunks of parsed records and a
`Position` to resume from. Reading is bounded in memory: compressed streams are decompressed a block at
a time, Parquet is read one row group (in batches) at a time and only the needed column. A truncated or
corrupt compressed stream is not fatal (unless strict): the records before the damage are used and the
damage is counted and reported with the file and offset. Only the standard library is imported at
module level (config validation imports this); pyarrow and zstandard are imported when a file needs them.
"""

from __future__ import annotations

import glob
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, TypeVar

from zer02llm.data.jsonl import BadLine, BadLines, DataError, check_readable, unsupported_input

T = TypeVar("T")

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")  # the files a directory contributes
BLOCK = 1 << 20  # bytes read (or decompressed) at a time
FEED = 1 << 16  # compressed bytes given to a decompressor at once: what a corrupt spot can cost besides itself
CHUNK_BYTES = 2 << 20  # input bytes per chunk: the unit of pipelining and of resuming
PARQUET_BATCH = 4096  # rows read from Parquet at a time
INSTALL = 'pip install "zer02llm[data]"'


@dataclass(frozen=True)
class Position:
    """How far into a file reading got: `offset` bytes of its (decompressed) JSONL text and `record`
    lines, or for Parquet `record` rows. Reading can restart there."""

    offset: int = 0
    record: int = 0


@dataclass
class Chunk:
    items: list  # parse(record) for each good record; (record number, item) pairs when numbered
    end: Position  # where the next chunk starts
    file_bytes: int  # bytes of the file itself consumed so far (compressed), for progress bars
    bad: BadLines  # the malformed records (and a damaged stream) of this chunk


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand(value: Any, key: str) -> list[str]:
    """The files `value` names: a file, a directory (its *.jsonl, *.jsonl.gz, *.jsonl.zst and *.parquet
    files, sorted), a glob (sorted), or a list of any of these. Errors name `key`."""
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value or [])
    if not items:
        raise DataError(f"{key} is an empty list: name at least one file, directory or glob")
    files: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
            if not found:
                others = sorted(p.name for p in Path(item).iterdir())[:5]
                held = f" (it holds: {', '.join(others)})" if others else " (it is empty)"
                raise DataError(f"{key}={item}: the directory has no {', '.join('*' + s for s in SUFFIXES)} "
                                f"file{held}")
        elif _is_glob(item) and not os.path.exists(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise DataError(f"{key}={item}: the glob matches no file (relative paths start from {os.getcwd()})")
        elif not os.path.exists(item):
            raise DataError(f"{key}={item}: no such file or directory (relative paths start from {os.getcwd()})")
        else:
            found = [item]
        files += [f for f in found if f not in files]
    return files


def file_kind(path: str | os.PathLike) -> str:
    """"jsonl", "gzip", "zstd" or "parquet", from the magic bytes (a misnamed plain JSONL file is JSONL);
    DataError for formats we cannot read (bzip2, xz, not a regular file)."""
    problem = unsupported_input(path)
    if problem:
        raise DataError(f"{path} {problem}")
    if not os.path.isfile(path):
        raise DataError(f"{path} is not a regular file: expected JSONL, .jsonl.gz, .jsonl.zst or Parquet")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head == b"PAR1" or str(path).endswith(".parquet"):
        return "parquet"
    return "jsonl"


def require(kind: str, path: str | os.PathLike) -> Any:
    """The optional module that reads `kind` (zstandard, pyarrow.parquet), or a DataError naming the extra."""
    name = {"zstd": "zstandard", "parquet": "pyarrow.parquet"}[kind]
    try:
        import importlib

        return importlib.import_module(name)
    except ImportError:
        raise DataError(f"{path} is {'zstd-compressed' if kind == 'zstd' else 'a Parquet file'}: reading it needs "
                        f"the {name.split('.')[0]} package: {INSTALL}") from None


def file_problems(key: str, value: Any) -> list[str]:
    """Problems of the inputs `value` names (`key`: the config key), checked before any heavy work."""
    try:
        files = expand(value, key)
    except DataError as e:
        return [str(e)]
    problems = []
    for path in files:
        try:
            kind = file_kind(path)
            if os.path.getsize(path) == 0:
                problems.append(f"{key}: {path} is empty")
            elif kind in ("zstd", "parquet"):
                require(kind, path)
        except DataError as e:
            problems.append(f"{key}: {e}")
    return problems


class Damaged(Exception):
    """A compressed stream that cannot be read to its end."""


def _gzip_blocks(raw: BinaryIO) -> Iterator[bytes]:
    # zlib directly rather than gzip.GzipFile: each block comes out as soon as it is decompressed, so
    # the data before a damaged spot is never lost, and concatenated members are read in turn
    decompressor, in_member, pending = zlib.decompressobj(31), False, b""
    while True:
        data = pending or raw.read(FEED)
        pending = b""
        if not data:
            if in_member:
                raise Damaged("the gzip stream ends early (truncated file)")
            return
        in_member = True
        try:
            out = decompressor.decompress(data, BLOCK * 8)
            while out:
                yield out
                out = decompressor.decompress(decompressor.unconsumed_tail, BLOCK * 8) \
                    if decompressor.unconsumed_tail else b""
        except zlib.error as e:
            raise Damaged(f"corrupt gzip data ({e})") from None
        if decompressor.eof:
            pending = decompressor.unused_data.lstrip(b"\x00")  # zero padding after a member is allowed
            decompressor, in_member = zlib.decompressobj(31), False


def _zstd_blocks(raw: BinaryIO, zstandard: Any) -> Iterator[bytes]:
    decompressor, in_frame, pending = zstandard.ZstdDecompressor().decompressobj(), False, b""
    while True:
        data = pending or raw.read(FEED)
        pending = b""
        if not data:
            if in_frame:
                raise Damaged("the zstd stream ends early (truncated file)")
            return
        in_frame = True
        try:
            out = decompressor.decompress(data)
        except zstandard.ZstdError as e:
            raise Damaged(f"corrupt zstd data ({e})") from None
        if out:
            yield out
        if decompressor.eof:
            pending = decompressor.unused_data
            decompressor, in_frame = zstandard.ZstdDecompressor().decompressobj(), False


def _skip(blocks: Iterator[bytes], n: int) -> bytes:
    """Drop the first n bytes of a decompressed stream; returns what is left of the block it ends in."""
    for block in blocks:
        if n < len(block):
            return block[n:]
        n -= len(block)
    return b""


def read_chunks(path: str | os.PathLike, parse: Callable[[Any], Any], strict: bool = False,
                start: Position = Position(), text_column: str = "text", numbered: bool = False,
                chunk_bytes: Optional[int] = None) -> Iterator[Chunk]:
    """Chunks of parse(record) for the records of `path` from `start`; bad records are counted in each
    chunk's `bad` (or the first is a DataError when strict), and so is a damaged compressed stream.

    A JSONL record is one line's JSON value; a Parquet record is {text_column: value} of one row.
    `numbered`: items are (record number, parse(record)) pairs, for messages about later stages.
    """
    kind = file_kind(path)
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if kind == "parquet":
        yield from _parquet_chunks(path, parse, strict, start, text_column, numbered)
        return
    zstandard = require("zstd", path) if kind == "zstd" else None
    with open(path, "rb") as raw:
        if kind == "jsonl":
            raw.seek(start.offset)
            blocks: Iterator[bytes] = iter(lambda: raw.read(BLOCK), b"")
            rest = b""
        else:
            blocks = _gzip_blocks(raw) if kind == "gzip" else _zstd_blocks(raw, zstandard)
            rest = _skip(blocks, start.offset) if start.offset else b""
        offset, line_no, items, size, bad = start.offset, start.record, [], 0, BadLines()
        damage: Optional[str] = None
        while True:
            try:
                block = next(blocks, None)
            except Damaged as e:
                damage = str(e)
                block = None
            if block is None:
                if rest and damage is None:  # a last line without a newline
                    block, rest = rest + b"\n", b""
                else:
                    break
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                line_no += 1
                offset += len(line) + 1
                size += len(line) + 1
                item = _parse_line(line, parse, bad, strict, path, line_no)
                if item is not _SKIP:
                    items.append((line_no, item) if numbered else item)
                if size >= chunk_bytes:
                    yield Chunk(items, Position(offset, line_no), offset if kind == "jsonl" else raw.tell(), bad)
                    items, size, bad = [], 0, BadLines()
        if damage is not None:
            where = (f"{path}: {damage}, at byte {raw.tell()} of the file ({offset} bytes of text, after line "
                     f"{line_no}); the {line_no} line(s) before it are used")
            if strict:
                raise DataError(f"{where} (data.strict=true; set it false to use the good part)")
            bad.damage(where)
        yield Chunk(items, Position(offset, line_no), raw.tell(), bad)


_SKIP = object()


def _parse_line(line: bytes, parse: Callable[[Any], Any], bad: BadLines, strict: bool, path: Any,
                line_no: int) -> Any:
    if not line.strip():
        return _SKIP
    try:
        return parse(json.loads(line.decode("utf-8")))  # not bytes: json would let lone surrogates pass
    except UnicodeDecodeError:
        reason, hint = "invalid UTF-8", None
    except json.JSONDecodeError as e:
        reason, hint = f"invalid JSON ({e.msg})", None
    except BadLine as e:
        reason, hint = str(e), e.hint
    if strict:
        raise DataError(f"{path}:{line_no}: {reason} (data.strict=true; set it false to skip such lines)"
                        + (f". {hint}" if hint else ""))
    bad.add(line_no, reason, hint)
    return _SKIP


def _parquet_chunks(path: Any, parse: Callable[[Any], Any], strict: bool, start: Position,
                    text_column: str, numbered: bool) -> Iterator[Chunk]:
    pq = require("parquet", path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors for a damaged file vary (ArrowInvalid, OSError)
        raise DataError(f"{path} is not a readable Parquet file ({e})") from None
    columns = parquet.schema_arrow.names
    if text_column not in columns:
        raise DataError(f"{path} has no column {text_column!r} (data.text_column): its columns are "
                        f"{', '.join(columns)}; set data.text_column to the one holding the text")
    meta = parquet.metadata
    size, done_rows = os.path.getsize(path), 0
    row = start.record
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        if done_rows + rows <= row:  # finished before the resume position
            done_rows += rows
            continue
        skip = row - done_rows
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, row_groups=[group], columns=[text_column]):
            values = batch.column(0).to_pylist()
            if skip:
                values, skip = values[skip:], max(0, skip - len(values))
            items, bad = [], BadLines()
            for value in values:
                row += 1
                try:
                    item = parse({text_column: value})
                except BadLine as e:
                    if strict:
                        raise DataError(f"{path}: row {row}: {e} (data.strict=true; set it false to skip such rows)")
                    bad.add(row, str(e), e.hint)
                    continue
                items.append((row, item) if numbered else item)
            yield Chunk(items, Position(0, row), size * row // max(meta.num_rows, 1), bad)
        done_rows += rows
    yield Chunk([], Position(0, row), size, BadLines())


def iter_records(path: str | os.PathLike, parse: Callable[[Any], T], bad: BadLines, strict: bool = False,
                 on_bytes: Callable[[int], None] | None = None) -> Iterator[T]:
    """Yield parse(record) for each good record of one data file (JSONL, .jsonl.gz, .jsonl.zst or
    Parquet); count the rest in `bad` (or raise DataError when strict).

    Blank lines are ignored silently; invalid UTF-8, invalid JSON and records that `parse` rejects
    with BadLine are malformed. `on_bytes` is told how many bytes of the file each chunk took (progress bars).
    """
    check_readable(path)
    done = 0
    for chunk in read_chunks(path, parse, strict=strict):
        bad.merge(chunk.bad)
        if on_bytes is not None:
            on_bytes(chunk.file_bytes - done)
            done = chunk.file_bytes
        yield from chunk.items
