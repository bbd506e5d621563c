"""Device characterisation: pulse trains from RESET, repeated reads, drift over time.

The measurement a lab needs to fit the PCM model to its own chip (PAPER.md §3): N devices are
RESET, read repeatedly (RESET level and read noise at low conductance), given a train of K
SET pulses with a read after each, read repeatedly again (read noise across the conductance
range), then read at log-spaced times for drift. Every command is a batch over all N devices:
one program and one read command per pulse index, never a per-device call.

Everything read is written to an HDF5 file as it is acquired (schema in
docs/characterization.md); `load_characterization` reads it back for `fit-model`.

Time: a backend that advertises Capability.SIM_CLOCK (the simulated chip, in-process or
behind the firmware emulator) is timed by its own clock (`clock_s`), and waiting for drift
moves that clock forward (`advance_clock(seconds)`); any other backend is timed by the host's
monotonic clock and waiting sleeps.

Station limits: a backend behind a station's guard (drivers.safety.LimitedBackend) has every
command of the whole measurement checked against the guard before the first is sent, and
batches split to the station's max_batch_devices; each command then passes the guard itself.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import h5py
import numpy as np

from drivers.abilities import AdcReadout, ClockedBackend, GuardedBackend, find_ability
from drivers.backend import ChipBackend
from drivers.errors import ConfigError, HilError
from drivers.geometry import ADDRESS_DTYPE
from drivers.pulse import PulseSpec
from hil.run_state import RunState

log = logging.getLogger("pcm_hil.characterize")

FORMAT = "pcm-hil-characterization"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CharacterizeConfig:
    """What to measure. Defaults: 10,000 devices, 20 SET pulses, drift over two decades."""

    devices: int = 10_000
    pulses: int = 20
    set_amplitude_v: float = 1.0
    set_width_ns: float = 50.0
    reset_amplitude_v: float = 2.5
    reset_width_ns: float = 50.0
    reset_reads: int = 64
    noise_reads: int = 16
    drift_reads: int = 12
    drift_start_s: float = 38.6
    drift_end_s: float = 3860.0
    seed: int = 0

    def __post_init__(self) -> None:
        for k, lo in (("devices", 1), ("pulses", 1), ("reset_reads", 2), ("noise_reads", 2),
                      ("drift_reads", 0)):
            if getattr(self, k) < lo:
                raise ConfigError(f"must be >= {lo}, got {getattr(self, k)}", key=k)
        if self.drift_reads and not 0 < self.drift_start_s <= self.drift_end_s:
            raise ConfigError(f"need 0 < drift_start_s <= drift_end_s, got "
                              f"{self.drift_start_s}, {self.drift_end_s}", key="drift_start_s")
        try:
            self.set_pulse, self.reset_pulse
        except ValueError as e:
            raise ConfigError(str(e), key="pulse") from None

    @property
    def set_pulse(self) -> PulseSpec:
        return PulseSpec.set(self.set_amplitude_v, self.set_width_ns)

    @property
    def reset_pulse(self) -> PulseSpec:
        return PulseSpec.reset(self.reset_amplitude_v, self.reset_width_ns)

    def drift_targets_s(self) -> np.ndarray:
        """Times after the last SET pulse at which the drift reads are taken."""
        if self.drift_reads == 0:
            return np.zeros(0)
        return np.geomspace(self.drift_start_s, self.drift_end_s, self.drift_reads)


@dataclass(frozen=True)
class CharacterizeSummary:
    path: str
    devices: int
    pulses: int
    commands: int
    clock: str
    duration_s: float
    mean_g_after_pulse_us: np.ndarray


# --- time -------------------------------------------------------------------------------------
class _ChipClock:
    """The chip's own simulated clock: only commands (or an explicit advance) move it."""

    kind = "chip"

    def __init__(self, backend: ClockedBackend) -> None:
        self.backend = backend

    def now(self) -> float:
        return float(self.backend.clock_s)

    def wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        # A simulator has no idle time of its own; waiting is moving its clock.
        self.backend.advance_clock(seconds)


