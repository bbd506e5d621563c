"""The named records a run log hands back: a status change, a run event, a pulse batch.

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


__all__ = ["PulseBatch", "RunEvent", "RunStatus"]
