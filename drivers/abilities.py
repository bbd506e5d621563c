"""Optional backend abilities as typed Protocols, and the one way to find them in a stack.

The ChipBackend contract (drivers.backend) is what every backend does. Some code needs more:
resume re-sends a command under its wire sequence number, the chip-state keeper saves an
in-process chip, characterisation waits on a simulator's clock, the trainer checks its MATVEC
voltage against the station's limits. Each of those abilities is a Protocol here, and
`find_ability(backend, Protocol)` returns the layer of a stack that has it (or None): the
only code that looks through layers (drivers.layers.BackendLayer.inner).

A Protocol is what a backend object has; a Capability (ChipInfo.capabilities) is what the
chip says it can do. Where both exist (ABILITY_CAPABILITY), an ability counts only when the
chip advertises its capability: FpgaChip has `advance_clock` for every chip, but only a
simulator behind the emulator lists SIM_CLOCK and answers it.

Presence is checked without calling anything (inspect.getattr_static): on FpgaChip,
`clock_s` is a round trip, which an `isinstance(chip, ClockedBackend)` on Python < 3.12
would make.
"""
from __future__ import annotations

import inspect
import os
from types import MappingProxyType
from typing import (TYPE_CHECKING, Dict, Generic, Mapping, Optional, Protocol, Tuple, Type,
                    TypeVar, runtime_checkable)

import numpy as np

from drivers.backend import Capability, ChipBackend
from drivers.layers import BackendLayer
from drivers.pulse import PulseSpec

if TYPE_CHECKING:
    from drivers.chip_history import HistoryPosition
    from drivers.safety import SafetyLimits


@runtime_checkable
class SequencedBackend(Protocol):
    """Sends every command under a wire sequence number the firmware remembers.

    Implemented by drivers.fpga.FpgaChip and the resume layer (hil.replay.resume.ResumeBackend).
    The run log journals each command with `next_wire_seq()`; resume re-sends a command a
    kill left uncertain under that number with `use_seq()`, and the firmware answers it from
    memory if it had executed it, so nothing is applied twice.
    """

    def next_wire_seq(self) -> int:
        """The sequence number the next command goes out under; -1 when it goes out without
        one, -2 (hil.run_log.NOT_SENT) when it is served without reaching a chip."""

    def use_seq(self, seq: int) -> None:
        """Send the next command under `seq`, and count on from it."""


@runtime_checkable
class ClockedBackend(Protocol):
    """Simulated time (Capability.SIM_CLOCK): only commands and advance_clock move it.

    Implemented by sim_backend.SimulatedChip and, for a simulator behind the firmware
    emulator, drivers.fpga.FpgaChip. Characterisation times a drift measurement by it and
    waits by advancing it instead of sleeping.
    """

    @property
    def clock_s(self) -> float:
        """The chip's clock, s."""

    def advance_clock(self, seconds: float) -> float:
        """Let `seconds` pass with the chip idle; returns the new clock."""


@runtime_checkable
class StatefulBackend(ClockedBackend, Protocol):
    """A chip whose whole state is saved to and restored from a file (Capability.STATE_FILE).

    Implemented by sim_backend.SimulatedChip (in-process `sim://`): its state dies with the
    process, so hil.chip_state.ChipStateKeeper saves it at every commit of the run log. A saved
    state is placed in the log by its clock and by the commands the chip had executed.
    """

    def save_state(self, path: str | os.PathLike) -> None:
        """Write the whole chip state to `path`, atomically."""

    def load_state(self, path: str | os.PathLike) -> None:
        """Restore a state save_state wrote; refuses one of another chip."""

    @property
    def commands_executed(self) -> int:
        """Commands (reads, programs, MATVECs) executed since the chip was built."""


@runtime_checkable
class GuardedBackend(Protocol):
    """A layer that enforces a station's safety limits: a command it refuses never reaches
    the layers below (drivers.safety.LimitedBackend).

    Its check_* methods are the very checks its commands run, so a caller can ask in advance
    whether a whole plan would pass before sending its first command.
    """

    @property
    def station_limits(self) -> "SafetyLimits":
        """The limits enforced (from the station file)."""

    @property
    def refused(self) -> int:
        """Commands refused so far."""

    def check_program(self, addresses: np.ndarray, n_pulses: np.ndarray,
                      pulse: PulseSpec) -> None:
        """Raise SafetyLimitError if program() of this batch would be refused."""

    def check_read(self, addresses: np.ndarray) -> None:
        """Raise SafetyLimitError if read() of these devices would be refused."""

    def check_matvec(self, addresses: np.ndarray, x: np.ndarray) -> None:
        """Raise SafetyLimitError if matvec() of this block and input would be refused."""


