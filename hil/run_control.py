"""Operator control of a running experiment: stop after this step, or stop now.

The first Ctrl-C (or SIGTERM, which a supervisor or `kill` sends) asks the run to stop at the
next step boundary: the step in flight finishes, the log is flushed and marked aborted, and
the chip is left in its safe state. A second one raises KeyboardInterrupt at once; the run
still flushes what it holds on the way out.
`recorded_run` is how every experiment ends: one status, reason and summary for the
recorder, and the chip left safe, whatever stopped it (a full disk included).
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

#: Set by the CLI's SIGINT handler at a Ctrl-C; cleared when a command installs it.
_interrupted = threading.Event()


def _interrupt_handler(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal API
    _interrupted.set()
    raise KeyboardInterrupt


_previous_unraisable_hook = sys.unraisablehook


def _unraisable_hook(unraisable: Any) -> None:
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        _previous_unraisable_hook(unraisable)


def install_interrupt_handler() -> None:
    """SIGINT for a command without a RunControl of its own (replay, --verify, fit-model):
    KeyboardInterrupt, as Python's own handler raises, and remembered. Python drops an
    exception raised while a weakref callback or a `__del__` runs (and prints "Exception
    ignored in ..."), so a Ctrl-C that lands there would be lost and the command would run
    on to its end; `raise_if_interrupted` at a command's step boundaries (--verify's)
    raises it again, and the dropped one is not printed. Commands that end on Ctrl-C by
    design (watch, emulate) catch the first one as before. Also installed where the shell
    started the process with SIGINT ignored (a script's background job)."""
    global _previous_unraisable_hook
    _interrupted.clear()
    signal.signal(signal.SIGINT, _interrupt_handler)
    if sys.unraisablehook is not _unraisable_hook:
        _previous_unraisable_hook, sys.unraisablehook = sys.unraisablehook, _unraisable_hook


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if the CLI's SIGINT handler has seen a Ctrl-C."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


class RunAborted(Exception):
    """Raised at a step boundary after the operator asked the run to stop (`started`:
    False when it stopped before its first command, with nothing sent to the chip)."""

    def __init__(self, message: str, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


class RunControl:
    """A stop flag the training loop checks between steps (thread- and signal-safe)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.reason = "stopped by the operator"
        self.signal_received: Optional[int] = None

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
        """First Ctrl-C (SIGINT) or SIGTERM: stop after the current step. A second one:
        KeyboardInterrupt now. `signal_received` says which signal asked first."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):  # noqa: ARG001 - signal API
            if self._stop.is_set():
                raise KeyboardInterrupt
            self.signal_received = signum
            if signum == signal.SIGTERM:
                self.request_stop("terminated (SIGTERM)")
                print("\nSIGTERM: stopping after the current step (a second one stops at "
                      "once)", file=sys.stderr, flush=True)
            else:
                self.request_stop("interrupted by the operator (Ctrl-C)")
                print("\nstopping after the current step (Ctrl-C again to stop at once)",
                      file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    @property
    def exit_status(self) -> int:
        """The shell's code for the signal that stopped the run: 143 for SIGTERM (128 + 15,
        what a supervisor expects of a terminated process), 130 for Ctrl-C."""
        return 143 if self.signal_received == signal.SIGTERM else 130


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
        try:
            recorder.finish(end.status, end.reason,
                            end.summary if end.status is RunState.COMPLETED else None)
        finally:
            # Whatever happens to the log (a full disk): the chip's lines go idle.
            try:
                backend.safe_state()
            except Exception:  # noqa: BLE001 - the original error matters more
                log.exception("safe_state failed after the run")
