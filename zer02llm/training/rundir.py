"""Who may write into a run directory, and when.

A command writes nothing into its run directory until the run is accepted: its config checked, a
fresh start into a directory free of another run's checkpoints and metrics (or that run moved aside
with train.overwrite=true), a resume's checkpoint read and found to fit. Until then the log is held in
memory (RunLogHandler), so a refused command leaves the directory byte-identical.

Nothing here imports torch: the entry point checks the directory before anything heavy starts.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Optional

from zer02llm.config import ConfigError

STEP_DIR = re.compile(r"^step_\d+$")


class RunDirTaken(ConfigError):
    """A fresh start refused because the run directory holds another run: nothing may be written there."""


def effective_resume(resume: Optional[str]) -> Optional[str]:
    """train.resume as the run will take it: a requeued SLURM job continues from its own directory."""
    if resume is None and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        return "auto"
    return resume


def previous_run(run_dir: Path) -> list[str]:
    """What of another run `run_dir` holds (its checkpoints, metrics rows, summary), one phrase each;
    empty when a fresh start there mixes nothing."""
    found = []
    checkpoints = run_dir / "checkpoints"
    steps = sorted(p.name for p in checkpoints.iterdir() if STEP_DIR.match(p.name)) if checkpoints.is_dir() else []
    if steps:
        found.append(f"checkpoints {', '.join(steps[-3:])}" + (f" and {len(steps) - 3} more" if len(steps) > 3 else ""))
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = sum(1 for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
        if rows:
            found.append(f"{rows} row(s) in metrics.jsonl")
    if (run_dir / "summary.json").is_file():
        found.append("summary.json")
    return found


def aside_path(run_dir: Path) -> Path:
    """A free sibling name for the old run: <name>.replaced-<date>-<time>[-N]."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    return candidate


def fresh_start_problem(run_dir: Path, resume: Optional[str], overwrite: bool) -> Optional[str]:
    """Why a run may not start in `run_dir` as configured, or None.

    A fresh start into a directory holding another run would mix the two (its checkpoints beside the
    new ones, where train.resume=auto may later pick them): refused, with the three ways on."""
    resume = effective_resume(resume)
    if resume is not None and overwrite:
        return (f"train.overwrite=true with train.resume={resume}: overwrite starts afresh (moving the old run "
                f"aside), resume continues it; give one of them")
    found = previous_run(run_dir) if resume is None else []
    holds_cwd = run_dir.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents)
    if overwrite and found and holds_cwd:
        return (f"train.overwrite=true cannot move the run in {run_dir} aside: it is the working directory (or "
                f"holds it); give another hydra.run.dir, or move that run yourself")
    if not found or overwrite:
        return None
    if holds_cwd:
        overwrite_hint = "move it elsewhere yourself (it is the working directory, which train.overwrite cannot move)"
    else:
        overwrite_hint = (f"train.overwrite=true to move the old run aside to {run_dir.name}.replaced-<date>-<time> "
                          f"beside it (nothing is deleted)")
    return (f"hydra.run.dir={run_dir} already holds another run ({'; '.join(found)}): a fresh start there would "
            f"mix the two runs. Continue that run with train.resume=auto, start this one elsewhere with "
            f"hydra.run.dir=<a new directory>, or {overwrite_hint}")


def move_aside(run_dir: Path) -> Optional[Path]:
    """train.overwrite=true: rename the old run to a sibling and recreate `run_dir` empty; the new
    path, or None when there was no other run to move."""
    if not previous_run(run_dir):
        return None
    aside = aside_path(run_dir)
    os.replace(run_dir, aside)
    run_dir.mkdir()
    return aside


class RunLogHandler(logging.FileHandler):
    """The run's log file (train.log), written only once the run is accepted: records before that are
    held in memory, then written in order (`accept`), or dropped with the refused command (`discard`).
    A process that ends without either (a crash) still writes them: its log is what explains it."""

    def __init__(self, filename: str, mode: str = "a", encoding: Optional[str] = "utf-8"):
        super().__init__(filename, mode=mode, encoding=encoding, delay=True)
        self.held: Optional[list[logging.LogRecord]] = []
        self.discarded = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.discarded:
            return
        if self.held is not None:
            self.held.append(record)
        else:
            super().emit(record)

    def accept(self) -> None:
        """Write the held records and every later one to the file."""
        held, self.held = self.held, None
        for record in held or ():
            super().emit(record)
        self.flush()

    def discard(self) -> None:
        """Forget the held records and drop later ones: the command was refused before it was accepted, its
        log is the console's. A log already accepted stays as it is."""
        if self.held is not None:
            self.held, self.discarded = [], True

    def close(self) -> None:
        if self.held:
            self.accept()
        super().close()


def run_log_handlers() -> list[RunLogHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, RunLogHandler)]


def run_log_accepted() -> bool:
    """Whether the run was accepted (its log goes to the file); True where there is no run log (other ranks)."""
    return all(handler.held is None for handler in run_log_handlers())


def accept_run_log() -> None:
    for handler in run_log_handlers():
        handler.accept()


def discard_run_log() -> None:
    for handler in run_log_handlers():
        handler.discard()

