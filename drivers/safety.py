"""Safety limits, and the guard that enforces them before anything reaches the link.

Two owners of limits, one rule for each kind of check:

* the chip's own hard limits (`HardLimits`: what its firmware refuses, reported in its HELLO
  answer as ChipInfo.hard_limits), which every chip backend checks before it sends or
  applies anything (the firmware emulator checks them again and refuses with a NACK);
* a station's limits (`SafetyLimits`, from the station file), which `LimitedBackend` enforces
  for every command of a training run or a characterisation, whatever backend is behind.

Both check a pulse shape with `check_pulse_shape` and MATVEC inputs with
`check_line_voltages`, and every message names whose limit was exceeded.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Mapping, Optional

import numpy as np

from drivers.backend import ChipBackend
from drivers.errors import SafetyLimitError
from drivers.layers import BackendLayer
from drivers.pulse import PulseKind, PulseSpec, check_pulse_counts


def check_pulse_shape(pulse: PulseSpec, amplitude_v_max: Optional[float],
                      width_ns_max: Optional[float], *, amplitude_limit: str,
                      width_limit: str, command: Optional[str] = None) -> None:
    """Raise SafetyLimitError if `pulse` is above either maximum (None: no limit); the
    message names the limit (`amplitude_limit`, `width_limit`: whose limit, and which key)."""
    cmd = command or f"PROGRAM_{pulse.kind.name}"
    if amplitude_v_max is not None and pulse.amplitude_v > amplitude_v_max:
        raise SafetyLimitError(f"{pulse.kind.name} amplitude {pulse.amplitude_v} V exceeds "
                               f"{amplitude_limit} = {amplitude_v_max} V", command=cmd)
    if width_ns_max is not None and pulse.width_ns > width_ns_max:
        raise SafetyLimitError(f"{pulse.kind.name} width {pulse.width_ns} ns exceeds "
                               f"{width_limit} = {width_ns_max} ns", command=cmd)


@dataclass(frozen=True)
class HardLimits:
    """A chip's own limits: what its firmware refuses (None: the chip sets no such limit).

    Keys and order are those of the HELLO answer's hard-limit list (ChipInfo.hard_limits).
    """

    max_pulses_per_device: Optional[int] = None
    set_amplitude_v_max: Optional[float] = None
    reset_amplitude_v_max: Optional[float] = None
    width_ns_max: Optional[float] = None
    read_v_max: Optional[float] = None   # MATVEC input lines

    @classmethod
    def from_dict(cls, limits: Mapping[str, float]) -> "HardLimits":
        """From ChipInfo.hard_limits; keys this host does not know are ignored (a newer
        firmware may report more)."""
        known = {f.name for f in fields(cls)}
        kw = {k: float(v) for k, v in limits.items() if k in known}
        if "max_pulses_per_device" in kw:
            kw["max_pulses_per_device"] = int(kw["max_pulses_per_device"])
        return cls(**kw)   # type: ignore[arg-type]

    def as_dict(self) -> Dict[str, float]:
        """The limits the chip sets, as ChipInfo.hard_limits carries them."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None}

    def check_pulse(self, pulse: PulseSpec, command: Optional[str] = None) -> None:
        kind = pulse.kind.name.lower()
        amax = self.set_amplitude_v_max if pulse.kind is PulseKind.SET \
            else self.reset_amplitude_v_max
        check_pulse_shape(pulse, amax, self.width_ns_max,
                          amplitude_limit=f"the chip's {kind}_amplitude_v_max",
                          width_limit="the chip's width_ns_max", command=command)

    def check_program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec,
                      command: str, max_pulses: Optional[int] = None) -> np.ndarray:
        """Check one program batch (pulse counts, then pulse shape); returns the counts as
        an array. `max_pulses` narrows max_pulses_per_device (a wire's pulse-count field)."""
        most = [m for m in (self.max_pulses_per_device, max_pulses) if m is not None]
        n = check_pulse_counts(addresses, n_pulses,
                               int(min(most)) if most else np.iinfo(np.int64).max, command,
                               "pulses per device (the chip's max_pulses_per_device)")
        self.check_pulse(pulse, command)
        return n

    def check_line_voltages(self, x: np.ndarray) -> None:
        """MATVEC inputs against the chip's read_v_max (where it sets one)."""
        if self.read_v_max is not None:
            check_line_voltages(x, self.read_v_max, "the chip's read_v_max")


@dataclass(frozen=True)
class PulseLimits:
    """Largest pulse of one kind the bench may send."""

    amplitude_v_max: float
    width_ns_max: float

    def __post_init__(self) -> None:
        for k in ("amplitude_v_max", "width_ns_max"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)}")


