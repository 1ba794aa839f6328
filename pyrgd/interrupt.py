"""Ctrl-C during a run: a flag checked between GD steps, so that a step is never left half applied."""
from __future__ import annotations

import signal
import threading


class StopFlag:
    """Within ``with StopFlag() as stop:`` the first SIGINT sets ``stop.set`` (the run stops after the step it is
    in); a second one raises KeyboardInterrupt at once. Outside the main thread it changes nothing (Python delivers
    signals to the main thread only). The previous handler is restored on exit."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
