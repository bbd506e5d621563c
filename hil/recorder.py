"""The recorder: the one place every chip command (read, program, MATVEC) is reported to.

The training loop never talks to a log directly; ChipIO (hil.chip_io) reports each command
here, and the trainer reports snapshots, metrics and status. The HDF5 run log implements
this interface; NullRecorder is used when a run is not logged.

`purpose` tags say why a command was sent: "init_reset", "init_set", "update", "readback",
"refresh_reset", "refresh_set", "refresh_readback", "full_read".
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

from drivers.pulse import PulseSpec


class Recorder:
    """Base recorder: every hook is a no-op. Subclasses override what they store."""

    def begin(self, *, config: Mapping[str, Any], provenance: Mapping[str, Any],
              layout: Mapping[str, np.ndarray]) -> None:
        """Called once before the first chip command of a run."""

    def on_read(self, step: int, addresses: np.ndarray, values: np.ndarray,
                purpose: str) -> None:
        """A read batch and the values it returned."""

    def before_read(self, step: int, addresses: np.ndarray, purpose: str, *,
                    wire_seq: int = -1) -> None:
        """Write-ahead: a read about to be sent (`wire_seq`: its sequence number on the wire,
        -1 when the backend has none), so resume can re-send a read a kill cut off."""

    def before_program(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                       pulse: PulseSpec, purpose: str, *, wire_seq: int = -1) -> None:
        """Write-ahead: a program batch about to be sent (`wire_seq` as for before_read)."""

    def before_program_read(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                            pulse: PulseSpec, purpose: str, read_purpose: str, *,
                            wire_seq: int = -1) -> None:
        """Write-ahead of a combined program-then-read-back (one command on the wire): the
        same as before_program then before_read, which a recorder may store at once."""
        kw = {"wire_seq": wire_seq} if wire_seq != -1 else {}   # as ChipIO passes it
        self.before_program(step, addresses, n_pulses, pulse, purpose, **kw)
        self.before_read(step, addresses, read_purpose, **kw)

    def on_program(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                   pulse: PulseSpec, purpose: str) -> None:
        """A program batch the chip acknowledged."""

    def on_matvec(self, step: int, block: np.ndarray, x: np.ndarray,
                  values: np.ndarray) -> None:
        """An on-chip weighted sum: the (m, n) address block, the line voltages x (n,) or
        (n, k), and the currents the chip returned."""

    def on_snapshot(self, step: int, g_us: np.ndarray, chi: Mapping[str, np.ndarray]) -> None:
        """Full state the host holds: conductance of every mapped device, and χ per layer."""

    def on_step_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Per-step metrics (loss, pulses, refreshes...)."""

    def on_monitor(self, step: int, readings: Mapping[str, float]) -> None:
        """Instrument readings taken by the station's monitors at this step."""

    def on_epoch_metrics(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Per-epoch metrics (train/test accuracy, baseline accuracy...)."""

    def on_event(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Something that happened to the run rather than in it: a monitor pausing or
        resuming it ("run_paused", "run_resumed"), a command the safety layer refused
        ("command_refused": refused, so never sent), a resumed segment starting
        ("segment_started"). `detail` is JSON-able; replay neither serves nor compares it."""

    def flush(self) -> None:
        """Make everything recorded so far durable."""

    def finish(self, status: str, reason: Optional[str] = None,
               summary: Optional[Dict[str, Any]] = None) -> None:
        """Final status: completed, aborted or failed (with the reason)."""


class NullRecorder(Recorder):
    """Records nothing."""
