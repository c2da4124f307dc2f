"""Stopping cleanly on SLURM's warning signals: save a checkpoint first, then let the launcher act.

SLURM sends USR2 before a time limit or a preemption (submitit's `--signal=USR2@...`, and
`preempt_send_user_signal`); submitit's own handler then requeues the job and exits. Training
catches the signal, finishes the current step, writes a checkpoint, and only then hands the signal
to the handler that was there before (submitit's, or the default action).
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Callable, Optional, Union

log = logging.getLogger(__name__)
Handler = Union[Callable[[int, Optional[FrameType]], object], int, None]


class StopSignals:
    """Records USR2/TERM instead of dying mid-step; `forward()` replays it to the previous handler."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM)):
        self.received: Optional[int] = None
        self.previous: dict[int, Handler] = {}
        for sig in signals:
            try:
                self.previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is None:
            log.warning("received %s: saving a checkpoint at the end of this step", signal.Signals(signum).name)
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def forward(self) -> None:
        """Hand the received signal to the handler from before (submitit requeues and exits)."""
        signum = self.received
        assert signum is not None
        self.restore()
        handler = self.previous.get(signum)
        if callable(handler):
            handler(signum, None)
        elif handler != signal.SIG_IGN:
            os.kill(os.getpid(), signum)  # the default action: end the process as the signal would
