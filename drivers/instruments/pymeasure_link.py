"""PyMeasure's maintained instrument drivers, under pcm-hil's parameters, limits and wire log.

A lab's bench has a Keithley, a Keysight, a Lake Shore: PyMeasure already drives them, so
pcm-hil uses its classes instead of writing its own dialect for each. What pcm-hil adds stays
ours: every setting is a Parameter (limits that only narrow, with their provenance) wrapping
one of the driver's properties; a value outside the limits is refused before the driver is
called, so nothing reaches the wire; every message the driver exchanges is recorded in the
instrument's wire log; the instrument's errors are checked after every access.

How: the PyMeasure class is constructed from the resource string (so it opens the connection
with its own model defaults: terminations, serial settings), then its adapter is replaced by
one that shares the connection and records every message (PyMeasure's own design: the public
Adapter methods log, subclasses do the private I/O). PyMeasure is an optional extra
(`pip install 'pcm-hil[pymeasure]'`), imported only when a station names one of its classes.
The model bindings (which property serves which parameter) are in
drivers.instruments.pymeasure_models.
"""
from __future__ import annotations

import enum
import importlib
import inspect
import logging
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

from drivers.errors import ConfigError
from drivers.instruments.errors import InstrumentError
from drivers.instruments.instrument import BenchInstrument
from drivers.instruments.parameter import ParamSpec
from drivers.instruments.wire import WireLog

log = logging.getLogger("pcm_hil.visa")

PYMEASURE_EXTRA = "pip install 'pcm-hil[pymeasure]'"
PACKAGE = "pymeasure.instruments"
MAX_ERRORS = 32          # stop draining an error queue after this many entries
# Constructor arguments pcm-hil sets itself (the station's own keys say them).
RESERVED_OPTIONS = {"adapter": "resource", "name": "name", "visa_library": "visa_library",
                    "timeout": "timeout_ms", "includeSCPI": None, "log": None}


class ErrorReport(enum.Enum):
    """How a model reports a command it rejected."""

    SCPI_QUEUE = "SYST:ERR?"      # SCPI error queue, drained through the driver's next_error
    EVENT_STATUS = "*ESR?"        # IEEE 488.2 event status register (no SCPI error queue)


# *ESR? bits that mean an error (IEEE 488.2), with the names the manuals give them.
ESR_ERRORS = ((32, "Command error"), (16, "Execution error"), (8, "Device-dependent error"),
              (4, "Query error"))


@dataclass(frozen=True)
class DriverParam(ParamSpec):
    """A parameter served by a PyMeasure driver.

    `get_attr`/`set_attr` are attribute paths on the driver, with `{channel}`, `{input}` or
    `{loop}` filled from the station (e.g. "ch_{channel}.voltage_setpoint"). `switch` names
    the driver's two methods that set an on/off parameter (on, off), for a model whose
    driver offers methods rather than a settable property.
    """

    get_attr: Optional[str] = None
    set_attr: Optional[str] = None
    switch: Optional[Tuple[str, str]] = None

    @property
    def gettable(self) -> bool:
        return self.get_attr is not None

    @property
    def settable(self) -> bool:
        return self.set_attr is not None or self.switch is not None


def like(spec: ParamSpec, **changes: Any) -> DriverParam:
    """A DriverParam with the name, unit, kind and doc of our driver's `spec`: one role, one
    vocabulary, whichever driver serves it."""
    base = {f.name: getattr(spec, f.name) for f in fields(ParamSpec)}
    return replace(DriverParam(**base), **changes)


# --- finding PyMeasure and its classes ----------------------------------------------------------
def pymeasure_version() -> str:
    try:
        import pymeasure
    except ImportError:
        raise ConfigError(f"PyMeasure is not installed ({PYMEASURE_EXTRA})") from None
    return str(getattr(pymeasure, "__version__", "unknown"))


def pymeasure_class(dotted: str) -> type:
    """The PyMeasure instrument class named `dotted` (e.g.
    "pymeasure.instruments.keithley.Keithley2450"); ConfigError if it is not one."""
    if not dotted.startswith(PACKAGE + ".") or dotted.count(".") < 3:
        raise ConfigError(f"{dotted!r} is not a PyMeasure instrument class name (expected "
                          f"{PACKAGE}.<maker>.<Class>, e.g. "
                          f"{PACKAGE}.keithley.Keithley2450)")
    pymeasure_version()
    module_name, _, class_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r} for {dotted!r}: {e}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{module_name} has no class {class_name!r}")
    from pymeasure.instruments import Instrument
    if not (inspect.isclass(cls) and issubclass(cls, Instrument)):
        raise ConfigError(f"{dotted!r} is not a PyMeasure instrument class")
    return cls


