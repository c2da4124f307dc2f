"""`python -m zer02llm.sweep <sweep dir>`: write a Hydra multirun sweep's summary again, and the
Hydra callback that writes it at the end of every `-m` sweep (conf/hydra/callbacks/sweep_summary.yaml).

What the summary holds: zer02llm/sweeps/summary.py. Hydra is imported here, at the entry point, and
nowhere in zer02llm/sweeps/.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.experimental.callback import Callback

from zer02llm.sweeps.jobs import JOB_STATUS, NotASweepError
from zer02llm.sweeps.summary import summarize

log = logging.getLogger(__name__)


class SweepSummaryCallback(Callback):
    """Summarize every `-m` sweep when it ends; never fails the sweep.

    Where each hook runs (Hydra 1.3): on_multirun_start/on_multirun_end in the process that was
    started with `-m`, on the local machine also with the submitit launchers (after every job's
    result came back); on_job_end in the job's own process, which with submitit is a SLURM job on
    another node (the sweep directory must be on a shared filesystem, as submitit needs anyway).

    - on_job_end writes job_status.json into the job directory (COMPLETED or FAILED with the
      exception), so a job that raised shows as failed rather than incomplete.
    - on_multirun_end writes the summary.
    - Hydra's basic sweeper raises as soon as a job of a batch failed, and then on_multirun_end is
      never called; for that case (and Ctrl-C) on_multirun_start registers an atexit hook that
      writes the summary when the process exits without it.
    """

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self._sweep_dir: Optional[str] = None
        self._pending = False

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._sweep_dir = _sweep_dir_of(config)
        self._pending = True
        atexit.register(self._at_exit)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        try:
            from hydra.core.utils import JobStatus
            from hydra.types import RunMode
            from omegaconf import OmegaConf

            if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
                return  # single runs keep their directory as it was
            output_dir = OmegaConf.select(config, "hydra.runtime.output_dir")
            if not output_dir:
                return
            record: dict[str, Any] = {"status": job_return.status.name}
            if job_return.status == JobStatus.FAILED:
                from hydra.errors import CompactHydraException

                error = job_return._return_value  # the exception; .return_value would re-raise it
                if getattr(error, "keeps_job_dir", False):  # refused as another run's directory: left as it was
                    return
                # a refused config lists its problems on several lines: keep them all, on one
                text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
                if not isinstance(error, CompactHydraException):  # our messages need no type name
                    text = f"{type(error).__name__}: {text}"
                record["error"] = text[:1000]
            (Path(output_dir) / JOB_STATUS).write_text(json.dumps(record) + "\n", encoding="utf-8")
        except Exception as e:  # noqa: BLE001 - bookkeeping must never fail a job
            log.warning("sweep summary: could not record the job's status: %s: %s", type(e).__name__, e)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._pending = False
        atexit.unregister(self._at_exit)
        self._summarize(self._sweep_dir or _sweep_dir_of(config))

    def _at_exit(self) -> None:
        if self._pending:
            self._pending = False
            self._summarize(self._sweep_dir, note="The sweep stopped before all its jobs ended normally "
                                                  "(a job failed, or it was interrupted).")

    def _summarize(self, sweep_dir: Optional[str], note: Optional[str] = None) -> None:
        try:
            if sweep_dir is None:
                raise ValueError("the sweep directory is unknown")
            summarize(sweep_dir, echo=self.echo, note=note)
        except Exception as e:  # noqa: BLE001 - the sweep's own outcome must not depend on its summary
            log.warning("sweep summary of %s failed: %s: %s", sweep_dir, type(e).__name__, e)


def _sweep_dir_of(config: Any) -> Optional[str]:
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, "hydra.sweep.dir", default=None)
    return str(Path(str(value)).resolve()) if value is not None else None


# --- command line -----------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zer02llm.sweep",
        description="Summarize a Hydra multirun sweep of zer02llm.train: writes summary.md, summary.csv "
                    "and loss_curves.png into the sweep directory and prints the table.")
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory, e.g. multirun/2026-11-28/01-35-38")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)
    try:
        summarize(args.sweep_dir, echo=not args.quiet)
    except NotASweepError as e:
        parser.error(str(e))  # exit status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
