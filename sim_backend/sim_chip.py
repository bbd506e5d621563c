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
from typing import List, Tuple

import numpy as np

from drivers import portable_math
from drivers.backend import Capability, ChipBackend, ChipInfo, matvec_operands
from drivers.errors import ChipError, ConfigError
from drivers.geometry import ADDRESS_DTYPE, Geometry, ascending_order
from drivers.pulse import PulseKind, PulseSpec
from drivers.safety import HardLimits
from firmware_interface.adc import ADC_BITS, adc_full_scale_us, adc_roundtrip
from firmware_interface.protocol import PROTOCOL_VERSION
from sim_backend import counter_rng as crng
from sim_backend.counter_rng import Stream
from sim_backend.pcm_model import PcmModel

#: The command name of a program batch by pulse kind (Enum.name is a slow property).
_PROGRAM = {k: f"PROGRAM_{k.name}" for k in PulseKind}

STATE_BYTES_PER_DEVICE = 16
STATE_FORMAT = "pcm-hil-sim-state/1"
_U64_16 = np.array(16, dtype=np.uint64)
_U16_ONE = np.array(1, dtype=np.uint16)
_U16_MAX = np.iinfo(np.uint16).max
#: A SET batch of at most this many (device, pulse) slots draws for every device at every
#: pulse index (fewest numpy calls); a larger one only for the pulses it applies (least work:
#: about 7 % less time per PROGRAM_READ than the dense way on the CNN's batches of ~250
#: devices, most of them pulsed once).
_DENSE_SET_DRAWS = 256


@dataclass(frozen=True)
class SimTiming:
    """How much simulated time a command takes (drives drift)."""

    command_s: float = 2e-3     # fixed cost of any command (link turnaround, set-up)
    pulse_s: float = 1e-6       # per applied pulse
    read_s: float = 2e-7        # per device read


@dataclass(frozen=True)
class SimLimits(HardLimits):
    """The simulated chip's own hard limits (what a real chip's firmware would refuse)."""

    max_pulses_per_device: int = 255
    set_amplitude_v_max: float = 2.0
    reset_amplitude_v_max: float = 4.0
    width_ns_max: float = 10_000.0
    read_v_max: float = 0.5      # MATVEC input lines: below a PCM cell's threshold voltage


@dataclass(frozen=True)
class SimChipSpec:
    """A simulated chip as a value: device model, geometry and seed.

    Every place that makes a simulated chip from a description (a `sim://` URL, an
    experiment config's chip section, `pcm-hil emulate`'s options, a benchmark) builds it
    with `build()`, so the same description is the same chip everywhere. `model` is a preset
    name or the path of a model YAML file (PcmModel.load).
    """

    model: str = "jap"
    seed: int = 0
    arrays: int = 1
    rows: int = 512
    cols: int = 2048

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.arrays, self.rows, self.cols)

    def build(self) -> "SimulatedChip":
        """A new chip in its as-fabricated state."""
        return SimulatedChip(PcmModel.load(self.model), self.geometry, seed=self.seed)


def _state_index(addr: np.ndarray, increasing: bool) -> np.ndarray | slice:
    """How to index the per-device state arrays with a checked batch: a run of consecutive
    addresses (the mapped devices of a full read) as a slice, whose views need no gathers;
    any other batch as intp (numpy indexes with intp several times faster)."""
    if increasing and addr.size and int(addr[-1]) - int(addr[0]) + 1 == addr.size:
        return slice(int(addr[0]), int(addr[-1]) + 1)
    return addr.astype(np.intp)