# --- connection options ---------------------------------------------------------------------------
def _resource_class(resource: str) -> type:
    """The pyvisa resource class a resource string opens as (its settable attributes)."""
    import pyvisa
    from pyvisa import constants, resources, rname
    try:
        parsed = rname.parse_resource_name(resource)
    except (ValueError, pyvisa.errors.Error) as e:     # rname.InvalidResourceName
        raise ConfigError(f"{resource!r} is not a VISA resource string: {e}",
                          key="resource") from None
    it = constants.InterfaceType
    table = {(it.gpib, "INSTR"): resources.GPIBInstrument,
             (it.asrl, "INSTR"): resources.SerialInstrument,
             (it.usb, "INSTR"): resources.USBInstrument,
             (it.tcpip, "INSTR"): resources.TCPIPInstrument,
             (it.tcpip, "SOCKET"): resources.TCPIPSocket}
    return table.get((parsed.interface_type_const, parsed.resource_class),
                     resources.MessageBasedResource)


def connection_options(cls: type, resource: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """Check a station's `options` for PyMeasure class `cls` on `resource`; return them with
    names of pyvisa enumerations turned into their values (`parity: odd`).

    An option is a keyword argument of the class, an attribute of the pyvisa resource
    (`read_termination`, `baud_rate`, ...) or a per-interface mapping of those (`asrl: {...}`),
    as PyMeasure accepts them. ConfigError (key `options.<name>`) otherwise.
    """
    import pyvisa
    res_cls = _resource_class(resource)
    sig = inspect.signature(cls.__init__)
    own = {n for n, p in sig.parameters.items()
           if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    interfaces = set(pyvisa.constants.InterfaceType.__members__)
    out: Dict[str, Any] = {}
    for key, value in options.items():
        okey = f"options.{key}"
        if key in RESERVED_OPTIONS:
            instead = RESERVED_OPTIONS[key]
            raise ConfigError("set by pcm-hil" + (f" from the instrument's `{instead}` key"
                                                  if instead else ""), key=okey)
        if key in interfaces:
            if not isinstance(value, Mapping):
                raise ConfigError(f"expected a mapping of {key} connection settings",
                                  key=okey)
            out[key] = connection_options(cls, resource, value)
            continue
        if key not in own and not hasattr(res_cls, key):
            raise ConfigError(f"not an option of {cls.__name__} nor a setting of a "
                              f"{res_cls.__name__} ({resource})", key=okey)
        enum_type = getattr(getattr(res_cls, key, None), "enum_type", None)
        if enum_type is not None and isinstance(value, str):
            try:
                value = enum_type[value]
            except KeyError:
                names = ", ".join(m.name for m in enum_type)
                raise ConfigError(f"{value!r} is not one of: {names}", key=okey) from None
        out[key] = value
    return out


# --- the adapter that records every message -------------------------------------------------------
_ADAPTER_CLASS: Optional[type] = None


def _wire_adapter_class() -> type:
    """A VISAAdapter that shares an opened connection and records every message it moves."""
    global _ADAPTER_CLASS
    if _ADAPTER_CLASS is None:
        from pymeasure.adapters import VISAAdapter

        class WireAdapter(VISAAdapter):
            """PyMeasure's public Adapter methods call these private ones for every message."""

            wire: WireLog

            def _write(self, command: str, **kwargs: Any) -> None:
                self.wire.sent(command)
                super()._write(command, **kwargs)

            def _write_bytes(self, content: bytes, **kwargs: Any) -> None:
                self.wire.sent(content)
                super()._write_bytes(content, **kwargs)

            def _read(self, **kwargs: Any) -> str:
                reply = super()._read(**kwargs)
                self.wire.received(reply)
                return reply

            def _read_bytes(self, count: int, break_on_termchar: bool = False,
                            **kwargs: Any) -> bytes:
                reply = super()._read_bytes(count, break_on_termchar, **kwargs)
                self.wire.received(reply)
                return reply

        _ADAPTER_CLASS = WireAdapter
    return _ADAPTER_CLASS


def _record_wire(driver: Any, wire: WireLog) -> None:
    """Put `driver`'s messages through `wire`: its adapter is replaced by one that shares the
    connection (the old one lets go of it, so closing happens once)."""
    old = driver.adapter
    new = _wire_adapter_class()(old)          # VISAAdapter(VISAAdapter) reuses the connection
    new.wire = wire
    old.connection, old.manager = None, None
    driver.adapter = new


# --- the instrument -------------------------------------------------------------------------------
class PyMeasureInstrument(BenchInstrument):
    """A bench instrument driven by a PyMeasure class, bound to one role by a subclass.

    Subclasses (one per supported model, in pymeasure_models) declare the PyMeasure classes
    they drive, the *IDN? pattern of the model, the station selectors the model needs
    (SELECTORS: e.g. {"channel": (1, 2, 3)}), how it reports errors, its pyvisa-sim file and
    PARAMS (DriverParams).
    """

    PYMEASURE_CLASSES: ClassVar[Tuple[str, ...]] = ()
    MODEL: ClassVar[str] = ""
    IDN_PATTERN: ClassVar[str] = ""
    SELECTORS: ClassVar[Mapping[str, Tuple[Any, ...]]] = {}
    SELECTOR_DOCS: ClassVar[Mapping[str, str]] = {}
    ERRORS: ClassVar[ErrorReport] = ErrorReport.SCPI_QUEUE
    SIM_FILE: ClassVar[str] = ""
    PARAMS: ClassVar[Tuple[DriverParam, ...]] = ()

    def __init__(self, driver: Any, name: Optional[str] = None, *, driver_class: str,
                 resource_name: str, selectors: Optional[Mapping[str, Any]] = None,
                 check_errors: bool = True, wire: Optional[WireLog] = None) -> None:
        self.selectors = dict(selectors or {})
        super().__init__(name, resource_name)
        if wire is not None:
            self.wire = wire
        self.driver = driver
        self.driver_class = driver_class
        self.check_errors = check_errors

    # --- station-time checks (no I/O) -------------------------------------------------------
    @classmethod
    def drives(cls, pm_class: type) -> bool:
        """Whether this binding serves PyMeasure class `pm_class` (or a subclass of it)."""
        mine = tuple(pymeasure_class(c) for c in cls.PYMEASURE_CLASSES)
        return issubclass(pm_class, mine)

    @classmethod
    def check_selectors(cls, given: Mapping[str, Any]) -> None:
        """ConfigError (key = the selector) unless exactly the model's selectors are set."""
        for key, value in given.items():
            if value is None:
                continue
            if key not in cls.SELECTORS:
                raise ConfigError(f"a {cls.MODEL} has no {key} to choose", key=key)
            if value not in cls.SELECTORS[key]:
                raise ConfigError(f"{value!r} is not one of: "
                                  f"{', '.join(map(str, cls.SELECTORS[key]))}", key=key)
        for key, choices in cls.SELECTORS.items():
            if given.get(key) is None:
                raise ConfigError(f"required for a {cls.MODEL}: "
                                  f"{cls.SELECTOR_DOCS.get(key, key)} "
                                  f"({', '.join(map(str, choices))})", key=key)

    # --- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, class_name: str, resource: str, *, name: str,
             visa_library: Optional[str] = None, timeout_ms: int = 2000,
             options: Optional[Mapping[str, Any]] = None,
             selectors: Optional[Mapping[str, Any]] = None,
             check_errors: bool = True) -> "PyMeasureInstrument":
        """Construct the PyMeasure class on `resource`, record its wire, check the model."""
        import pyvisa
        pm_class = pymeasure_class(class_name)
        cls.check_selectors(selectors or {})
        kwargs = connection_options(pm_class, resource, options or {})
        wire = WireLog(name)
        try:
            driver = pm_class(resource, visa_library=visa_library or "", timeout=timeout_ms,
                              **kwargs)
        except (OSError, ValueError, TypeError, pyvisa.errors.Error) as e:
            raise InstrumentError(f"cannot open VISA resource {resource!r} with "
                                  f"{pm_class.__name__}"
                                  + (f" (options {dict(options)})" if options else "")
                                  + f": {e}", instrument=name) from None
        _record_wire(driver, wire)
        inst = cls(driver, name, driver_class=class_name, resource_name=resource,
                   selectors=selectors, check_errors=check_errors, wire=wire)
        try:
            inst._attach()
        except BaseException:
            inst.close()
            raise
        return inst

    def _attach(self) -> None:
        """Prove the model answers, drop stale errors, let the model check its setup."""
        try:
            # Some VISA layers open any well-formed address: prove something answers.
            idn = str(self._access("*IDN?", lambda: self.driver.id, check=False)).strip()
            if not idn:
                raise InstrumentError("empty answer to *IDN?", instrument=self.name)
        except InstrumentError as e:
            raise InstrumentError(f"no working instrument at {self.resource_name!r}: "
                                  f"{e.message}", instrument=self.name,
                                  command=e.command) from None
        if not re.search(self.IDN_PATTERN, idn):
            raise InstrumentError(f"{self.resource_name} answers *IDN? with {idn!r}, which is "
                                  f"not a {self.MODEL} ({self.driver_class} expects one)",
                                  instrument=self.name)
        self.idn_string = idn
        if self.check_errors:
            self._drain_errors()
        self.check_setup()

    def check_setup(self) -> None:
        """Refuse a model whose present configuration the role cannot use (override)."""

    # --- I/O --------------------------------------------------------------------------------
    def _target(self, path: str) -> Tuple[Any, str]:
        """(object, attribute) of a DriverParam path on the driver."""
        parts = path.format(**self.selectors).split(".")
        obj = self.driver
        for part in parts[:-1]:
            obj = getattr(obj, part)
        return obj, parts[-1]

    def _access(self, what: str, fn: Callable[[], Any], check: bool = True) -> Any:
        """Run one driver access: errors of any kind become InstrumentError naming `what`;
        then (unless `check` is false) the instrument's own error report is checked."""
        self._check_open(what)
        mark = self.wire.count
        try:
            result = fn()
        except InstrumentError:
            raise
        except Exception as e:  # pyvisa VisaIOError, PyMeasure ValueError, parsing, ...
            self.wire.failed(e)
            sent = self.wire.sent_since(mark)
            queued: List[Tuple[int, str]] = []
            if self.check_errors:         # a query the instrument rejected says why there
                try:
                    queued = self.error_queue()
                except InstrumentError:
                    pass
            raise InstrumentError(f"{what} failed ({type(e).__name__}: {e})",
                                  instrument=self.name, command=sent[-1] if sent else None,
                                  scpi_errors=queued) from None
        if self.check_errors and check:
            errors = self.error_queue()
            if errors:
                sent = self.wire.sent_since(mark)
                raise InstrumentError(f"instrument reported errors after {what}",
                                      instrument=self.name,
                                      command=sent[0] if sent else None, scpi_errors=errors)
        return result

    def _describe(self, path: str) -> str:
        return f"{type(self.driver).__name__}.{path.format(**self.selectors)}"

    def _read_param(self, spec: DriverParam) -> Any:  # type: ignore[override]
        assert spec.get_attr is not None
        obj, attr = self._target(spec.get_attr)
        return self._access(self._describe(spec.get_attr), lambda: getattr(obj, attr))

    def _write_param(self, spec: DriverParam, value: Any) -> None:  # type: ignore[override]
        if spec.switch is not None:
            method = spec.switch[0] if value else spec.switch[1]
            obj, attr = self._target(method)
            self._access(f"{self._describe(method)}()", lambda: getattr(obj, attr)())
            return
        assert spec.set_attr is not None
        obj, attr = self._target(spec.set_attr)
        self._access(f"{self._describe(spec.set_attr)} = {value!r}",
                     lambda: setattr(obj, attr, value))

    def ask(self, command: str) -> str:
        """A query of the model's manual that its PyMeasure class does not offer, through the
        same recorded adapter; errors checked like any access. Returns the reply text."""
        return str(self._access(command, lambda: self.driver.ask(command))).strip()

    # --- errors -----------------------------------------------------------------------------
    def error_queue(self) -> List[Tuple[int, str]]:
        """The errors the instrument reports now (and forgets): SCPI queue entries as
        (code, message), or the error bits of *ESR? as (bit weight, name)."""
        self._check_open(self.ERRORS.value)
        try:
            if self.ERRORS is ErrorReport.EVENT_STATUS:
                reply = self.driver.values("*ESR?")
                esr = int(float(reply[0]))
                return [(bit, text) for bit, text in ESR_ERRORS if esr & bit]
            errors: List[Tuple[int, str]] = []
            for _ in range(MAX_ERRORS):
                entry = self.driver.next_error
                code = int(float(entry[0]))
                if code == 0:
                    return errors
                errors.append((code, ",".join(str(x) for x in entry[1:]).strip().strip('"')))
        except (ValueError, TypeError, IndexError) as e:
            raise InstrumentError(f"malformed answer to {self.ERRORS.value} ({e})",
                                  instrument=self.name, command=self.ERRORS.value) from None
        except Exception as e:
            self.wire.failed(e)
            raise InstrumentError(f"no valid answer to {self.ERRORS.value} ({e})",
                                  instrument=self.name, command=self.ERRORS.value) from None
        raise InstrumentError(f"error queue did not empty after {MAX_ERRORS} reads",
                              instrument=self.name, command=self.ERRORS.value,
                              scpi_errors=errors)

    def _drain_errors(self) -> None:
        stale = self.error_queue()
        if stale:
            log.info("%s: discarded stale instrument errors %s", self.name, stale)

    # --- identity and lifetime --------------------------------------------------------------
    def idn(self) -> str:
        return str(self._access("*IDN?", lambda: self.driver.id))

    def driver_info(self) -> Dict[str, Any]:
        info: Dict[str, Any] = {"driver": self.driver_class, "driver_version":
                                f"pymeasure {pymeasure_version()}",
                                "binding": f"{type(self).__module__}.{type(self).__qualname__}"}
        if self.selectors:
            info["selectors"] = dict(self.selectors)
        return info

    def _close(self) -> None:
        self.driver.adapter.close()
