"""Reading JSONL corpora line by line: malformed lines are skipped and counted, or fatal in strict mode."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")
MAX_REPORTED = 5  # line numbers kept for the report


class DataError(ValueError):
    """A data file that cannot be used: missing, empty, malformed in strict mode, too short."""


class BadLine(ValueError):
    """Raised by a record parser for a line that is valid JSON but not a usable record."""


@dataclass
class BadLines:
    count: int = 0
    first: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def add(self, line_no: int, reason: str) -> None:
        self.count += 1
        if len(self.first) < MAX_REPORTED:
            self.first.append((line_no, reason))

    def summary(self, path: str | os.PathLike) -> str:
        shown = "; ".join(f"line {n}: {why}" for n, why in self.first)
        more = f" (and {self.count - len(self.first)} more)" if self.count > len(self.first) else ""
        return f"{path}: skipped {self.count} malformed line(s): {shown}{more}"


def check_readable(path: str | os.PathLike, what: str = "data file") -> None:
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative paths start from {os.getcwd()})"
        raise DataError(f"{what} {path} does not exist{where}")
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
                reason = "invalid UTF-8"
            except json.JSONDecodeError as e:
                reason = f"invalid JSON ({e.msg})"
            except BadLine as e:
                reason = str(e)
            else:
                yield record
                continue
            if strict:
                raise DataError(f"{path}:{line_no}: {reason} (data.strict=true; set it false to skip such lines)")
            bad.add(line_no, reason)


def parse_pretrain(obj: Any) -> str:
    """A pretraining record: {"text": "<non-empty string>"}."""
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text")
    if text is None:
        raise BadLine('missing "text"')
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