class _WallClock:
    """Host monotonic time since the start of the characterisation (real chips)."""

    kind = "wall"

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def _clock_for(backend: ChipBackend) -> Any:
    """The chip's simulated clock where a layer of the stack has one (ClockedBackend: the
    chip advertises SIM_CLOCK); else the wall clock."""
    clocked = find_ability(backend, ClockedBackend)
    return _WallClock() if clocked is None else _ChipClock(clocked)


# --- the run -----------------------------------------------------------------------------------
class _Runner:
    """Issues the batched commands (split only when a station's max batch size demands)."""

    def __init__(self, backend: ChipBackend) -> None:
        self.backend = backend
        self.guard = find_ability(backend, GuardedBackend)
        self.max_batch = self.guard.station_limits.max_batch_devices if self.guard else None
        self.commands = 0

    def _chunks(self, n: int):
        step = self.max_batch or n
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def preflight(self, addr: np.ndarray, pulses: Tuple[PulseSpec, ...]) -> None:
        """Every command the measurement will send, checked by the station's guard before
        the first is sent (SafetyLimitError names the limit); nothing without a guard."""
        if self.guard is None:
            return
        ones = np.ones(addr.size, dtype=np.uint16)
        parts = self._chunks(addr.size)
        for pulse in pulses:
            for sl in parts:
                self.guard.check_program(addr[sl], ones[sl], pulse)
        # one pulse index over all devices is one step of this measurement
        self.guard.station_limits.check_step(addr.size)
        for sl in parts:
            self.guard.check_read(addr[sl])

    def program(self, addr: np.ndarray, pulse: PulseSpec) -> None:
        ones = np.ones(addr.size, dtype=np.uint16)
        for sl in self._chunks(addr.size):
            self.backend.program(addr[sl], ones[sl], pulse)
            self.commands += 1

    def read(self, addr: np.ndarray) -> np.ndarray:
        out = np.empty(addr.size, dtype=np.float32)
        for sl in self._chunks(addr.size):
            out[sl] = self.backend.read(addr[sl])
            self.commands += 1
        return out


