"""The station (testbed) file: which chip link, which instruments, which limits and monitors.

One YAML file describes a bench: the chip's backend URL, the VISA instruments around it, the
safety limits every experiment on that bench obeys, and the monitors polled during training.
It is loaded strictly (drivers.typed_yaml): an unknown key, a missing limit or a monitor that
names an instrument the station does not have is one ConfigError naming the entry, before any
hardware is touched. An instrument is driven by our generic SCPI driver of its kind, or by a
PyMeasure class the station names (`pymeasure:`); both are checked here without opening
anything. See docs/instruments.md for the format.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, Iterator, List, Mapping, Optional, Type

import numpy as np

from drivers.errors import ConfigError
from drivers.instruments import DRIVERS, BenchInstrument, InstrumentError
from drivers.instruments.pymeasure_link import (PyMeasureInstrument, connection_options,
                                                pymeasure_class)
from drivers.instruments.pymeasure_models import binding_for
from drivers.safety import PulseLimits, SafetyLimits  # noqa: F401 - part of the station API
from drivers.typed_yaml import dataclass_to_dict, load_dataclass, read_yaml

STATION_FORMAT = "pcm-hil-station/1"
SIM_LIBRARY = "@sim"   # visa_library shorthand: the pyvisa-sim file shipped for the driver


class InstrumentKind(str, enum.Enum):
    SMU = "smu"
    POWER_SUPPLY = "power_supply"
    TEMPERATURE = "temperature"


class MonitorAction(str, enum.Enum):
    """What a monitor asks the training loop to do when its quantity leaves the band."""

    PAUSE = "pause"
    ABORT = "abort"


@dataclass(frozen=True)
class ChipLink:
    """How to reach the chip: a backend URL (sim://, socket://HOST:PORT, /dev/ttyUSB0, ...)."""

    url: str

    def __post_init__(self) -> None:
        if not self.url.strip():
            raise ValueError("chip.url must not be empty")


@dataclass(frozen=True)
class PyMeasureDriver:
    """A PyMeasure class driving an instrument (needs the `pymeasure` extra).

    class_name: the class's full name, e.g. pymeasure.instruments.keithley.Keithley2450.
    options: keyword arguments of the class: its own, or settings of the VISA connection
    (read_termination, baud_rate, parity: odd, ...). channel (a supply's output), input and
    loop (a temperature controller's sensor input and control loop): where the model has
    several, which one this instrument is.
    """

    class_name: str
    options: Dict[str, Any] = field(default_factory=dict)
    channel: Optional[int] = None
    input: Optional[str] = None
    loop: Optional[int] = None

    @property
    def selectors(self) -> Dict[str, Any]:
        return {k: v for k, v in (("channel", self.channel), ("input", self.input),
                                  ("loop", self.loop)) if v is not None}


@dataclass(frozen=True)
class InstrumentSpec:
    """One VISA instrument of the bench.

    visa_library: None = the system VISA; "@sim" = pyvisa-sim with the definition shipped for
    this driver (sim_backend/instruments); "FILE.yaml@sim" = pyvisa-sim with that file
    (relative to the station file); anything else ("@py", a VISA shared-library path) goes to
    pyvisa as is. limits: per-parameter [low, high] that narrow the driver's own limits
    (null = keep). pymeasure: drive it with a PyMeasure class instead of our generic driver.
    """

    name: str
    kind: InstrumentKind
    resource: str
    visa_library: Optional[str] = None
    timeout_ms: int = 2000
    check_errors: bool = True
    limits: Dict[str, List[Optional[float]]] = field(default_factory=dict)
    pymeasure: Optional[PyMeasureDriver] = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name must not be empty")
        if not self.resource.strip():
            raise ValueError("resource must not be empty")
        if self.timeout_ms < 1:
            raise ValueError(f"timeout_ms must be >= 1, got {self.timeout_ms}")


@dataclass(frozen=True)
class MonitorSpec:
    """Poll `instrument.quantity` every N steps; outside [low, high] ask for `action`."""

    instrument: str
    quantity: str
    every_n_steps: int = 1
    low: Optional[float] = None
    high: Optional[float] = None
    action: MonitorAction = MonitorAction.PAUSE

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {self.every_n_steps}")
        if self.low is None and self.high is None:
            raise ValueError("a monitor needs a band: set low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low:g} > high {self.high:g}")

    @property
    def label(self) -> str:
        return f"{self.instrument}.{self.quantity}"

    def in_band(self, value: float) -> bool:
        if not np.isfinite(value):
            return False
        return ((self.low is None or value >= self.low)
                and (self.high is None or value <= self.high))


@dataclass(frozen=True)
class Station:
    """A whole bench. `source_dir` (not a YAML key) resolves relative paths in the file."""

    chip: ChipLink
    safety: SafetyLimits
    format: str = STATION_FORMAT
    name: str = ""
    description: str = ""
    instruments: List[InstrumentSpec] = field(default_factory=list)
    monitors: List[MonitorSpec] = field(default_factory=list)
    source_dir: str = field(default="", init=False, repr=False, compare=False)

    def instrument(self, name: str) -> InstrumentSpec:
        for spec in self.instruments:
            if spec.name == name:
                return spec
        raise ConfigError(f"no instrument named {name!r} (instruments: "
                          f"{', '.join(i.name for i in self.instruments) or 'none'})")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclass_to_dict(self)
        d.pop("source_dir", None)
        return d

    def visa_library(self, spec: InstrumentSpec) -> Optional[str]:
        """The pyvisa ResourceManager argument for an instrument (see InstrumentSpec)."""
        lib = spec.visa_library
        if lib is None:
            return None
        if lib == SIM_LIBRARY:
            if spec.pymeasure is not None:
                binding = binding_for(spec.pymeasure.class_name, spec.kind.value)
                return f"{sim_definition(binding.SIM_FILE)}{SIM_LIBRARY}"
            return f"{sim_definition(spec.kind.value)}{SIM_LIBRARY}"
        if lib.endswith(SIM_LIBRARY):
            path = lib[: -len(SIM_LIBRARY)]
            if not os.path.isabs(path) and self.source_dir:
                path = os.path.join(self.source_dir, path)
            return f"{path}{SIM_LIBRARY}"
        return lib


def sim_definition(name: str) -> str:
    """Path of a pyvisa-sim YAML shipped in sim_backend/instruments: `<kind>` for our generic
    drivers, a model's file name (keithley_2450.yaml) for a PyMeasure binding."""
    file = name if name.endswith(".yaml") else f"{name}.yaml"
    ref = resources.files("sim_backend") / "instruments" / file
    if not ref.is_file():
        raise ConfigError(f"no simulated instrument definition {file!r}")
    return str(ref)


def driver_class(spec: InstrumentSpec) -> Type[BenchInstrument]:
    """The class that drives an instrument: our generic driver of its kind, or the binding of
    the PyMeasure class it names (ConfigError, no key, if that is not one pcm-hil drives)."""
    if spec.pymeasure is None:
        return DRIVERS[spec.kind.value]
    return binding_for(spec.pymeasure.class_name, spec.kind.value)


def _check_pymeasure(spec: InstrumentSpec, key: str,
                     source: Optional[str]) -> Type[BenchInstrument]:
    """The PyMeasure binding of an instrument, its selectors and options checked; every
    problem one ConfigError naming the entry (no VISA resource is opened)."""
    assert spec.pymeasure is not None
    pkey = f"{key}.pymeasure"
    try:
        binding = binding_for(spec.pymeasure.class_name, spec.kind.value)
    except ConfigError as e:
        raise ConfigError(e.detail, key=f"{pkey}.class_name", source=source) from None
    try:
        binding.check_selectors(spec.pymeasure.selectors)
        connection_options(pymeasure_class(spec.pymeasure.class_name), spec.resource,
                           spec.pymeasure.options)
    except ConfigError as e:
        where = f"{key}.resource" if e.key == "resource" else f"{pkey}.{e.key}"
        raise ConfigError(e.detail, key=where, source=source) from None
    return binding


# --- loading ----------------------------------------------------------------------------------
def load_station(path: str | os.PathLike) -> Station:
    """Read and validate a station file; every problem is one ConfigError naming the entry."""
    src = str(path)
    station = load_dataclass(Station, read_yaml(path), source=src)
    object.__setattr__(station, "source_dir", os.path.dirname(os.path.abspath(src)))
    validate_station(station, source=src)
    return station


def validate_station(station: Station, source: Optional[str] = None) -> None:
    """Cross-entry checks the dataclasses cannot do alone."""
    if station.format != STATION_FORMAT:
        raise ConfigError(f"format {station.format!r} is not {STATION_FORMAT!r}", key="format",
                          source=source)
    seen: Dict[str, int] = {}
    drivers_of: Dict[str, Type[BenchInstrument]] = {}
    for i, spec in enumerate(station.instruments):
        key = f"instruments[{i}]"
        if spec.name in seen:
            raise ConfigError(f"instrument name {spec.name!r} already used by "
                              f"instruments[{seen[spec.name]}]", key=f"{key}.name",
                              source=source)
        seen[spec.name] = i
        cls = DRIVERS[spec.kind.value] if spec.pymeasure is None else \
            _check_pymeasure(spec, key, source)
        drivers_of[spec.name] = cls
        params = {p.name: p for p in cls.PARAMS}
        for pname, rng in spec.limits.items():
            lkey = f"{key}.limits.{pname}"
            p = params.get(pname)
            if p is None or not p.settable or p.kind is bool:
                numeric = [q.name for q in cls.PARAMS if q.settable and q.kind is not bool]
                what = spec.kind.value if spec.pymeasure is None else \
                    f"{spec.kind.value} driven by {spec.pymeasure.class_name}"
                raise ConfigError(f"{pname!r} is not a numeric setting of a {what} "
                                  f"(settings: {', '.join(numeric)})", key=lkey, source=source)
            if len(rng) != 2:
                raise ConfigError(f"expected [low, high], got {rng!r}", key=lkey, source=source)
            lo, hi = rng
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"low {lo:g} > high {hi:g}", key=lkey, source=source)
        if spec.visa_library and spec.visa_library.endswith(SIM_LIBRARY) \
                and spec.visa_library != SIM_LIBRARY:
            lib = station.visa_library(spec)
            assert lib is not None
            if not os.path.isfile(lib[: -len(SIM_LIBRARY)]):
                raise ConfigError(f"pyvisa-sim file {lib[:-len(SIM_LIBRARY)]!r} not found",
                                  key=f"{key}.visa_library", source=source)
    has_supply = any(s.kind is InstrumentKind.POWER_SUPPLY for s in station.instruments)
    if has_supply and station.safety.supply_current_max_a is None:
        raise ConfigError("required when the station has a power_supply",
                          key="safety.supply_current_max_a", source=source)
    for i, mon in enumerate(station.monitors):
        key = f"monitors[{i}]"
        if mon.instrument not in seen:
            raise ConfigError(f"{mon.instrument!r} is not an instrument of this station "
                              f"(instruments: {', '.join(seen) or 'none'})",
                              key=f"{key}.instrument", source=source)
        kind = station.instruments[seen[mon.instrument]].kind.value
        quantities = drivers_of[mon.instrument].QUANTITIES
        if mon.quantity not in quantities:
            raise ConfigError(f"{mon.quantity!r} is not a quantity of a {kind} "
                              f"(quantities: {', '.join(quantities)})",
                              key=f"{key}.quantity", source=source)


