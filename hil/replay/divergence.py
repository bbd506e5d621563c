"""ReplayDivergence: a re-run that differs from its log, and where it first differs.

Raised by the replay backend (a command that is not the logged one), the verifying recorder
(a metric or snapshot that is not the logged one) and a resume's fast-forward (a command that
is not the journaled one): whatever found it, the operator reads the step, the command index
and the device.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from drivers.errors import HilError


class ReplayDivergence(HilError):
    """A re-run that differs from its log: the first difference, with where it happened."""

    def __init__(self, message: str, *, step: Optional[int] = None,
                 command_index: Optional[int] = None, device: Optional[int] = None,
                 command: Optional[str] = None) -> None:
        self.step = step
        self.command_index = command_index
        self.device = device
        self.command = command
        self.detail = message
        where = []
        if step is not None:
            where.append(f"step {step}")
        if command_index is not None:
            where.append(f"command #{command_index}" + (f" ({command})" if command else ""))
        if device is not None:
            where.append(f"device {device}")
        super().__init__(f"replay diverged at {', '.join(where) or 'the start'}: {message}")


def first_difference(got: np.ndarray, want: np.ndarray) -> int:
    """Index of the first element where two 1-D arrays differ (the shorter one's length when
    one is a prefix of the other)."""
    n = min(got.size, want.size)
    neq = np.flatnonzero(got[:n] != want[:n])
    return int(neq[0]) if neq.size else n