def select_devices(n_devices_chip: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct device addresses drawn uniformly (sorted), reproducible from `seed`."""
    if n > n_devices_chip:
        raise ConfigError(f"asked for {n} devices, the chip has {n_devices_chip}",
                          key="devices")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_devices_chip, size=n, replace=False)).astype(ADDRESS_DTYPE)


def _provenance(extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    from hil import __version__
    prov: Dict[str, Any] = {"pcm_hil": __version__, "numpy": np.__version__,
                            "h5py": h5py.__version__, "python": platform.python_version()}
    if extra:
        prov.update(extra)
    return prov


def characterize(backend: ChipBackend, config: CharacterizeConfig, path: str | os.PathLike,
                 *, backend_url: str = "", provenance: Optional[Dict[str, Any]] = None,
                 overwrite: bool = False,
                 progress: Optional[Callable[[str, int, int], None]] = None
                 ) -> CharacterizeSummary:
    """Run the characterisation on `backend` and write it to `path` (HDF5).

    A station's limits apply when `backend` is behind its guard (LimitedBackend(chip,
    station.safety)): every command is checked against it before the first one is sent.
    On an exception or Ctrl-C the file is kept (status "failed"/"aborted" with the reason) and
    the chip is left in its safe state.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise ConfigError("file exists (refusing to overwrite characterisation data)",
                          source=path)
    info = backend.info()
    addr = select_devices(info.geometry.n_devices, config.devices, config.seed)
    set_p, reset_p = config.set_pulse, config.reset_pulse
    runner = _Runner(backend)
    runner.preflight(addr, (set_p, reset_p))
    safety = runner.guard.station_limits if runner.guard else None
    clock = _clock_for(backend)
    n, k = addr.size, config.pulses
    targets = config.drift_targets_s()
    total_cmds = 1 + 1 + config.reset_reads + 2 * k + config.noise_reads + targets.size
    done = 0
    wall0 = time.monotonic()

    def tick(phase: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(phase, done, total_cmds)

    f = h5py.File(path, "w")
    try:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["status"] = str(RunState.RUNNING)
        f.attrs["status_reason"] = ""
        f.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds")
        f.attrs["backend_url"] = backend_url
        f.attrs["clock"] = clock.kind
        f.attrs["config_json"] = json.dumps(asdict(config))
        f.attrs["chip_info_json"] = json.dumps(info.to_dict())
        adc = find_ability(backend, AdcReadout)
        if adc is not None:
            f.attrs["adc_full_scale_us"] = float(adc.adc_full_scale_us)
        f.attrs["safety_json"] = json.dumps(asdict(safety) if safety else None,
                                            default=str)
        f.attrs["provenance_json"] = json.dumps(_provenance(provenance), default=str)
        f.create_dataset("devices", data=addr)

        def table(group: str, rows: int) -> h5py.Dataset:
            return f.require_group(group).create_dataset(
                "g_us", shape=(rows, n), dtype="f4", fillvalue=np.nan,
                chunks=(1, n) if rows else None)

        def times(group: str, name: str, rows: int) -> h5py.Dataset:
            return f[group].create_dataset(name, shape=(rows,), dtype="f8", fillvalue=np.nan)

        for name, pulse in (("reset", reset_p), ("set", set_p)):
            g = f.require_group(name)
            g.attrs["kind"] = pulse.kind.name
            g.attrs["amplitude_v"] = pulse.amplitude_v
            g.attrs["width_ns"] = pulse.width_ns
        initial = f.require_group("initial")
        reset_g = table("reset", config.reset_reads)
        reset_t = times("reset", "t_s", config.reset_reads)
        set_g = table("set", k)
        set_t = times("set", "t_s", k)
        set_tp = times("set", "t_prog_s", k)
        f["set"].create_dataset("pulse_index", data=np.arange(1, k + 1, dtype=np.int32))
        noise_g = table("noise", config.noise_reads)
        noise_t = times("noise", "t_s", config.noise_reads)
        drift_g = table("drift", targets.size)
        drift_t = times("drift", "t_s", targets.size)
        f["drift"].create_dataset("target_s", data=targets)

        # 1. as found
        initial.create_dataset("g_us", data=runner.read(addr))
        initial.attrs["t_s"] = clock.now()
        tick("initial read")
        # 2. RESET, then repeated reads: RESET level and read noise at low conductance
        runner.program(addr, reset_p)
        f["reset"].attrs["t_prog_s"] = clock.now()
        tick("reset")
        for i in range(config.reset_reads):
            reset_g[i] = runner.read(addr)
            reset_t[i] = clock.now()
            tick("reset reads")
        f.flush()
        # 3. SET train: one program + one read command per pulse index
        for j in range(k):
            runner.program(addr, set_p)
            set_tp[j] = clock.now()
            tick("set train")
            set_g[j] = runner.read(addr)
            set_t[j] = clock.now()
            tick("set train")
            f.flush()
        t_prog = float(set_tp[k - 1])
        f["drift"].attrs["t_prog_s"] = t_prog
        # 4. repeated reads right after the train: read noise across the conductance range
        for i in range(config.noise_reads):
            noise_g[i] = runner.read(addr)
            noise_t[i] = clock.now()
            tick("noise reads")
        f.flush()
        # 5. drift: reads at log-spaced times after the last SET pulse
        for i, target in enumerate(targets):
            clock.wait(t_prog + float(target) - clock.now())
            drift_g[i] = runner.read(addr)
            drift_t[i] = clock.now()
            tick("drift reads")
            f.flush()
        f.attrs["status"] = str(RunState.COMPLETED)
        f.attrs["commands"] = runner.commands
        mean_after = np.asarray(set_g[...]).mean(axis=1)
    except KeyboardInterrupt:
        f.attrs["status"] = str(RunState.ABORTED)
        f.attrs["status_reason"] = "interrupted by the operator"
        _safe(backend)
        raise
    except BaseException as e:
        f.attrs["status"] = str(RunState.FAILED)
        f.attrs["status_reason"] = f"{type(e).__name__}: {e}"
        _safe(backend)
        raise
    finally:
        f.close()
    return CharacterizeSummary(path, n, k, runner.commands, clock.kind,
                               time.monotonic() - wall0, mean_after)


def _safe(backend: ChipBackend) -> None:
    try:
        backend.safe_state()
    except Exception as e:  # the original error matters more
        log.error("safe_state() failed after an error: %s", e)


# --- reading the file back ---------------------------------------------------------------------
@dataclass
class CharacterizationData:
    """A characterisation file in memory (arrays are (reads, devices) float32 in µS)."""

    path: str
    status: str
    clock: str
    config: Dict[str, Any]
    chip_info: Dict[str, Any]
    devices: np.ndarray
    initial_g: np.ndarray
    reset_g: np.ndarray
    reset_t_s: np.ndarray
    reset_t_prog_s: float
    set_g: np.ndarray
    set_t_s: np.ndarray
    set_t_prog_s: np.ndarray
    noise_g: np.ndarray
    noise_t_s: np.ndarray
    drift_g: np.ndarray
    drift_t_s: np.ndarray
    drift_t_prog_s: float
    adc_full_scale_us: Optional[float] = None

    @property
    def g_min_us(self) -> float:
        return float(self.chip_info.get("g_min_us", 0.0))

    @property
    def g_max_us(self) -> float:
        return float(self.chip_info.get("g_max_us", np.inf))


def load_characterization(path: str | os.PathLike,
                          allow_incomplete: bool = False) -> CharacterizationData:
    """Open a characterisation file, checking its format tag and version."""
    src = os.fspath(path)
    try:
        f = h5py.File(src, "r")
    except FileNotFoundError:
        raise ConfigError("file not found", source=src) from None
    except OSError as e:
        raise ConfigError(f"not an HDF5 file ({e})", source=src) from None
    with f:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise ConfigError(f"format {fmt!r} is not {FORMAT!r} (not a characterisation file)",
                              key="format", source=src)
        ver = int(f.attrs.get("format_version", -1))
        if ver != FORMAT_VERSION:
            raise ConfigError(f"format version {ver} is not supported (this pcm-hil reads "
                              f"version {FORMAT_VERSION})", key="format_version", source=src)
        status = str(f.attrs.get("status", ""))
        if status != RunState.COMPLETED and not allow_incomplete:
            reason = str(f.attrs.get("status_reason", ""))
            raise ConfigError(f"characterisation status is {status!r}"
                              f"{' (' + reason + ')' if reason else ''}; a fit needs a "
                              "completed file", key="status", source=src)

        def get(name: str) -> np.ndarray:
            if name not in f:
                raise ConfigError("dataset missing", key=name, source=src)
            return np.asarray(f[name][...])

        def attr(obj: str, name: str) -> Any:
            try:
                return f[obj].attrs[name]
            except KeyError:
                raise ConfigError("attribute missing", key=f"{obj}@{name}",
                                  source=src) from None

        try:
            return CharacterizationData(
                path=src, status=status, clock=str(f.attrs.get("clock", "")),
                config=json.loads(f.attrs["config_json"]),
                chip_info=json.loads(f.attrs["chip_info_json"]),
                devices=get("devices"), initial_g=get("initial/g_us"),
                reset_g=get("reset/g_us"), reset_t_s=get("reset/t_s"),
                reset_t_prog_s=float(attr("reset", "t_prog_s")),
                set_g=get("set/g_us"), set_t_s=get("set/t_s"),
                set_t_prog_s=get("set/t_prog_s"),
                noise_g=get("noise/g_us"), noise_t_s=get("noise/t_s"),
                drift_g=get("drift/g_us"), drift_t_s=get("drift/t_s"),
                drift_t_prog_s=float(attr("drift", "t_prog_s")) if "t_prog_s" in
                f["drift"].attrs else float("nan"),
                adc_full_scale_us=(float(f.attrs["adc_full_scale_us"])
                                   if "adc_full_scale_us" in f.attrs else None))
        except (KeyError, ValueError) as e:
            if isinstance(e, HilError):
                raise
            raise ConfigError(f"malformed characterisation file ({e})", source=src) from None
