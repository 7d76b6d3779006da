"""Stopping a run cleanly on a signal: the loop finishes its update, saves, and exits."""

from __future__ import annotations

import signal


class StopFlag:
    """SIGTERM/SIGUSR1 (SLURM preemption, scancel) and Ctrl-C: finish the update, save checkpoint_last.pt,
    exit. A second Ctrl-C aborts at once, without saving."""

    def __init__(self, say=print):
        self.set = False
        self._old = {}
        self._say = say
        for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            if s == signal.SIGINT and signal.getsignal(s) is not signal.default_int_handler:
                continue  # someone else handles Ctrl-C (a debugger, a launcher): leave it to them
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass

    def _handler(self, signum, frame):
        if signum == signal.SIGINT:
            if self.set:
                raise KeyboardInterrupt
            self._say("Ctrl-C: finishing this update and saving checkpoint_last.pt (Ctrl-C again aborts "
                      "without saving)")
        self.set = True

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
