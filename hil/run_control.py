"""Operator control of a running experiment: stop after this step, or stop now.

The first Ctrl-C asks the run to stop at the next step boundary: the step in flight finishes,
the log is flushed and marked aborted, and the chip is left in its safe state. A second Ctrl-C
raises KeyboardInterrupt at once; the run still flushes what it holds on the way out.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator


class RunAborted(Exception):
    """Raised at a step boundary after the operator asked the run to stop."""


class RunControl:
    """A stop flag the training loop checks between steps (thread- and signal-safe)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.reason = "stopped by the operator"

    def request_stop(self, reason: str = "stopped by the operator") -> None:
        self.reason = reason
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def check(self, step: int) -> None:
        """Raise RunAborted if a stop was requested."""
        if self._stop.is_set():
            raise RunAborted(f"{self.reason} after step {step}")

    @contextlib.contextmanager
    def sigint_handler(self) -> Iterator["RunControl"]:
        """First Ctrl-C: stop after the current step. Second: KeyboardInterrupt now."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):  # noqa: ARG001 - signal API
            if self._stop.is_set():
                raise KeyboardInterrupt
            self.request_stop("interrupted by the operator (Ctrl-C)")
            print("\nstopping after the current step (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
