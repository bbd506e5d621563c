"""The simulated PCM chip: the ChipBackend contract on top of PcmModel.

State is 16 bytes per device (1,048,576 devices by default, 16 MiB):
  g        float32  conductance right after its last programming (before drift)
  t_prog   float32  simulated time of the last programming, s
  pulse_ev uint32   pulses this device has received, ever (the key of its next pulse draw)
  n_set    uint16   SET pulses since the last RESET (the JAP model's n)
  reads    uint16   reads since its last pulse (the key of its next read-noise draw)
Per-device constants (drift exponent, SET-mean spread) are hashed from the address when needed,
not stored. Every random draw is keyed by (seed, address, pulse_ev[, reads]), so the result of
a command never depends on how a batch was split, ordered or retried.

Simulated time advances per executed command (a fixed overhead plus a cost per device); wall
time is never used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict

import numpy as np

from drivers.backend import Capability, ChipBackend, ChipInfo, matvec_operands
from drivers.errors import ChipError, ConfigError, SafetyLimitError
from drivers.geometry import ADDRESS_DTYPE, Geometry, check_unique
from drivers.pulse import PulseKind, PulseSpec, check_pulse_counts
from firmware_interface.adc import ADC_BITS, adc_full_scale_us, adc_roundtrip
from firmware_interface.protocol import PROTOCOL_VERSION
from sim_backend import counter_rng as crng
from sim_backend.counter_rng import Stream
from sim_backend.pcm_model import PcmModel

STATE_BYTES_PER_DEVICE = 16
STATE_FORMAT = "pcm-hil-sim-state/1"


@dataclass(frozen=True)
class SimTiming:
    """How much simulated time a command takes (drives drift)."""

    command_s: float = 2e-3     # fixed cost of any command (link turnaround, set-up)
    pulse_s: float = 1e-6       # per applied pulse
    read_s: float = 2e-7        # per device read


@dataclass(frozen=True)
class SimLimits:
    """The simulated chip's own hard limits (what a real chip's firmware would refuse)."""

    max_pulses_per_device: int = 255
    set_amplitude_v_max: float = 2.0
    reset_amplitude_v_max: float = 4.0
    width_ns_max: float = 10_000.0

    def as_dict(self) -> Dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class SimulatedChip(ChipBackend):
    """A simulated chip with the geometry of the lab's real one (512 × 2048 by default)."""

    def __init__(self, model: PcmModel | None = None, geometry: Geometry | None = None,
                 seed: int = 0, timing: SimTiming | None = None,
                 limits: SimLimits | None = None, chip_id: str = "sim") -> None:
        self.model = model or PcmModel.preset("jap")
        self.geometry = geometry or Geometry()
        self.seed = int(seed)
        self.timing = timing or SimTiming()
        self.limits = limits or SimLimits()
        self.chip_id = chip_id
        n = self.geometry.n_devices
        all_addr = np.arange(n, dtype=ADDRESS_DTYPE)
        # As-fabricated devices sit in a RESET-like state.
        self._g = self.model.reset_level(
            crng.normal(crng.hash_key(self.seed, Stream.INIT, all_addr))).astype(np.float32)
        self._t_prog = np.zeros(n, dtype=np.float32)
        self._pulse_ev = np.zeros(n, dtype=np.uint32)
        self._n_set = np.zeros(n, dtype=np.uint16)
        self._reads = np.zeros(n, dtype=np.uint16)
        self.clock_s = 0.0
        var = self.model.variability
        u = crng.uniform(crng.hash_key(self.seed, Stream.STUCK, all_addr))
        self._stuck_low = np.flatnonzero(u < var.stuck_low_fraction).astype(ADDRESS_DTYPE)
        self._stuck_high = np.flatnonzero(
            (u >= var.stuck_low_fraction)
            & (u < var.stuck_low_fraction + var.stuck_high_fraction)).astype(ADDRESS_DTYPE)
        self._g[self._stuck_low] = self.model.g_min_us
        self._g[self._stuck_high] = var.stuck_high_us
        self.counters = {"commands": 0, "set_pulses": 0, "reset_pulses": 0, "reads": 0}
        self._closed = False

    # --- contract ---------------------------------------------------------------------------
    def info(self) -> ChipInfo:
        return ChipInfo(
            chip_id=self.chip_id, firmware_version="sim-1",
            protocol_version="{}.{}".format(*PROTOCOL_VERSION),
            geometry=self.geometry, g_min_us=self.model.g_min_us,
            g_max_us=self.model.g_max_us, adc_bits=ADC_BITS,
            capabilities=frozenset({Capability.MATVEC.value, Capability.EXACT_READ.value,
                                    Capability.STATE_FILE.value, Capability.SIM_CLOCK.value}),
            hard_limits=self.limits.as_dict())

    def read(self, addresses: np.ndarray) -> np.ndarray:
        addr = self._check(addresses, "READ")
        check_unique(addr, command="READ")
        self._advance(self.timing.command_s + self.timing.read_s * addr.size)
        return adc_roundtrip(self._noisy_read(addr.astype(np.intp)),
                             adc_full_scale_us(self.model.g_max_us))

    def read_exact(self, addresses: np.ndarray) -> np.ndarray:
        addr = self._check(addresses, "READ_EXACT")
        return self._drifted(addr).astype(np.float32)

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        cmd = "PROGRAM_" + pulse.kind.name
        addr = self._check(addresses, cmd)
        n = check_pulse_counts(addr, n_pulses, self.limits.max_pulses_per_device, cmd)
        self._check_pulse(pulse, cmd)
        check_unique(addr, command=cmd)
        if n.size and n.min() == 0:
            keep = n > 0
            addr, n = addr[keep], n[keep]
        n = n.astype(np.int64, copy=False)
        self._advance(self.timing.command_s + self.timing.pulse_s * float(n.sum()))
        if addr.size == 0:
            return
        addr = addr.astype(np.intp)   # numpy indexes with intp several times faster
        if pulse.kind is PulseKind.SET:
            self._apply_set(addr, n)
            self.counters["set_pulses"] += int(n.sum())
        else:
            self._apply_reset(addr, n)
            self.counters["reset_pulses"] += int(n.sum())
        self._unstick(addr)

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        block, xv = matvec_operands(addresses, x)
        flat = self._check(block.ravel(), "MATVEC")
        self._advance(self.timing.command_s + self.timing.read_s * flat.size)
        g = self._noisy_read(flat).reshape(block.shape)
        return (g @ xv).astype(np.float32)

    def advance_clock(self, seconds: float) -> None:
        """Let simulated time pass with the chip idle (drift characterisation waits)."""
        if not seconds >= 0:
            raise ValueError(f"cannot advance the clock by {seconds} s")
        self.clock_s += float(seconds)

    def safe_state(self) -> None:
        """Nothing to idle in a simulator; kept for the contract."""

    def close(self) -> None:
        self._closed = True

    # --- state file (PCM is non-volatile; a restarted emulator keeps its chip) --------------
    def save_state(self, path: str | os.PathLike) -> None:
        """Write the whole chip state atomically (temp file + rename)."""
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, format=np.array(STATE_FORMAT), g=self._g, t_prog=self._t_prog,
                     pulse_ev=self._pulse_ev, n_set=self._n_set, reads=self._reads,
                     clock_s=np.array(self.clock_s), seed=np.array(self.seed),
                     geometry=np.array([self.geometry.arrays, self.geometry.rows,
                                        self.geometry.cols]),
                     model=np.array(self.model.name))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_state(self, path: str | os.PathLike) -> None:
        """Restore a state written by save_state; refuses a file of another chip."""
        try:
            z = np.load(path, allow_pickle=False)
            fmt = str(z["format"])
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"not a simulated-chip state file ({e})", source=str(path)) \
                from None
        if fmt != STATE_FORMAT:
            raise ConfigError(f"state format {fmt!r}, expected {STATE_FORMAT!r}",
                              source=str(path))
        geo = tuple(int(v) for v in z["geometry"])
        mine = (self.geometry.arrays, self.geometry.rows, self.geometry.cols)
        if geo != mine or int(z["seed"]) != self.seed:
            raise ConfigError(f"state is of a chip with geometry {geo} and seed "
                              f"{int(z['seed'])}, this chip has {mine} and seed {self.seed}",
                              source=str(path))
        self._g, self._t_prog = z["g"].copy(), z["t_prog"].copy()
        self._pulse_ev, self._n_set, self._reads = (z["pulse_ev"].copy(), z["n_set"].copy(),
                                                    z["reads"].copy())
        self.clock_s = float(z["clock_s"])

    @property
    def state_bytes(self) -> int:
        return sum(a.nbytes for a in (self._g, self._t_prog, self._pulse_ev, self._n_set,
                                      self._reads))

    def true_conductance(self, addresses: np.ndarray) -> np.ndarray:
        """The stored (pre-drift) conductance, for tests and model checks."""
        return self._g[self._check(addresses, "PEEK")].copy()

    # --- internals ------------------------------------------------------------------------
    def _check(self, addresses: np.ndarray, command: str) -> np.ndarray:
        if self._closed:
            raise ChipError("chip is closed", command=command)
        if isinstance(addresses, np.ndarray) and addresses.dtype == ADDRESS_DTYPE \
                and addresses.ndim == 1 and (addresses.size == 0
                                             or addresses.max() < self.geometry.n_devices):
            return addresses   # the common, valid case without copies
        return self.geometry.check(addresses, command=command)

    def _check_pulse(self, pulse: PulseSpec, cmd: str) -> None:
        lim = self.limits
        amax = lim.set_amplitude_v_max if pulse.kind is PulseKind.SET \
            else lim.reset_amplitude_v_max
        if pulse.amplitude_v > amax:
            raise SafetyLimitError(f"amplitude {pulse.amplitude_v} V exceeds the chip's "
                                   f"{amax} V", command=cmd)
        if pulse.width_ns > lim.width_ns_max:
            raise SafetyLimitError(f"width {pulse.width_ns} ns exceeds the chip's "
                                   f"{lim.width_ns_max} ns", command=cmd)

    def _advance(self, seconds: float) -> None:
        self.counters["commands"] += 1
        self.clock_s += seconds

    def _apply_set(self, addr: np.ndarray, n: np.ndarray) -> None:
        # Devices sorted by pulse count, most first: the devices still receiving their k-th
        # pulse are then a prefix, and every draw of the command comes from one hash call.
        if n.max() == 1:   # the common case: one pulse each, no ordering needed
            a, nn, live = addr, n, [addr.size]
            g = self._g[a]
            ev = self._pulse_ev[a].astype(np.uint64)
            nset = self._n_set[a].astype(np.int64)
            z_all = crng.normal(crng.hash_key(self.seed, Stream.SET, a, ev))
        else:
            order = np.argsort(-n, kind="stable")
            a, nn = addr[order], n[order]
            g = self._g[a]
            ev = self._pulse_ev[a].astype(np.uint64)
            nset = self._n_set[a].astype(np.int64)
            live = np.searchsorted(-nn, -np.arange(1, int(nn[0]) + 1), side="right")
            ctr = np.concatenate([ev[:m] + np.uint64(k) for k, m in enumerate(live)])
            z_all = crng.normal(crng.hash_key(self.seed, Stream.SET,
                                              np.concatenate([a[:m] for m in live]), ctr))
        spread = self.model.variability.set_mean_rel_std
        scale = 1.0 + spread * crng.normal(crng.hash_key(self.seed, Stream.D2D, a)) \
            if spread else np.ones(1)
        pos = 0
        for k, m in enumerate(live):
            # Stored state is float32: round after every pulse, so n pulses in one command
            # equal n commands of one pulse bit for bit.
            g[:m] = self.model.set_pulse(g[:m], nset[:m] + k + 1, z_all[pos:pos + m],
                                         scale[:m] if spread else 1.0)
            pos += m
        self._g[a] = g
        self._n_set[a] = np.minimum(nset + nn, np.iinfo(np.uint16).max)
        self._after_pulse(a, nn)

    def _apply_reset(self, addr: np.ndarray, n: np.ndarray) -> None:
        # Repeated RESETs each melt-quench anew: only the last one's draw survives.
        last = self._pulse_ev[addr].astype(np.uint64) + n.astype(np.uint64) - 1
        z = crng.normal(crng.hash_key(self.seed, Stream.RESET, addr, last))
        self._g[addr] = self.model.reset_level(z)
        self._n_set[addr] = 0
        self._after_pulse(addr, n)

    def _after_pulse(self, addr: np.ndarray, n: np.ndarray) -> None:
        self._pulse_ev[addr] += n.astype(np.uint32)
        self._reads[addr] = 0
        self._t_prog[addr] = np.float32(self.clock_s)

    def _unstick(self, addr: np.ndarray) -> None:
        """Stuck devices ignore pulses: put their fixed conductance back."""
        for stuck, level in ((self._stuck_low, self.model.g_min_us),
                             (self._stuck_high, self.model.variability.stuck_high_us)):
            if stuck.size:
                hit = addr[np.isin(addr, stuck, assume_unique=True)]
                self._g[hit] = level

    def _drifted(self, addr: np.ndarray) -> np.ndarray:
        g = self._g[addr].astype(np.float64)
        if not self.model.has_drift:
            return g
        d = self.model.drift
        dt = self.clock_s - self._t_prog[addr].astype(np.float64)
        old = np.flatnonzero(dt > d.t0_s)   # drift starts t0 after programming
        if old.size:
            z = crng.normal(crng.hash_key(self.seed, Stream.NU, addr[old])) \
                if d.nu_std else None
            g[old] *= self.model.drift_factor(dt[old], self.model.nu(z))
        return g

    def _noisy_read(self, addr: np.ndarray) -> np.ndarray:
        g = self._drifted(addr)
        self.counters["reads"] += int(addr.size)
        if self.model.has_read_noise:
            key = (self._pulse_ev[addr].astype(np.uint64) << np.uint64(16)) \
                | self._reads[addr].astype(np.uint64)
            g = self.model.add_read_noise(g, crng.normal(
                crng.hash_key(self.seed, Stream.READ, addr, key)))
        self._reads[addr] += np.uint16(1)
        return g

    @property
    def stuck_devices(self) -> np.ndarray:
        """Addresses of stuck devices (what a lab's screening run would find)."""
        return np.union1d(self._stuck_low, self._stuck_high).astype(ADDRESS_DTYPE)
