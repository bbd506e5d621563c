"""The named records a run log hands back: a status change, a run event, a pulse batch, a
position in the log.

Shared by the reader (rows of the committed tables) and the journal (commands sent after
the last commit), which both build them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import numpy as np

from drivers.pulse import PulseKind, PulseSpec
from hil.run_state import RunState


@dataclass(frozen=True)
class RunStatus:
    """One row of the status history. `status` is a RunState (equal to its string); a code
    this reader does not know reads as the string 'code N'."""

    status: Union[RunState, str]
    reason: Optional[str]
    summary: Optional[Dict[str, Any]]
    step: int
    time_unix: float


@dataclass(frozen=True)
class RunEvent:
    """One row of /events: something that happened to the run at `step` (a pause, a
    command the safety layer refused, a resumed segment starting), with its detail."""

    step: int
    time_unix: float
    kind: str
    detail: Dict[str, Any]


@dataclass(frozen=True)
class PulseBatch:
    """One logged program command."""

    batch_id: int
    seq: int
    step: int
    kind: PulseKind
    amplitude_v: float
    width_ns: float
    purpose: str
    status: str          # "sent" (announced, not acknowledged) or "acked"
    addresses: np.ndarray
    n_pulses: np.ndarray
    wire_seq: int = -1   # sequence number on the wire (-1: unknown), journal only

    @property
    def pulse(self) -> PulseSpec:
        return PulseSpec(self.kind, self.amplitude_v, self.width_ns)


@dataclass(frozen=True)
class LogPosition:
    """A point of the run in every table of its log: the rows logged before it. A snapshot's
    position (schema 1.3) is where a reader starts to serve the run from that snapshot on,
    without scanning what came before; `origin()` is the start of the log."""

    step: int
    seq: int               # commands (reads and programs) sent before it
    read_batch: int        # rows of /reads/batches
    read_row: int          # rows of /reads/events
    pulse_batch: int       # rows of /pulses/batches
    pulse_row: int         # rows of /pulses/events
    matvec_batch: int      # rows of /matvec/batches
    matvec_row: int        # rows of /matvec/events
    step_metric_row: int   # rows of /metrics/step
    epoch_metric_row: int  # rows of /metrics/epoch

    @classmethod
    def origin(cls) -> "LogPosition":
        return cls(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class LogHeader:
    """What any run log says about its run, whether or not the run began logging: a log
    whose run ended (or was killed) before its first command holds only this.

    began: the run began (the log has its tables; RunLog reads the rest).
    config: the experiment config as logged (a mapping, as in /meta/config_yaml).
    provenance: the provenance known when the file was written (for a log that never began:
        what was known before the run started - the station, the chip-state file, earlier
        segments).
    final_status, final_reason: how a run that never began ended (None: it was killed, or
        it is starting).
    """

    path: str
    began: bool
    config: Dict[str, Any]
    provenance: Dict[str, Any]
    final_status: Optional[str] = None
    final_reason: Optional[str] = None


__all__ = ["LogHeader", "LogPosition", "PulseBatch", "RunEvent", "RunStatus"]
