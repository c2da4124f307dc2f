"""Reading JSONL corpora line by line: malformed lines are skipped and counted, or fatal in strict mode."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

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
    damaged: list[str] = field(default_factory=list)  # damaged compressed streams: file, offset, what was used

    def damage(self, where: str) -> None:
        self.damaged.append(where)

    def merge(self, other: "BadLines") -> None:
        """Add `other`'s counts (those of a later part of the same file) to these."""
        self.count += other.count
        self.first += other.first[:MAX_REPORTED - len(self.first)]
        self.hints += [hint for hint in other.hints if hint not in self.hints]
        self.damaged += other.damaged

    def to_dict(self) -> dict:
        return {"count": self.count, "first": self.first, "hints": self.hints, "damaged": self.damaged}

    @classmethod
    def from_dict(cls, state: dict) -> "BadLines":
        return cls(state["count"], [tuple(x) for x in state["first"]], state["hints"], state["damaged"])

    def add(self, line_no: int, reason: str, hint: Optional[str] = None) -> None:
        self.count += 1
        if len(self.first) < MAX_REPORTED:
            self.first.append((line_no, reason))
        if hint and hint not in self.hints:
            self.hints.append(hint)

    def summary(self, path: str | os.PathLike, skipped: bool = True) -> str:
        """What was found; `skipped` False: a strict run refusing them, which skipped nothing."""
        damage = "".join(f"; damaged: {where}" for where in self.damaged)
        if not self.count:
            return f"{path}: no malformed line" + damage
        shown = "; ".join(f"line {n}: {why}" for n, why in self.first)
        more = f" (and {self.count - len(self.first)} more)" if self.count > len(self.first) else ""
        found = "skipped" if skipped else "has"
        return f"{path}: {found} {self.count} malformed line(s): {shown}{more}" + "".join(
            f". {hint}" for hint in self.hints) + damage


def unsupported_input(path: str | os.PathLike) -> Optional[str]:
    """Why an existing `path` cannot be read as one data file (a directory, bzip2/xz-compressed,
    unreadable), or None. Checked up front: otherwise a .bz2 file reads as a wall of invalid UTF-8 lines.
    JSONL, gzip- and zstd-compressed JSONL and Parquet are readable (zer02llm.data.sources)."""
    if os.path.isdir(path):
        return ("is a directory: expected one data file here (data.train_path and data.val_path take "
                "directories, globs and lists)")
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
        return None
    looks_like_json = head.lstrip()[:1] in (b"{", b"[")
    for kind, magic, suffixes in COMPRESSED:
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        readable = kind in ("gzip", "zstd")
        if readable and head.startswith(magic):
            return None
        # the suffix alone only counts when the content is not plain JSON (a misnamed file is fine)
        if readable and suffix and not looks_like_json:
            return f"is named {suffix} but holds neither {kind} data nor JSON lines"
        if head.startswith(magic) or (suffix and not looks_like_json):
            out = str(path)[:-len(suffix)] if suffix else str(path)
            out += "" if out.endswith(".jsonl") else ".jsonl"
            return (f"is {kind}-compressed: readable inputs are JSONL, .jsonl.gz, .jsonl.zst and Parquet; "
                    f"decompress it first, e.g. {kind} -dc {shlex.quote(str(path))} > {shlex.quote(out)}")
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


def parse_pretrain(obj: Any, text_column: str = "text") -> str:
    """A pretraining record: {"text": "<non-empty string>"} (`text_column`: data.text_column)."""
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get(text_column)
    name = json.dumps(text_column)
    if text is None:
        hint = ('Lines with "conversations" are SFT data: train on them with mode=sft'
                if "conversations" in obj else None)
        raise BadLine(f'missing {name}' if text_column not in obj else f'null {name}', hint)
    if not isinstance(text, str):
        raise BadLine(f'{name} is a {type(text).__name__}, not a string')
    if not text.strip():
        raise BadLine(f'empty {name}')
    check_unicode(text, name)
    return text


def check_unicode(text: str, what: str) -> None:
    """JSON escapes can produce lone surrogates, which no tokenizer (or UTF-8) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadLine(f"{what} is not valid Unicode (a lone surrogate)") from None
