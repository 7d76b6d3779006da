"""Stopping a run cleanly on a signal: the loop finishes its update, saves, and exits."""

from __future__ import annotations

import signal


class StopFlag:
    """SIGTERM/SIGUSR1 (SLURM preemption, scancel) and Ctrl-C: finish the update, save checkpoint_last.pt,
    exit. A second Ctrl-C aborts at once, without saving.

    `requested`: this process got a signal. `set`: the run stops after this update. Alone (`solo`), a
    request stops at once; under DDP every rank must stop after the same update, so `set` is what the ranks
    agreed on (the loop passes `requested` through train_step's one host sync), and a request arriving
    mid-update waits for the next one instead of being lost."""

    def __init__(self, say=print, solo: bool = True):
        self.set = self.requested = False
        self.solo = solo
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
            if self.requested:
                raise KeyboardInterrupt
            self._say("Ctrl-C: finishing this update and saving checkpoint_last.pt (Ctrl-C again aborts "
                      "without saving)")
        self.requested = True
        if self.solo:
            self.set = True

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
