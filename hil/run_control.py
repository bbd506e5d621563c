"""Operator control of a running experiment: stop after this step, or stop now.

The first Ctrl-C asks the run to stop at the next step boundary: the step in flight finishes,
the log is flushed and marked aborted, and the chip is left in its safe state. A second Ctrl-C
raises KeyboardInterrupt at once; the run still flushes what it holds on the way out.
`recorded_run` is how every experiment ends: one status, reason and summary for the
recorder, and the chip left safe, whatever stopped it.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional

from drivers.backend import ChipBackend
from hil.recorder import Recorder
from hil.run_state import RunState

log = logging.getLogger("pcm_hil.run_control")


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


@dataclass
class RunEnd:
    """How a run ended, as its recorder is told: the body of `recorded_run` sets `summary`
    as its last act; status and reason follow from how the body exits."""

    status: RunState = RunState.FAILED
    reason: Optional[str] = None
    summary: Optional[Dict[str, Any]] = None


@contextlib.contextmanager
def recorded_run(recorder: Recorder, backend: ChipBackend,
                 step: Callable[[], int]) -> Iterator[RunEnd]:
    """Run the body as one experiment: completed when it returns, aborted on RunAborted or
    a second Ctrl-C (`step()` names where), failed on any other error (which propagates).
    The recorder hears the end once; the chip is put in its safe state either way."""
    end = RunEnd()
    try:
        yield end
        end.status = RunState.COMPLETED
    except RunAborted as e:
        end.status, end.reason = RunState.ABORTED, str(e)
        raise
    except KeyboardInterrupt:
        end.status = RunState.ABORTED
        end.reason = f"interrupted at once by the operator at step {step()}"
        raise
    except BaseException as e:
        end.reason = f"{type(e).__name__}: {e}"
        raise
    finally:
        recorder.finish(end.status, end.reason,
                        end.summary if end.status is RunState.COMPLETED else None)
        try:
            backend.safe_state()
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("safe_state failed after the run")
