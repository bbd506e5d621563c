"""The SCPI instrument base class: every command logged, every command's errors checked.

Drivers talk to the bench only through `write` and `query`. Both log the command and the reply
on the "pcm_hil.visa" logger (DEBUG) and then drain the instrument's SCPI error queue
(SYST:ERR?), so a command the instrument rejected raises InstrumentError at the line that sent
it instead of surfacing, much later, as a wrong measurement.
"""
from __future__ import annotations

import logging
import re
from types import TracebackType
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type

from drivers.instruments.errors import InstrumentError
from drivers.instruments.parameter import ParamSpec, Parameter

log = logging.getLogger("pcm_hil.visa")

_ERR_RE = re.compile(r"^\s*([+-]?\d+)\s*,\s*(.*?)\s*$")
MAX_ERROR_QUEUE = 32   # stop draining after this many entries (a broken instrument loops)


def open_visa_resource(resource: str, visa_library: Optional[str] = None, *,
                       timeout_ms: int = 2000, name: Optional[str] = None,
                       read_termination: str = "\n",
                       write_termination: str = "\n") -> Tuple[Any, Any]:
    """Open a VISA message-based resource; returns (resource, resource_manager).

    `visa_library` is what pyvisa.ResourceManager takes: None for the system VISA,
    "@py" for pyvisa-py, "FILE.yaml@sim" for pyvisa-sim. Failures become InstrumentError.
    """
    import pyvisa

    who = name or resource
    try:
        rm = pyvisa.ResourceManager(visa_library) if visa_library else pyvisa.ResourceManager()
    except (OSError, ValueError, pyvisa.errors.Error) as e:
        raise InstrumentError(f"cannot load the VISA library {visa_library or '(default)'!r}: "
                              f"{e}", instrument=who) from None
    try:
        res = rm.open_resource(resource, read_termination=read_termination,
                               write_termination=write_termination, timeout=timeout_ms)
    except (pyvisa.errors.Error, ValueError) as e:
        rm.close()
        raise InstrumentError(f"cannot open VISA resource {resource!r}: {e}",
                              instrument=who) from None
    return res, rm


