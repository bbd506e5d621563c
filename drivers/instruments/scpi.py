"""The SCPI instrument base class: every command logged, every command's errors checked.

Drivers talk to the bench only through `write` and `query`. Both record the command and the
reply in the instrument's wire log (and on the "pcm_hil.visa" logger at DEBUG) and then drain
the instrument's SCPI error queue (SYST:ERR?), so a command the instrument rejected raises
InstrumentError at the line that sent it instead of surfacing, much later, as a wrong
measurement.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar, List, Optional, Tuple

from drivers.instruments.errors import InstrumentError
from drivers.instruments.instrument import BenchInstrument
from drivers.instruments.parameter import ParamSpec

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


@dataclass(frozen=True)
class ScpiParam(ParamSpec):
    """A parameter of a SCPI driver: `get_cmd` is a query; `set_cmd` a format string with one
    `{}` for the value. Without `set_cmd` it is read-only (a measurement); without `get_cmd`,
    write-only. The commands are data: another dialect is another PARAMS table."""

    get_cmd: Optional[str] = None
    set_cmd: Optional[str] = None

    @property
    def gettable(self) -> bool:
        return self.get_cmd is not None

    @property
    def settable(self) -> bool:
        return self.set_cmd is not None


class ScpiInstrument(BenchInstrument):
    """Base of our SCPI drivers: PARAMS are ScpiParams, errors come from SYST:ERR?."""

    kind: ClassVar[str] = "scpi"
    PARAMS: ClassVar[Tuple[ScpiParam, ...]] = ()
    ERROR_QUERY: ClassVar[str] = "SYST:ERR?"

    def __init__(self, resource: Any, name: Optional[str] = None, *,
                 check_errors: bool = True, resource_manager: Any = None) -> None:
        super().__init__(name, str(getattr(resource, "resource_name", resource)))
        self.resource = resource
        self.check_errors = check_errors
        self._rm = resource_manager

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

    def _read_param(self, spec: ScpiParam) -> str:  # type: ignore[override]
        assert spec.get_cmd is not None
        return self.query(spec.get_cmd)

    def _write_param(self, spec: ScpiParam, value: Any) -> None:  # type: ignore[override]
        assert spec.set_cmd is not None
        text = ("1" if value else "0") if spec.kind is bool else (
            str(value) if spec.kind is int else f"{value:.9g}")
        self.write(spec.set_cmd.format(text))

    def _raw_write(self, command: str) -> None:
        self._check_open(command)
        self.wire.sent(command)
        try:
            self.resource.write(command)
        except Exception as e:  # pyvisa raises VisaIOError and OS-level errors
            self.wire.failed(e)
            raise InstrumentError(f"write failed: {e}", instrument=self.name,
                                  command=command) from None

    def _raw_query(self, command: str) -> str:
        self._check_open(command)
        self.wire.sent(command)
        try:
            reply = self.resource.query(command)
        except Exception as e:
            self.wire.failed(e)
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
        self.wire.received(reply)
        return reply

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

    # --- lifetime -------------------------------------------------------------------------
    def _close(self) -> None:
        """Close the VISA session (and the resource manager, if this driver opened it)."""
        try:
            self.resource.close()
        finally:
            if self._rm is not None:
                self._rm.close()
