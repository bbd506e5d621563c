"""Pulse specifications: what a program command applies to each device."""
from __future__ import annotations

import enum
from dataclasses import dataclass


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
