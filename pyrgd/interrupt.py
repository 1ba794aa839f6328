"""Signals during a run: Ctrl-C (SIGINT) and a scheduler's SIGTERM become a flag checked between GD steps, and a
step is applied whole or not at all whatever arrives when."""
from __future__ import annotations

import contextlib
import signal
import threading


class StopFlag:
    """Within ``with StopFlag() as stop:`` the first SIGINT or SIGTERM sets ``stop.set`` (and ``stop.signal``: 'SIGINT'
    or 'SIGTERM'); the run stops after the step it is in. A second one raises KeyboardInterrupt at once, except
    inside :meth:`critical`, where it is held until the block ends (an update is never left half applied), and
    after :meth:`finish`, when the run has stopped and writes its files. Outside
    the main thread it changes nothing (Python delivers signals to the main thread only). The previous handlers are
    restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.set = False
        self.signal = None
        self._old = {}
        self._depth = 0
        self._pending = False
        self._finishing = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame):
        if self._finishing:  # the run has stopped and is writing its files: nothing more to stop
            self.set, self.signal = True, self.signal or signal.Signals(signum).name
            return
        if not self.set:  # the first signal: stop after the step in progress
            self.set, self.signal = True, signal.Signals(signum).name
        elif self._depth:  # a second one inside a critical block: held until it ends
            self._pending = True
        else:  # a second one elsewhere: stop now
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self, hold=False):
        """A block no signal interrupts: a second signal arriving inside raises KeyboardInterrupt when it ends, or,
        with ``hold``, is dropped (the run is already stopping)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending:
                self._pending = False
                if not hold:
                    raise KeyboardInterrupt

    def finish(self) -> None:
        """The run has stopped: from now on signals are recorded but raise nothing (its files get written)."""
        self._finishing = True

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        return False
