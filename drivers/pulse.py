"""Pulse specifications: what a program command applies to each device."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from drivers.errors import ChipError, SafetyLimitError


class PulseKind(enum.IntEnum):
    """Kind of programming pulse. The values are the wire codes."""

    SET = 1    # partial SET: crystallises a little more, conductance goes up
    RESET = 2  # melt-quench: back to the amorphous, low-conductance state


@dataclass(frozen=True)
class PulseSpec:
    """One pulse shape. Units are in the names; the chip applies `n` identical copies."""

    kind: PulseKind
    amplitude_v: float
    width_ns: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", PulseKind(self.kind))
        if not self.amplitude_v > 0:
            raise ValueError(f"pulse amplitude_v must be > 0, got {self.amplitude_v}")
        if not self.width_ns > 0:
            raise ValueError(f"pulse width_ns must be > 0, got {self.width_ns}")

    @classmethod
    def set(cls, amplitude_v: float = 1.0, width_ns: float = 50.0) -> "PulseSpec":
        return cls(PulseKind.SET, amplitude_v, width_ns)

    @classmethod
    def reset(cls, amplitude_v: float = 2.5, width_ns: float = 50.0) -> "PulseSpec":
        return cls(PulseKind.RESET, amplitude_v, width_ns)


DEFAULT_SET = PulseSpec.set()
DEFAULT_RESET = PulseSpec.reset()


def check_pulse_counts(addresses: np.ndarray, n_pulses: np.ndarray, max_pulses: int,
                       command: str, limit_name: str = "pulses per device") -> np.ndarray:
    """n_pulses as an array matching `addresses`, every count in 0..max_pulses.

    Raises ChipError for a shape mismatch and SafetyLimitError naming the limit and the
    offending devices otherwise; every backend checks a program batch this way before it
    touches a device or the link.
    """
    n = np.asarray(n_pulses)
    if n.shape != np.shape(addresses):
        raise ChipError(f"n_pulses has shape {n.shape}, addresses {np.shape(addresses)}",
                        command=command)
    if n.size and (np.minimum.reduce(n, axis=None) < 0
                   or np.maximum.reduce(n, axis=None) > max_pulses):
        bad = (n < 0) | (n > max_pulses)
        raise SafetyLimitError(f"{limit_name} must be in 0..{max_pulses}", command=command,
                               devices=np.asarray(addresses)[bad])
    return n