# --- opening the instruments -------------------------------------------------------------------
class InstrumentSet(Mapping[str, BenchInstrument]):
    """The open instruments of a station, by name; closes them all together."""

    def __init__(self, instruments: Dict[str, BenchInstrument]) -> None:
        self._inst = dict(instruments)

    def __getitem__(self, name: str) -> BenchInstrument:
        try:
            return self._inst[name]
        except KeyError:
            raise ConfigError(f"no open instrument named {name!r} (open: "
                              f"{', '.join(self._inst) or 'none'})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._inst

    def get(self, name: str, default: Any = None) -> Any:
        return self._inst.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._inst)

    def __len__(self) -> int:
        return len(self._inst)

    def snapshot(self) -> Dict[str, Any]:
        """Every instrument's settings and readings, for run provenance."""
        return {name: inst.snapshot() for name, inst in self._inst.items()}

    def close(self) -> None:
        errors = []
        for inst in self._inst.values():
            try:
                inst.close()
            except Exception as e:  # close every one even if one fails
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self) -> "InstrumentSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_instrument(station: Station, spec: InstrumentSpec) -> BenchInstrument:
    """Open one instrument, narrow its limits from the station, check its present settings."""
    cls = driver_class(spec)
    inst: BenchInstrument
    if spec.pymeasure is None:
        inst = DRIVERS[spec.kind.value].open(
            spec.resource, name=spec.name, visa_library=station.visa_library(spec),
            timeout_ms=spec.timeout_ms, check_errors=spec.check_errors)
    else:
        assert issubclass(cls, PyMeasureInstrument)
        inst = cls.open(spec.pymeasure.class_name, spec.resource, name=spec.name,
                        visa_library=station.visa_library(spec), timeout_ms=spec.timeout_ms,
                        options=spec.pymeasure.options, selectors=spec.pymeasure.selectors,
                        check_errors=spec.check_errors)
    try:
        idx = station.instruments.index(spec)
        for pname, (lo, hi) in spec.limits.items():
            inst.parameters[pname].tighten(lo, hi, f"station instruments[{idx}].limits."
                                                   f"{pname}")
        if spec.kind is InstrumentKind.POWER_SUPPLY and \
                station.safety.supply_current_max_a is not None:
            inst.parameters["current_limit_a"].tighten(
                None, station.safety.supply_current_max_a, "station safety.supply_current_max_a")
        check_settings(inst)
    except BaseException:
        inst.close()
        raise
    return inst


def check_settings(inst: BenchInstrument) -> None:
    """Refuse an instrument whose present settings already violate its (narrowed) limits."""
    for p in inst.parameters.values():
        if not (p.spec.settable and p.spec.gettable) or p.spec.kind is bool:
            continue
        if p.low is None and p.high is None:
            continue
        value = p.get()
        if (p.low is not None and value < p.low) or (p.high is not None and value > p.high):
            raise InstrumentError(f"present {p.name} = {value:g} {p.unit} is outside its limits "
                                  f"[{p.low}, {p.high}] (from {p.limits_source}); set it within "
                                  "them on the instrument before using this station",
                                  instrument=inst.name)


def open_instruments(station: Station, names: Optional[List[str]] = None) -> InstrumentSet:
    """Open the station's instruments (or only `names`); all or nothing."""
    specs = station.instruments if names is None else [station.instrument(n) for n in names]
    opened: Dict[str, BenchInstrument] = {}
    try:
        for spec in specs:
            opened[spec.name] = open_instrument(station, spec)
    except BaseException:
        InstrumentSet(opened).close()
        raise
    return InstrumentSet(opened)
