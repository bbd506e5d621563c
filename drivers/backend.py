"""The ChipBackend contract: the one interface every chip implements.

The simulated chip, the FPGA driver and the replay backend all implement it, so experiment code
never names a concrete backend. Every call is a batch of numpy arrays; there is no per-device
call, because a per-device round trip over a serial link would make training take weeks.

Beyond the contract, a backend may have optional abilities (sequence numbers, a saved state,
a simulated clock, ...): each is a typed Protocol in drivers.abilities, found through any
stack of layers (drivers.layers.BackendLayer: a safety guard, the resume layer, ...) with
drivers.abilities.find_ability. A `Capability` is what a chip *says* about itself in
ChipInfo.capabilities (over the wire: a bit of the INFO reply, WIRE_CAPABILITY_BITS); a
Protocol is what a backend object *has*. docs/backends.md says which is which.
"""
from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Dict, FrozenSet, Iterable, Mapping, Optional, Tuple, Type

import numpy as np

from drivers.geometry import Geometry
from drivers.pulse import PulseSpec
from firmware_interface.protocol import Capability as WireCapability


class Capability(str, enum.Enum):
    """Optional abilities a backend may advertise in ChipInfo.capabilities."""

    MATVEC = "matvec"            # analog weighted sums on chip
    EXACT_READ = "exact_read"    # noise-free read of the true state (simulators only)
    STATE_FILE = "state_file"    # chip state can be saved and restored (simulators only)
    SIM_CLOCK = "sim_clock"      # simulated time: clock_s and advance_clock() (simulators only)
    PROGRAM_READ = "program_read"  # program_read() is one command: one round trip, one wire seq
    HISTORY = "history"          # reports its boot identity and command history (firmware 1.3)


#: The INFO reply's capability bit of each Capability: the one table both ends of the link
#: (drivers.fpga reading a HELLO answer, sim_backend.emulator writing one) translate through.
WIRE_CAPABILITY_BITS: Mapping[Capability, WireCapability] = MappingProxyType({
    Capability.MATVEC: WireCapability.MATVEC,
    Capability.EXACT_READ: WireCapability.EXACT_READ,
    Capability.STATE_FILE: WireCapability.STATE_FILE,
    Capability.SIM_CLOCK: WireCapability.SIM_CLOCK,
    Capability.PROGRAM_READ: WireCapability.PROGRAM_READ,
    Capability.HISTORY: WireCapability.HISTORY,
})


def capabilities_from_wire(bits: int) -> FrozenSet[str]:
    """The Capability values (ChipInfo.capabilities) an INFO reply's bit field advertises;
    bits this host does not know are ignored (a newer firmware may offer more)."""
    return frozenset(cap.value for cap, bit in WIRE_CAPABILITY_BITS.items()
                     if int(bits) & int(bit))


def capabilities_to_wire(names: Iterable[str]) -> WireCapability:
    """The INFO reply's bit field for Capability values; ValueError names an unknown one."""
    bits = WireCapability(0)
    for name in names:
        bits |= WIRE_CAPABILITY_BITS[Capability(name)]
    return bits


@dataclass(frozen=True)
class ChipInfo:
    """What a chip says about itself in its HELLO answer."""

    chip_id: str
    firmware_version: str
    protocol_version: str
    geometry: Geometry
    g_min_us: float
    g_max_us: float
    adc_bits: int
    capabilities: FrozenSet[str] = frozenset()
    hard_limits: Dict[str, float] = field(default_factory=dict)

    def supports(self, capability: Capability | str) -> bool:
        return Capability(capability).value in self.capabilities

    def to_dict(self) -> dict:
        return {
            "chip_id": self.chip_id,
            "firmware_version": self.firmware_version,
            "protocol_version": self.protocol_version,
            "geometry": {"arrays": self.geometry.arrays, "rows": self.geometry.rows,
                         "cols": self.geometry.cols},
            "g_min_us": self.g_min_us,
            "g_max_us": self.g_max_us,
            "adc_bits": self.adc_bits,
            "capabilities": sorted(self.capabilities),
            "hard_limits": dict(self.hard_limits),
        }


def matvec_operands(addresses: np.ndarray, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The (m, n) address block and x (float64, shape (n,) or (n, k)) of a MATVEC, or a
    ChipError saying which shape is wrong; shared by every backend."""
    from drivers.errors import ChipError
    block = np.asarray(addresses)
    if block.ndim != 2:
        raise ChipError(f"matvec needs a 2-D block of addresses, got shape {block.shape}",
                        command="MATVEC")
    xv = np.asarray(x, dtype=np.float64)
    if xv.ndim not in (1, 2) or xv.shape[0] != block.shape[1]:
        raise ChipError(f"x has shape {xv.shape}, the block {block.shape[1]} columns",
                        command="MATVEC")
    bad = np.flatnonzero(~np.isfinite(xv))
    if bad.size:
        j = np.unravel_index(int(bad[0]), xv.shape)
        raise ChipError(f"x{list(map(int, j))} is {xv[j]}: a line voltage must be finite",
                        command="MATVEC")
    return block, xv


class ChipBackend(abc.ABC):
    """A PCM chip, real or simulated.

    Addresses are flat uint32 device indices (see drivers.geometry). Conductances are float32
    in microsiemens.
    """

    @abc.abstractmethod
    def info(self) -> ChipInfo:
        """Identity, geometry, conductance range, capabilities and hard limits."""

    @abc.abstractmethod
    def read(self, addresses: np.ndarray) -> np.ndarray:
        """Read the conductance of each device, in µS, as float32 (one batch).

        Addresses within one batch are unique, as for program().
        """

    @abc.abstractmethod
    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        """Apply n_pulses[i] copies of `pulse` to device addresses[i], as one batch.

        Addresses within one batch are unique. Programming is blind: nothing is verified.
        """

    def program_read(self, addresses: np.ndarray, n_pulses: np.ndarray,
                     pulse: PulseSpec) -> np.ndarray:
        """Program a batch, then read the same devices back: exactly program() then read().

        The training loop reads back every device it pulses, so a backend behind a link
        overrides this with one command (and lists Capability.PROGRAM_READ), halving the
        round trips of a step. Returns the values in the order of `addresses`.
        """
        self.program(addresses, n_pulses, pulse)
        return self.read(addresses)

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Analog weighted sums I = G·V over a block of devices.

        `addresses` is an (m, n) block, `x` has shape (n,) or (n, k); returns (m,) or (m, k)
        float32 currents in µS·V units (µA). Only where info() lists Capability.MATVEC.
        """
        from drivers.errors import NotSupportedError
        raise NotSupportedError("this backend has no on-chip matvec", command="MATVEC")

    def read_exact(self, addresses: np.ndarray) -> np.ndarray:
        """Noise-free conductances (drift applied), where info() lists EXACT_READ."""
        from drivers.errors import NotSupportedError
        raise NotSupportedError("this backend has no exact read", command="READ_EXACT")

    @abc.abstractmethod
    def safe_state(self) -> None:
        """Leave every word and bit line idle; safe to call at any time, repeatedly."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the chip. Calls safe_state() first where the link still works."""

    def __enter__(self) -> "ChipBackend":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()
