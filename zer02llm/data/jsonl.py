"""Reading JSONL corpora line by line: malformed lines are skipped and counted, or fatal in strict mode."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

T = TypeVar("T")
MAX_REPORTED = 5  # line numbers kept for the report

# (name, magic bytes, usual suffixes) of compressed formats people hand us instead of JSONL
COMPRESSED = (
    ("gzip", b"\x1f\x8b", (".gz", ".gzip")),
    ("zstd", b"\x28\xb5\x2f\xfd", (".zst", ".zstd")),
    ("bzip2", b"BZh", (".bz2",)),
    ("xz", b"\xfd7zXZ\x00", (".xz",)),
)
PARQUET_MAGIC = b"PAR1"


class DataError(ValueError):
    """A data file that cannot be used: missing, empty, malformed in strict mode, too short."""


class BadLine(ValueError):
    """Raised by a record parser for a line that is valid JSON but not a usable record.

    `hint` says what the line probably is instead (e.g. an SFT record given to pretraining); a
    report names each distinct hint once, not once per line.
    """

    def __init__(self, reason: str, hint: Optional[str] = None) -> None:
        super().__init__(reason)
        self.hint = hint


@dataclass
class BadLines:
    count: int = 0
    first: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    hints: list[str] = field(default_factory=list)  # distinct, in order of first appearance

    def add(self, line_no: int, reason: str, hint: Optional[str] = None) -> None:
        self.count += 1
        if len(self.first) < MAX_REPORTED:
            self.first.append((line_no, reason))
        if hint and hint not in self.hints:
            self.hints.append(hint)

    def summary(self, path: str | os.PathLike) -> str:
        shown = "; ".join(f"line {n}: {why}" for n, why in self.first)
        more = f" (and {self.count - len(self.first)} more)" if self.count > len(self.first) else ""
        return f"{path}: skipped {self.count} malformed line(s): {shown}{more}" + "".join(
            f". {hint}" for hint in self.hints)


def unsupported_input(path: str | os.PathLike) -> Optional[str]:
    """Why an existing `path` cannot be read as a JSONL file (a directory, compressed, Parquet,
    unreadable), or None. Checked up front: otherwise a .gz file reads as a wall of invalid UTF-8 lines."""
    if os.path.isdir(path):
        shards = sorted(Path(path).glob("*.jsonl"))
        inside = f" (it holds {len(shards)} .jsonl file(s), e.g. {shards[0]}: name one)" if shards else ""
        return f"is a directory: expected a JSONL file, one JSON object per line{inside}"
    if not os.path.isfile(path):
        return None  # a FIFO or device: reading its head could block; the caller refuses it
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not head:
        return None  # empty: the caller's own, clearer message
    name = Path(path).name
    if head.startswith(PARQUET_MAGIC) or name.endswith(".parquet"):
        source, out = json.dumps(str(path)), json.dumps(str(Path(path).with_suffix(".jsonl")))
        code = (f'import pandas as pd; pd.read_parquet({source}).to_json({out}, orient="records", lines=True, '
                f'force_ascii=False)')
        return f"is a Parquet file: only JSONL is supported yet; convert it first, e.g. python -c {shlex.quote(code)}"
    looks_like_json = head.lstrip()[:1] in (b"{", b"[")
    for kind, magic, suffixes in COMPRESSED:
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        # the suffix alone only counts when the content is not plain JSON (a misnamed file is fine)
        if head.startswith(magic) or (suffix and not looks_like_json):
            out = str(path)[:-len(suffix)] if suffix else str(path)
            out += "" if out.endswith(".jsonl") else ".jsonl"
            return (f"is {kind}-compressed: compressed input is not supported yet; decompress it first, e.g. "
                    f"{kind} -dc {shlex.quote(str(path))} > {shlex.quote(out)}")
    return None


def check_readable(path: str | os.PathLike, what: str = "data file") -> None:
    """Raise DataError unless `path` is a non-empty, plain (uncompressed) file."""
    if not os.path.exists(path):
        where = "" if os.path.isabs(path) else f" (relative paths start from {os.getcwd()})"
        raise DataError(f"{what} {path} does not exist{where}")
    problem = unsupported_input(path)
    if problem:
        raise DataError(f"{what} {path} {problem}")
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} is not a regular file: expected a JSONL file, one JSON object per line")
    if os.path.getsize(path) == 0:
        raise DataError(f"{what} {path} is empty: expected one JSON object per line")


def iter_records(path: str | os.PathLike, parse: Callable[[Any], T], bad: BadLines, strict: bool = False,
                 on_bytes: Callable[[int], None] | None = None) -> Iterator[T]:
    """Yield parse(obj) for each good line; count the rest in `bad` (or raise DataError when strict).

    Blank lines are ignored silently; invalid UTF-8, invalid JSON and lines that `parse` rejects
    with BadLine are malformed. `on_bytes` is told how many bytes each line took (progress bars).
    """
    check_readable(path)
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if on_bytes is not None:
                on_bytes(len(raw))
            if not raw.strip():
                continue
            try:
                record = parse(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError:
                reason, hint = "invalid UTF-8", None
            except json.JSONDecodeError as e:
                reason, hint = f"invalid JSON ({e.msg})", None
            except BadLine as e:
                reason, hint = str(e), e.hint
            else:
                yield record
                continue
            if strict:
                raise DataError(f"{path}:{line_no}: {reason} (data.strict=true; set it false to skip such lines)"
                                + (f". {hint}" if hint else ""))
            bad.add(line_no, reason, hint)


def parse_pretrain(obj: Any) -> str:
    """A pretraining record: {"text": "<non-empty string>"}."""
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text")
    if text is None:
        hint = ('Lines with "conversations" are SFT data: train on them with mode=sft'
                if "conversations" in obj else None)
        raise BadLine('missing "text"', hint)
    if not isinstance(text, str):
        raise BadLine(f'"text" is a {type(text).__name__}, not a string')
    if not text.strip():
        raise BadLine('empty "text"')
    check_unicode(text, '"text"')
    return text


def check_unicode(text: str, what: str) -> None:
    """JSON escapes can produce lone surrogates, which no tokenizer (or UTF-8) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadLine(f"{what} is not valid Unicode (a lone surrogate)") from None