@dataclass(frozen=True)
class SafetyLimits:
    """Limits checked on the host before any command reaches the link.

    max_pulses_per_device: pulses one device may get in one program command.
    max_pulses_per_step: pulses (all devices) one training step may send.
    max_batch_devices: devices in one program or read command.
    supply_current_max_a: narrows every power supply's current-limit range.
    read_v_max: largest |voltage| a MATVEC may put on an input line. A read above a PCM
        cell's threshold voltage can switch it, so an on-chip weighted sum is a disturb risk
        that a plain READ (at the firmware's own read voltage) is not.
    """

    set: PulseLimits
    reset: PulseLimits
    max_pulses_per_device: int
    max_pulses_per_step: int
    max_batch_devices: int
    supply_current_max_a: Optional[float] = None
    read_v_max: Optional[float] = None

    def __post_init__(self) -> None:
        for k in ("max_pulses_per_device", "max_pulses_per_step", "max_batch_devices"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("supply_current_max_a", "read_v_max"):
            v = getattr(self, k)
            if v is not None and not v > 0:
                raise ValueError(f"{k} must be > 0, got {v}")

    def pulse_limits(self, kind: PulseKind) -> PulseLimits:
        return self.set if PulseKind(kind) is PulseKind.SET else self.reset

    def check_pulse(self, pulse: PulseSpec, command: Optional[str] = None) -> None:
        """Raise SafetyLimitError if the pulse shape exceeds this bench's limits."""
        lim = self.pulse_limits(pulse.kind)
        name = pulse.kind.name.lower()
        check_pulse_shape(pulse, lim.amplitude_v_max, lim.width_ns_max,
                          amplitude_limit=f"safety.{name}.amplitude_v_max",
                          width_limit=f"safety.{name}.width_ns_max", command=command)

    def check_program(self, addresses: np.ndarray, n_pulses: np.ndarray,
                      pulse: PulseSpec) -> None:
        """Check one program command (pulse shape, batch size, pulses per device)."""
        cmd = f"PROGRAM_{pulse.kind.name}"
        self.check_pulse(pulse, cmd)
        addr = np.asarray(addresses)
        if addr.size > self.max_batch_devices:
            raise SafetyLimitError(f"batch of {addr.size} devices exceeds "
                                   f"safety.max_batch_devices = {self.max_batch_devices}",
                                   command=cmd)
        check_pulse_counts(addr, n_pulses, self.max_pulses_per_device, cmd,
                           "pulses per device (safety.max_pulses_per_device)")

    def check_read(self, addresses: np.ndarray) -> None:
        n = int(np.asarray(addresses).size)
        if n > self.max_batch_devices:
            raise SafetyLimitError(f"batch of {n} devices exceeds safety.max_batch_devices = "
                                   f"{self.max_batch_devices}", command="READ")

    def check_matvec(self, addresses: np.ndarray, x: np.ndarray) -> None:
        """Check one MATVEC (block size, and its input voltages when read_v_max is set)."""
        n = int(np.asarray(addresses).size)
        if n > self.max_batch_devices:
            raise SafetyLimitError(f"block of {n} devices exceeds safety.max_batch_devices = "
                                   f"{self.max_batch_devices}", command="MATVEC")
        if self.read_v_max is not None:
            check_line_voltages(x, self.read_v_max, "safety.read_v_max")

    def check_step(self, total_pulses: int) -> None:
        """Check the pulses one training step would send, before it sends any."""
        if total_pulses > self.max_pulses_per_step:
            raise SafetyLimitError(f"{total_pulses} pulses in one step exceed "
                                   f"safety.max_pulses_per_step = {self.max_pulses_per_step}")


def check_line_voltages(x: np.ndarray, v_max: float, limit: str) -> None:
    """Raise SafetyLimitError naming the largest MATVEC input if any |x| exceeds `v_max`
    (`limit` says whose limit it is: the station's or the chip's)."""
    xv = np.asarray(x, dtype=np.float64)
    if not xv.size:
        return
    j = int(np.argmax(np.abs(xv)))   # the first NaN, if there is one
    peak = float(xv.flat[j])
    if not abs(peak) <= v_max:
        where = list(map(int, np.unravel_index(j, xv.shape)))
        why = ("is NaN: a line voltage must be finite" if peak != peak
               else f"= {peak!r} V exceeds {limit} = {v_max} V")
        raise SafetyLimitError(f"input x{where} {why}", command="MATVEC")


class LimitedBackend(BackendLayer):
    """Any backend behind a station's safety limits: a refused command never reaches it.

    Training and characterisation both send every command through this guard; its check_*
    methods are the checks its commands run, for a pre-flight check of a whole plan
    (abilities.GuardedBackend). Abilities of the backend below are found with
    drivers.abilities.find_ability.
    """

    def __init__(self, inner: ChipBackend, limits: SafetyLimits) -> None:
        super().__init__(inner)
        self._limits = limits
        self._refused = 0

    @property
    def station_limits(self) -> SafetyLimits:
        return self._limits

    @property
    def refused(self) -> int:
        """Commands refused so far."""
        return self._refused

    # --- the checks (also a pre-flight: nothing is sent, nothing counted) -------------------
    def check_program(self, addresses: np.ndarray, n_pulses: np.ndarray,
                      pulse: PulseSpec) -> None:
        self._limits.check_program(addresses, n_pulses, pulse)
        # A training step's pulses travel in one command, so no command may exceed a step's.
        self._limits.check_step(int(np.asarray(n_pulses).sum()))

    def check_read(self, addresses: np.ndarray) -> None:
        self._limits.check_read(addresses)

    def check_matvec(self, addresses: np.ndarray, x: np.ndarray) -> None:
        self._limits.check_matvec(addresses, x)

    # --- the contract, guarded -------------------------------------------------------------
    def read(self, addresses: np.ndarray) -> np.ndarray:
        self._guard(self.check_read, addresses)
        return self.inner.read(addresses)

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        self._guard(self.check_program, addresses, n_pulses, pulse)
        self.inner.program(addresses, n_pulses, pulse)

    def program_read(self, addresses: np.ndarray, n_pulses: np.ndarray,
                     pulse: PulseSpec) -> np.ndarray:
        self._guard(self.check_program, addresses, n_pulses, pulse)
        self._guard(self.check_read, addresses)
        return self.inner.program_read(addresses, n_pulses, pulse)

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        self._guard(self.check_matvec, addresses, x)
        return self.inner.matvec(addresses, x)

    def _guard(self, check, *args) -> None:
        try:
            check(*args)
        except SafetyLimitError:
            self._refused += 1
            raise
