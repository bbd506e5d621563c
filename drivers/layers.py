"""Backend layers: a backend that wraps another and is itself a ChipBackend.

A run's backend is a stack: the chip (FpgaChip, SimulatedChip) at the bottom, layers above it
(the station's safety guard, drivers.safety.LimitedBackend; later a batch splitter, the
resume layer). A layer delegates every contract method explicitly and names the backend it
wraps in one declared attribute, `inner`; nothing is forwarded by attribute lookup, so a
layer never passes a command down that it was meant to check. The optional abilities of the
layers below (sequence numbers, a saved state, a simulated clock, ...) are found with
drivers.abilities.find_ability, the one function that walks a stack.
"""
from __future__ import annotations

import numpy as np

from drivers.backend import ChipBackend, ChipInfo
from drivers.pulse import PulseSpec


class BackendLayer(ChipBackend):
    """A ChipBackend over another one; every contract method passes straight down.

    A subclass overrides what it changes. One that checks or reshapes program() must also
    override program_read(): the base sends program_read() down whole (one command on a chip
    that combines them), not as program() then read().
    """

    def __init__(self, inner: ChipBackend) -> None:
        if not isinstance(inner, ChipBackend):
            raise TypeError(f"a backend layer wraps a ChipBackend, got {type(inner).__name__}")
        self._inner = inner

    @property
    def inner(self) -> ChipBackend:
        """The backend this layer wraps (the next one down the stack)."""
        return self._inner

    def info(self) -> ChipInfo:
        return self._inner.info()

    def read(self, addresses: np.ndarray) -> np.ndarray:
        return self._inner.read(addresses)

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        self._inner.program(addresses, n_pulses, pulse)

    def program_read(self, addresses: np.ndarray, n_pulses: np.ndarray,
                     pulse: PulseSpec) -> np.ndarray:
        return self._inner.program_read(addresses, n_pulses, pulse)

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self._inner.matvec(addresses, x)

    def read_exact(self, addresses: np.ndarray) -> np.ndarray:
        return self._inner.read_exact(addresses)

    def safe_state(self) -> None:
        self._inner.safe_state()

    def close(self) -> None:
        self._inner.close()


__all__ = ["BackendLayer"]
