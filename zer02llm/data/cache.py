"""The token cache: each data file tokenized once into flat arrays, in a pipeline, resumable by chunk.

A file is read in chunks (zer02llm.data.sources) on one thread, each chunk encoded on the calling
thread (the tokenizers library releases the GIL and runs on every core), and the arrays built and
appended on a third thread, so reading, encoding and writing overlap. After each chunk the partial
files are flushed and a small state file records where the input stands, so an interrupted run
resumes from the last finished chunk. The finished files are renamed into place and the meta file is
written last: its presence means the cache is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, TextIO

import numpy as np
from tqdm import tqdm

from zer02llm.data.jsonl import BadLines, DataError, check_readable
from zer02llm.data.sources import Position, read_chunks
from zer02llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the layout of the token file changes
QUEUE_DEPTH = 2  # chunks waiting between two stages: bounds the memory of the pipeline


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zer02llm"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def cache_key(path: str | os.PathLike, tokenizer: Tokenizer, extra: Optional[dict] = None) -> str:
    """Identity of a tokenized file: the data file (path, size, mtime), the tokenizer, and `extra`
    (what else shapes the tokens, e.g. SFT's chat template)."""
    stat = os.stat(path)
    identity = {
        "format": CACHE_FORMAT,
        "path": os.path.realpath(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "tokenizer": tokenizer.fingerprint,
        "bos": tokenizer.bos_id,
        "eos": tokenizer.eos_id,
        **({"extra": extra} if extra else {}),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def entry_files(cache_dir: Optional[str | os.PathLike], stem: str, names: tuple[str, ...]
                ) -> tuple[dict[str, Path], Path]:
    """A cache entry of several arrays: ({name: <dir>/<stem>.<name>.bin}, <dir>/<stem>.json), the
    directory made if needed (null: default_cache_dir())."""
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return {name: directory / f"{stem}.{name}.bin" for name in names}, directory / f"{stem}.json"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class ByteProgress:
    """Progress through a data file being tokenized, in bytes.

    Like the training bar: a live tqdm bar when stderr is a terminal; otherwise (a redirected log,
    a SLURM job) no `\\r` frames but a log line every 10% or `interval` seconds, with MB done, MB/s
    and the ETA, and none for a file done within `min_gap` seconds.
    """

    def __init__(self, total: int, name: str, enabled: bool = True, stream: Optional[TextIO] = None,
                 interval: float = 30.0, min_gap: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 initial: int = 0):
        stream = stream if stream is not None else sys.stderr
        self.total, self.name, self.clock = max(total, 1), name, clock
        self.interval, self.min_gap = interval, min_gap
        self.done = self.initial = initial  # a resumed file starts part way: its rate counts from here
        self.started = self.last = clock()
        self.next_tenth = initial * 10 // self.total + 1
        self.logging = enabled and not stream.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=f"tokenizing {name}",
                        mininterval=1.0, file=stream, disable=not enabled or self.logging)

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        if not self.logging:
            return
        now = self.clock()
        tenth = self.done * 10 // self.total
        if now - self.last >= self.min_gap and (tenth >= self.next_tenth or now - self.last >= self.interval):
            self.last, self.next_tenth = now, tenth + 1
            rate = (self.done - self.initial) / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            log.info("tokenizing %s: %.1f of %.1f MB (%d%%), %.1f MB/s, ETA %s", self.name, self.done / 1e6,
                     self.total / 1e6, 100 * self.done // self.total, rate / 1e6, tqdm.format_interval(eta))

    def close(self) -> None:
        self.bar.close()


class Encoder(Protocol):
    """How one kind of data becomes arrays: `parse` a record (reader thread), `encode` a chunk's items
    (calling thread: the tokenizer's parallel native work), `arrays` of the encoded chunk (writer thread),
    adding to `counts` and to `bad` what it rejects."""

    outputs: tuple[str, ...]  # names of the flat arrays, one file each

    def parse(self, record: Any) -> Any: ...

    def encode(self, items: list) -> Any: ...

    def arrays(self, encoded: Any, counts: dict[str, int], bad: BadLines) -> dict[str, np.ndarray]: ...


class _Stage(threading.Thread):
    """Runs `work` on a thread; its exception is re-raised by `join_raise`."""

    def __init__(self, work: Callable[[], None]):
        super().__init__(daemon=True)
        self.work, self.error = work, None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as e:  # handed to the calling thread
            self.error = e

    def join_raise(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


_END = object()


@contextlib.contextmanager
def entry_lock(meta_path: Path) -> Iterator[None]:
    """Hold the cache entry's lock file: of the processes that miss the cache together (the ranks of a
    torchrun job, two jobs of a sweep), one builds the entry while the others wait, then find it built."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    with open(meta_path.with_name(meta_path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(path: str | os.PathLike, files: dict[str, Path], meta_path: Path, encoder: Encoder, counts: dict[str, int],
          check: Callable[[dict[str, int], BadLines], None], strict: bool = False, progress: bool = True,
          text_column: str = "text", numbered: bool = False, head: Optional[dict[str, np.ndarray]] = None) -> dict:
    """Tokenize `path` into `files` (name -> path, one per encoder output) and write `meta_path`;
    returns the meta (counts, bad lines). An existing partial build of the same key is resumed; one
    that another process finished while this one waited for the entry's lock is taken as it is.

    `check(counts, bad)` raises DataError when the result is unusable (no document); `head`: arrays
    each file starts with (SFT's first offset).
    """
    check_readable(path)
    with entry_lock(meta_path):
        meta = from_cache(path, files, meta_path, strict)
        if meta is not None:
            return meta
        return _build(path, files, meta_path, encoder, counts, check, strict, progress, text_column, numbered, head)


def _build(path: str | os.PathLike, files: dict[str, Path], meta_path: Path, encoder: Encoder,
           counts: dict[str, int], check: Callable[[dict[str, int], BadLines], None], strict: bool, progress: bool,
           text_column: str, numbered: bool, head: Optional[dict[str, np.ndarray]]) -> dict:
    parts = {name: p.with_name(p.name + ".part") for name, p in files.items()}
    state_path = meta_path.with_name(meta_path.name + ".part")
    started = time.time()
    start, bad, file_bytes, resumed = _resume(parts, state_path, counts)
    if resumed:
        log.info("resuming the tokenization of %s at line/row %d (%.1f MB of text done)", path, start.record,
                 start.offset / 1e6)
    else:
        for name, part in parts.items():  # a fresh start
            with open(part, "wb") as out:
                if head and name in head:
                    head[name].tofile(out)
    bar = ByteProgress(os.path.getsize(path), Path(path).name, enabled=progress, initial=file_bytes)
    reading: queue.Queue = queue.Queue(QUEUE_DEPTH)
    writing: queue.Queue = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()

    def put(q: queue.Queue, item: Any) -> None:
        while not stop.is_set():
            try:
                return q.put(item, timeout=0.1)
            except queue.Full:
                continue

    def read() -> None:
        try:
            for chunk in read_chunks(path, encoder.parse, strict, start, text_column, numbered):
                put(reading, chunk)
                if stop.is_set():
                    return
        finally:
            put(reading, _END)

    def write() -> None:
        done = file_bytes
        outs = {name: open(part, "ab") for name, part in parts.items()}
        try:
            while (item := writing.get()) is not _END:
                chunk, encoded = item
                chunk_bad = chunk.bad
                for name, array in encoder.arrays(encoded, counts, chunk_bad).items():
                    array.tofile(outs[name])
                bad.merge(chunk_bad)
                for out in outs.values():  # on disk before the state says so
                    out.flush()
                    os.fsync(out.fileno())
                state = {"end": asdict(chunk.end), "counts": counts, "bad": bad.to_dict(), "file_bytes":
                         chunk.file_bytes, "sizes": {name: out.tell() for name, out in outs.items()}}
                write_atomic(state_path, json.dumps(state))
                bar.update(chunk.file_bytes - done)
                done = chunk.file_bytes
        finally:
            for out in outs.values():
                out.close()

    reader, writer = _Stage(read), _Stage(write)
    reader.start()
    writer.start()
    try:
        try:
            while (chunk := reading.get()) is not _END:
                if writer.error is not None:
                    break
                put(writing, (chunk, encoder.encode(chunk.items)))
        finally:
            while writer.is_alive():  # the writer finishes the chunks already encoded: they are resumable
                try:
                    writing.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue
            writer.join_raise()
            stop.set()
            reader.join_raise()
        check(counts, bad)
        for name, part in parts.items():
            os.replace(part, files[name])
    except DataError:  # the data itself is unusable: nothing to resume
        for part in (*parts.values(), state_path):
            part.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    state_path.unlink(missing_ok=True)
    if bad.count or bad.damaged:
        log.warning("%s (data.strict=true makes them an error)", bad.summary(path))
    meta = {"source": os.path.realpath(path), **counts, "bad_lines": bad.count, "damaged": len(bad.damaged),
            "bad_summary": bad.summary(path), "bad": bad.to_dict(), "seconds": round(time.time() - started, 2)}
    write_atomic(meta_path, json.dumps(meta, indent=1))
    return meta


def _resume(parts: dict[str, Path], state_path: Path, counts: dict[str, int]
            ) -> tuple[Position, BadLines, int, bool]:
    """Where a partial build stopped: (position, bad lines so far, file bytes done, whether resumed);
    `counts` is updated in place. The partial files are cut back to the last finished chunk."""
    try:
        state = json.loads(state_path.read_text())
        if set(state["sizes"]) != set(parts) or any(
                not part.exists() or part.stat().st_size < state["sizes"][name] for name, part in parts.items()):
            raise ValueError("partial files shorter than their state")  # e.g. a crash before the OS wrote them
    except (OSError, ValueError, KeyError):
        return Position(), BadLines(), 0, False
    for name, part in parts.items():
        os.truncate(part, state["sizes"][name])
    counts.update(state["counts"])
    return Position(**state["end"]), BadLines.from_dict(state["bad"]), state["file_bytes"], True


def from_cache(path: str | os.PathLike, files: dict[str, Path], meta_path: Path, strict: bool) -> Optional[dict]:
    """The meta of a complete cache of `path`, or None; its bad lines are reported again (fatal when strict)."""
    if not (meta_path.exists() and all(p.exists() for p in files.values())):
        return None
    meta = json.loads(meta_path.read_text())
    damaged = meta.get("damaged", 0)
    if (meta["bad_lines"] or damaged) and strict:
        # a strict run skips nothing: it refuses what a non-strict run skipped when it built the cache
        found = (BadLines.from_dict(meta["bad"]).summary(path, skipped=False) if "bad" in meta
                 else meta["bad_summary"].replace(": skipped ", ": has ", 1))
        raise DataError(f"{found} (data.strict=true refuses them; set data.strict=false to skip such lines)")
    if meta["bad_lines"] or damaged:
        log.warning("%s (counted when the cache was built)", meta["bad_summary"])
    return meta