@runtime_checkable
class AdcReadout(Protocol):
    """Reads that arrive as ADC codes whose full scale the chip reports (drivers.fpga.FpgaChip:
    from the HELLO answer). Characterisation records it, so a model fit knows where reads
    saturate."""

    @property
    def adc_full_scale_us(self) -> float:
        """The conductance of the largest ADC code, µS."""


@runtime_checkable
class ChipHistory(Protocol):
    """Says which boot the chip is on and how far its command history goes
    (Capability.HISTORY: firmware of protocol 1.3 behind drivers.fpga.FpgaChip).

    Whoever continues something on a chip checks it first (drivers.chip_history): resume
    against the log it continues (hil.run_history), the driver against its own session after
    every reconnect. A power-cycled chip is another boot; a chip another client, or a later
    segment of a run, has used since is further than the record.
    """

    @property
    def boot_id(self) -> str:
        """This boot of the chip's firmware, 16 hex digits (from the HELLO answer)."""

    def history(self) -> "HistoryPosition":
        """The boot and the state-changing commands executed in it (one round trip)."""


#: The abilities find_ability knows, in the order docs/backends.md lists them.
ABILITIES: Tuple[type, ...] = (SequencedBackend, ClockedBackend, StatefulBackend,
                               GuardedBackend, AdcReadout, ChipHistory)

#: The Capability a chip must advertise for an ability to count (the rest need none).
ABILITY_CAPABILITY: Mapping[type, Capability] = MappingProxyType({
    ClockedBackend: Capability.SIM_CLOCK,
    StatefulBackend: Capability.STATE_FILE,
    ChipHistory: Capability.HISTORY,
})

A = TypeVar("A")
_MISSING = object()


def _members(ability: type) -> Tuple[str, ...]:
    """The public names an ability's Protocol (and the Protocols it extends) declares."""
    names = set()
    for base in ability.__mro__:
        if base in (object, Protocol, Generic):
            continue
        names.update(n for n in (*vars(base), *getattr(base, "__annotations__", {}))
                     if not n.startswith("_"))
    return tuple(sorted(names))


_MEMBERS: Dict[type, Tuple[str, ...]] = {a: _members(a) for a in ABILITIES}


def _capabilities(ability: type) -> Tuple[Capability, ...]:
    return tuple(ABILITY_CAPABILITY[b] for b in ability.__mro__ if b in ABILITY_CAPABILITY)


def has_ability(backend: ChipBackend, ability: type) -> bool:
    """Whether `backend` itself (not a layer below it) has `ability`: every member of the
    Protocol present, and the chip advertising the Capability the ability stands for."""
    members = _MEMBERS.get(ability)
    if members is None:
        raise TypeError(f"{getattr(ability, '__name__', ability)!r} is not a backend ability "
                        f"(one of {', '.join(a.__name__ for a in ABILITIES)})")
    if any(inspect.getattr_static(backend, n, _MISSING) is _MISSING for n in members):
        return False
    caps = _capabilities(ability)
    if not caps:
        return True
    info = backend.info()
    return all(info.supports(c) for c in caps)


def find_ability(backend: ChipBackend, ability: Type[A]) -> Optional[A]:
    """The outermost layer of `backend`'s stack that has `ability` (see has_ability), or None.

    Starts at `backend` and goes down through BackendLayer.inner: a layer that has the
    ability itself (the resume layer's sequence numbers) hides the one below it.
    """
    layer: ChipBackend = backend
    while True:
        if has_ability(layer, ability):
            return layer   # type: ignore[return-value]
        if not isinstance(layer, BackendLayer):
            return None
        layer = layer.inner


__all__ = ["ABILITIES", "ABILITY_CAPABILITY", "AdcReadout", "ChipHistory", "ClockedBackend",
           "GuardedBackend", "SequencedBackend", "StatefulBackend", "find_ability",
           "has_ability"]