class SimulatedChip(ChipBackend):
    """A simulated chip with the geometry of the lab's real one (512 × 2048 by default)."""

    def __init__(self, model: PcmModel | None = None, geometry: Geometry | None = None,
                 seed: int = 0, timing: SimTiming | None = None,
                 limits: HardLimits | None = None, chip_id: str = "sim") -> None:
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
        idx = _state_index(addr, ascending_order(addr, command="READ") is None)
        self._advance(self.timing.command_s + self.timing.read_s * addr.size)
        return adc_roundtrip(self._noisy_read(addr, idx), self._adc_full_scale)

    def read_exact(self, addresses: np.ndarray) -> np.ndarray:
        addr = self._check(addresses, "READ_EXACT")
        return self._drifted(addr).astype(np.float32)

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        cmd = _PROGRAM[pulse.kind]
        addr = self._check(addresses, cmd)
        n = self.limits.check_program(addr, n_pulses, pulse, cmd)
        ascending_order(addr, command=cmd)   # refuses a device named twice
        if n.size and n.min() == 0:
            keep = n > 0
            addr, n = addr[keep], n[keep]
        n = n.astype(np.int64, copy=False)
        total = int(n.sum())
        self._advance(self.timing.command_s + self.timing.pulse_s * float(total))
        if addr.size == 0:
            return
        addr = addr.astype(np.intp)   # numpy indexes with intp several times faster
        if pulse.kind is PulseKind.SET:
            ev, nset = self._pulse_ev[addr], self._n_set[addr].astype(np.int64)
            g, _ = self._set_levels(addr, n, ev, nset)
            self._g[addr] = g
            self._n_set[addr] = np.minimum(nset + n, _U16_MAX)
            self._after_pulse(addr, n, ev)
            self.counters["set_pulses"] += total
        else:
            self._apply_reset(addr, n)
            self.counters["reset_pulses"] += total
        self._unstick(addr)

    def program_read(self, addresses: np.ndarray, n_pulses: np.ndarray,
                     pulse: PulseSpec) -> np.ndarray:
        """program() then read() of the same devices, in one pass over the chip state.

        The training step reads back exactly the devices it pulses, a handful per step, so
        the cost is per numpy call: here the batch is checked once, each state array gathered
        and scattered once, and the SET and read-noise draws hashed together. Values,
        counters and the simulated clock (two commands, two advances) are exactly those of
        program() followed by read(); RESET batches and batches with zero pulse counts take
        that path itself.
        """
        cmd = _PROGRAM[pulse.kind]
        addr = self._check(addresses, cmd)
        n = self.limits.check_program(addr, n_pulses, pulse, cmd)
        ascending_order(addr, command=cmd)   # refuses a device named twice
        if pulse.kind is not PulseKind.SET or np.count_nonzero(n) != addr.size or not addr.size:
            self.program(addr, n, pulse)   # RESET, zero counts, nothing: the general path
            return self.read(addr)
        n = n.astype(np.int64, copy=False)
        total = int(np.add.reduce(n))
        timing = self.timing
        self._advance(timing.command_s + timing.pulse_s * float(total))
        t_prog = np.float32(self.clock_s)
        a = addr.astype(np.intp)
        ev = self._pulse_ev[a]
        ev_after = ev + n.astype(np.uint32)   # wraps as the stored uint32 counter does
        # Just pulsed: each device's read count restarts at 0, the read-noise key of (events, 0).
        read_key = ev_after.astype(np.uint64) << _U64_16 if self.model.has_read_noise \
            else None
        nset = self._n_set[a].astype(np.int64)
        g, z_read = self._set_levels(a, n, ev, nset, read_key, 1 if total == a.size else None)
        self._stuck_levels(a, g)
        self.counters["set_pulses"] += total
        self._g[a] = g
        self._n_set[a] = np.minimum(nset + n, _U16_MAX)
        self._pulse_ev[a] = ev_after
        self._t_prog[a] = t_prog
        self._advance(timing.command_s + timing.read_s * a.size)
        self._reads[a] = 1
        self.counters["reads"] += int(a.size)
        g64 = g.astype(np.float64)
        if self.model.has_drift:
            dt = self.clock_s - float(t_prog)   # one programming time for the whole batch
            if dt > self.model.drift.t0_s:
                self._apply_drift(a, g64, np.full(a.size, dt))
        if z_read is not None:
            g64 = self.model.add_read_noise(g64, z_read)
        return adc_roundtrip(g64, self._adc_full_scale)

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        block, xv = matvec_operands(addresses, x)
        self.limits.check_line_voltages(xv)
        flat = self._check(block.ravel(), "MATVEC")
        self._advance(self.timing.command_s + self.timing.read_s * flat.size)
        g = self._noisy_read(flat).reshape(block.shape)
        # The weighted sums in a fixed order (BLAS would pick one per CPU): the same bits on
        # every machine, in process and behind the emulator.
        sums = portable_math.matmul(g, xv.reshape(xv.shape[0], -1))
        return sums.reshape(g.shape[:1] + xv.shape[1:]).astype(np.float32)

    def advance_clock(self, seconds: float) -> float:
        """Let simulated time pass with the chip idle (drift characterisation waits);
        returns the new clock."""
        if not seconds >= 0:
            raise ValueError(f"cannot advance the clock by {seconds} s")
        self.clock_s += float(seconds)
        return self.clock_s

    @property
    def commands_executed(self) -> int:
        """Commands executed since the chip was built (a saved state is placed by it)."""
        return int(self.counters["commands"])

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
                and addresses.ndim == 1 and (addresses.size == 0 or np.maximum.reduce(
                    addresses) < self.geometry.n_devices):
            return addresses   # the common, valid case without copies
        return self.geometry.check(addresses, command=command)

    def _advance(self, seconds: float) -> None:
        self.counters["commands"] += 1
        self.clock_s += seconds

    def _set_levels(self, a: np.ndarray, n: np.ndarray, ev: np.ndarray, nset: np.ndarray,
                    read_key: np.ndarray | None = None, k_max: int | None = None
                    ) -> Tuple[np.ndarray, np.ndarray | None]:
        """Conductances (float32, in the order of `a`) after n[i] >= 1 SET pulses on device
        a[i], whose pulse count is ev[i] and SET count (int64) nset[i]; and, given `read_key`,
        the read-noise draws of the read that follows (hashed in the same pass, so they are
        the draws read() would make).

        The k-th pulse of device i draws with counter ev[i] + k; every draw of the command
        comes from one hash pass. A small batch draws for every device at every k up to the
        largest count (a device with fewer pulses ignores the rest: draws are pure functions
        of their keys), which costs fewest numpy calls; a large one draws for and computes
        pulse k only on the devices with more than k pulses. `k_max` is n.max() when the
        caller knows it.
        """
        size = a.size
        if k_max is None:
            k_max = int(n.max())
        if k_max > 1 and size * k_max > _DENSE_SET_DRAWS:
            # Pulse k (from 0) goes to the devices with n > k alone: most devices of a batch
            # take one pulse, so the later pulses draw and compute for a few.
            live = [np.flatnonzero(n > k) for k in range(1, k_max)]
            ev64 = ev.astype(np.uint64)
            parts: list = [(Stream.SET, a, ev)]
            parts += [(Stream.SET, a[i], ev64[i] + np.uint64(k)) for k, i in enumerate(live, 1)]
            z, scale, z_read = self._draws(parts, a, read_key, a)
            g = self._g[a]
            g[...] = self.model.set_pulse_counted(g, nset + 1, z[:size], scale)
            pos = size
            for k, i in enumerate(live, 1):
                m = i.size
                g[i] = self.model.set_pulse_counted(
                    g[i], nset[i] + (k + 1), z[pos:pos + m],
                    scale[i] if isinstance(scale, np.ndarray) else scale)
                pos += m
            return g, z_read
        parts = [(Stream.SET, a, ev)]
        if k_max > 1:
            ev64 = ev.astype(np.uint64)
            parts += [(Stream.SET, a, ev64 + np.uint64(k)) for k in range(1, k_max)]
        z, scale, z_read = self._draws(parts, a, read_key, a)
        g = self._g[a]
        for k in range(k_max):
            # Stored state is float32: round after every pulse, so n pulses in one command
            # equal n commands of one pulse bit for bit.
            g_next = self.model.set_pulse_counted(g, nset + (k + 1),
                                                  z[k * size:(k + 1) * size], scale)
            if k == 0:   # every device gets its first pulse
                g[...] = g_next
            else:
                np.copyto(g, g_next, casting="same_kind", where=n > k)
        return g, z_read

    def _draws(self, set_parts: list, a_set: np.ndarray, read_key: np.ndarray | None,
               a_read: np.ndarray) -> Tuple[np.ndarray, np.ndarray | float, np.ndarray | None]:
        """One hash pass for a SET command's draws: the SET parts, the device-to-device
        scale of devices `a_set` (1.0 without spread) and, given `read_key`, the read-noise
        draws of devices `a_read`. Returns (SET draws, scale, read draws)."""
        spread = self.model.variability.set_mean_rel_std
        parts = list(set_parts)
        if spread:
            parts.append((Stream.D2D, a_set, 0))
        if read_key is not None:
            parts.append((Stream.READ, a_read, read_key))
        z = crng.normal(crng.hash_parts(self.seed, parts))
        n_set = z.size - (a_set.size if spread else 0) \
            - (a_read.size if read_key is not None else 0)
        scale: np.ndarray | float = 1.0
        if spread:
            scale = 1.0 + spread * z[n_set:n_set + a_set.size]
        return z, scale, (z[z.size - a_read.size:] if read_key is not None else None)

    def _apply_reset(self, addr: np.ndarray, n: np.ndarray) -> None:
        # Repeated RESETs each melt-quench anew: only the last one's draw survives.
        ev = self._pulse_ev[addr]
        last = ev.astype(np.uint64) + n.astype(np.uint64) - 1
        z = crng.normal(crng.hash_key(self.seed, Stream.RESET, addr, last))
        self._g[addr] = self.model.reset_level(z)
        self._n_set[addr] = 0
        self._after_pulse(addr, n, ev)

    def _after_pulse(self, addr: np.ndarray, n: np.ndarray, ev: np.ndarray) -> None:
        """Book n pulses on each device (`ev`: its pulse count before them)."""
        self._pulse_ev[addr] = ev + n.astype(np.uint32)
        self._reads[addr] = 0
        self._t_prog[addr] = np.float32(self.clock_s)

    def _unstick(self, addr: np.ndarray) -> None:
        """Stuck devices ignore pulses: put their fixed conductance back."""
        for stuck, level in self._stuck:
            hit = addr[np.isin(addr, stuck, assume_unique=True)]
            self._g[hit] = level

    def _stuck_levels(self, addr: np.ndarray, g: np.ndarray) -> None:
        """_unstick on a batch's new conductances `g` before they are stored."""
        for stuck, level in self._stuck:
            g[np.isin(addr, stuck, assume_unique=True)] = level

    def _drifted(self, addr: np.ndarray, idx: np.ndarray | slice | None = None) -> np.ndarray:
        """Drifted float64 conductances of devices `addr` (state indexed by `idx`)."""
        idx = addr if idx is None else idx
        g = self._g[idx].astype(np.float64)
        if not self.model.has_drift:
            return g
        return self._apply_drift(addr, g, self.clock_s - self._t_prog[idx].astype(np.float64))

    def _apply_drift(self, addr: np.ndarray, g: np.ndarray, dt: np.ndarray) -> np.ndarray:
        """Drift g (float64, in place) of devices programmed dt seconds ago."""
        d = self.model.drift
        old = np.flatnonzero(dt > d.t0_s)   # drift starts t0 after programming
        if old.size:
            z = crng.normal(crng.hash_key(self.seed, Stream.NU, addr[old])) \
                if d.nu_std else None
            g[old] *= self.model.drift_factor(dt[old], self.model.nu(z))
        return g

    def _noisy_read(self, addr: np.ndarray, idx: np.ndarray | slice | None = None
                    ) -> np.ndarray:
        """What reads of devices `addr` (state indexed by `idx`) measure, float64."""
        idx = addr if idx is None else idx
        g = self._drifted(addr, idx)
        self.counters["reads"] += int(addr.size)
        reads = self._reads[idx]
        if self.model.has_read_noise:
            key = self._pulse_ev[idx].astype(np.uint64)
            key <<= _U64_16
            key |= reads
            g = self.model.add_read_noise(g, crng.normal(
                crng.hash_key(self.seed, Stream.READ, addr, key)))
        self._reads[idx] = reads + _U16_ONE   # uint16: wraps as += did
        return g

    @property
    def _adc_full_scale(self) -> float:
        return adc_full_scale_us(self.model.g_max_us)

    @property
    def _stuck(self) -> List[Tuple[np.ndarray, float]]:
        """(addresses, fixed conductance) of each non-empty kind of stuck device."""
        return [(stuck, level) for stuck, level in
                ((self._stuck_low, self.model.g_min_us),
                 (self._stuck_high, self.model.variability.stuck_high_us)) if stuck.size]

    @property
    def stuck_devices(self) -> np.ndarray:
        """Addresses of stuck devices (what a lab's screening run would find)."""
        return np.union1d(self._stuck_low, self._stuck_high).astype(ADDRESS_DTYPE)