class ScpiInstrument:
    """Base of the SCPI drivers. Subclasses declare PARAMS and QUANTITIES.

    PARAMS: the ParamSpecs of the driver; each becomes `self.parameters[name]` (and an
    attribute of the same name). QUANTITIES: the parameters a monitor may poll.
    """

    kind: ClassVar[str] = "scpi"
    PARAMS: ClassVar[Tuple[ParamSpec, ...]] = ()
    QUANTITIES: ClassVar[Tuple[str, ...]] = ()
    ERROR_QUERY: ClassVar[str] = "SYST:ERR?"

    def __init__(self, resource: Any, name: Optional[str] = None, *,
                 check_errors: bool = True, resource_manager: Any = None) -> None:
        self.resource = resource
        self.resource_name = str(getattr(resource, "resource_name", resource))
        self.name = name or self.kind
        self.check_errors = check_errors
        self._rm = resource_manager
        self._closed = False
        self.idn_string: Optional[str] = None
        self.parameters: Dict[str, Parameter] = {}
        for spec in self.PARAMS:
            self.parameters[spec.name] = Parameter(self, spec)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def open(cls, resource: str, *, name: Optional[str] = None,
             visa_library: Optional[str] = None, timeout_ms: int = 2000,
             check_errors: bool = True) -> "ScpiInstrument":
        """Open `resource` (a VISA resource string) and return the driver, owning the session."""
        res, rm = open_visa_resource(resource, visa_library, timeout_ms=timeout_ms,
                                     name=name or cls.kind)
        inst = cls(res, name, check_errors=check_errors, resource_manager=rm)
        try:
            # Some VISA layers open any well-formed address: prove something answers.
            idn = inst._raw_query("*IDN?")
            if not idn:
                raise InstrumentError("empty answer to *IDN?", instrument=inst.name)
            inst.idn_string = idn
            inst.clear_errors()
        except InstrumentError as e:
            inst.close()
            raise InstrumentError(f"no working instrument at {resource!r}: {e}",
                                  instrument=inst.name) from None
        return inst

    @classmethod
    def param_names(cls) -> Tuple[str, ...]:
        return tuple(p.name for p in cls.PARAMS)

    def __getattr__(self, item: str) -> Parameter:
        params = self.__dict__.get("parameters")
        if params is not None and item in params:
            return params[item]
        raise AttributeError(f"{type(self).__name__} has no attribute {item!r}")

    # --- the two doors --------------------------------------------------------------------
    def write(self, command: str) -> None:
        """Send one command, log it, then raise InstrumentError if the instrument objected."""
        self._raw_write(command)
        if self.check_errors:
            self.raise_on_errors(command)

    def query(self, command: str) -> str:
        """Send a query, log command and reply, check the error queue, return the reply."""
        reply = self._raw_query(command)
        if self.check_errors:
            self.raise_on_errors(command)
        return reply

    def query_float(self, command: str) -> float:
        reply = self.query(command)
        try:
            return float(reply.split(",")[0])
        except ValueError:
            raise InstrumentError(f"cannot parse reply {reply!r} as a number",
                                  instrument=self.name, command=command) from None

    def _raw_write(self, command: str) -> None:
        self._check_open(command)
        log.debug("%s >> %s", self.name, command)
        try:
            self.resource.write(command)
        except Exception as e:  # pyvisa raises VisaIOError and OS-level errors
            log.debug("%s !! %s", self.name, e)
            raise InstrumentError(f"write failed: {e}", instrument=self.name,
                                  command=command) from None

    def _raw_query(self, command: str) -> str:
        self._check_open(command)
        log.debug("%s >> %s", self.name, command)
        try:
            reply = self.resource.query(command)
        except Exception as e:
            log.debug("%s !! %s", self.name, e)
            # A query the instrument did not understand usually times out; its error queue
            # says why.
            queued: List[Tuple[int, str]] = []
            if self.check_errors and command != self.ERROR_QUERY:
                try:
                    queued = self.error_queue()
                except InstrumentError:
                    pass
            raise InstrumentError(f"no valid reply ({e})", instrument=self.name,
                                  command=command, scpi_errors=queued) from None
        reply = reply.strip()
        log.debug("%s << %s", self.name, reply)
        return reply

    def _check_open(self, command: str) -> None:
        if self._closed:
            raise InstrumentError("instrument is closed", instrument=self.name,
                                  command=command)

    # --- error queue ----------------------------------------------------------------------
    def error_queue(self) -> List[Tuple[int, str]]:
        """Drain SYST:ERR? until it answers code 0; returns the (code, message) pairs."""
        errors: List[Tuple[int, str]] = []
        for _ in range(MAX_ERROR_QUEUE):
            reply = self._raw_query(self.ERROR_QUERY)
            m = _ERR_RE.match(reply)
            if not m:
                raise InstrumentError(f"malformed error-queue reply {reply!r}",
                                      instrument=self.name, command=self.ERROR_QUERY)
            code, text = int(m.group(1)), m.group(2).strip('"')
            if code == 0:
                return errors
            errors.append((code, text))
        raise InstrumentError(f"error queue did not empty after {MAX_ERROR_QUEUE} reads",
                              instrument=self.name, command=self.ERROR_QUERY,
                              scpi_errors=errors)

    def raise_on_errors(self, command: str) -> None:
        errors = self.error_queue()
        if errors:
            raise InstrumentError("instrument reported errors", instrument=self.name,
                                  command=command, scpi_errors=errors)

    def clear_errors(self) -> List[Tuple[int, str]]:
        """Empty the error queue (left over from before we connected); returns what was there."""
        if not self.check_errors:
            return []
        stale = self.error_queue()
        if stale:
            log.info("%s: discarded stale instrument errors %s", self.name, stale)
        return stale

    # --- common SCPI ----------------------------------------------------------------------
    def idn(self) -> str:
        return self.query("*IDN?")

    def reset(self) -> None:
        """*RST: back to the instrument's power-on settings."""
        self.write("*RST")
        for p in self.parameters.values():
            p.last_value = None

    def read_quantity(self, quantity: str) -> float:
        """Read one of QUANTITIES (what monitors poll)."""
        if quantity not in self.QUANTITIES:
            raise InstrumentError(f"unknown quantity {quantity!r}; this {self.kind} offers "
                                  f"{', '.join(self.QUANTITIES)}", instrument=self.name)
        return float(self.parameters[quantity].get())

    def snapshot(self, update: bool = True) -> Dict[str, Any]:
        """Settings and readings for run provenance; `update` re-reads everything gettable.

        A parameter that fails to read is recorded with its error instead of raising, so a
        provenance snapshot never aborts a run.
        """
        out: Dict[str, Any] = {"name": self.name, "kind": self.kind,
                               "resource": self.resource_name}
        try:
            out["idn"] = self.idn() if update else None
        except InstrumentError as e:
            out["idn"] = None
            out["idn_error"] = str(e)
        params: Dict[str, Any] = {}
        for pname, p in self.parameters.items():
            if update and p.spec.gettable:
                try:
                    p.get()
                except InstrumentError as e:
                    params[pname] = dict(p.snapshot(), error=str(e))
                    continue
            params[pname] = p.snapshot()
        out["parameters"] = params
        return out

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the VISA session (and the resource manager, if this driver opened it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.resource.close()
        finally:
            if self._rm is not None:
                self._rm.close()

    def __enter__(self) -> "ScpiInstrument":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.resource_name}>"
