"""Stopping cleanly on SLURM's warning signals: save a checkpoint first, then let the launcher act.

SLURM sends USR2 before a time limit or a preemption (submitit's `--signal=USR2@...`, and
`preempt_send_user_signal`); submitit's own handler then requeues the job and exits. Training
catches the signal, finishes the current step, writes a checkpoint, and only then hands the signal
to the handler that was there before (submitit's, or the default action).

Ctrl-C (INT) is taken the same way: the first one checkpoints at the end of the step, then Python's
own handler raises KeyboardInterrupt (the entry point exits 130); a second one interrupts at once.
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
    """Records USR2/TERM/INT instead of dying mid-step; `forward()` replays it to the previous handler."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)):
        self.received: Optional[int] = None
        self.interrupted = False
        self.previous: dict[int, Handler] = {}
        for sig in signals:
            if signal.getsignal(sig) == signal.SIG_IGN:  # ignored by whoever started us (`cmd &` ignores INT)
                continue
            try:
                self.previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt  # the second Ctrl-C: the user will not wait for the step to end
            self.interrupted = True
        if self.received is None:  # the first signal is the one forwarded (USR2 asks submitit to requeue)
            hint = " (Ctrl-C again to stop at once, without it)" if signum == signal.SIGINT else ""
            log.warning("received %s: saving a checkpoint at the end of this step%s", signal.Signals(signum).name,
                        hint)
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
