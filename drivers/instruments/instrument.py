"""What every bench instrument offers, whoever speaks to it: parameters, quantities, snapshot.

Two kinds of driver sit under this class: our generic SCPI drivers (drivers.instruments.scpi)
and PyMeasure's maintained model drivers (drivers.instruments.pymeasure_link). Stations,
monitors and run logs only use what is here, so limits, provenance, snapshots and monitors
behave the same whichever one a station file names.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any, ClassVar, Dict, Optional, Tuple, Type

from drivers.instruments.errors import InstrumentError
from drivers.instruments.parameter import ParamSpec, Parameter
from drivers.instruments.wire import WireLog


class BenchInstrument:
    """Base of every instrument driver. Subclasses declare `kind`, PARAMS and QUANTITIES.

    PARAMS: the ParamSpecs of the driver; each becomes `self.parameters[name]` (and an
    attribute of the same name). QUANTITIES: the parameters a monitor may poll. Subclasses do
    the I/O in `_read_param`/`_write_param` and put every message through `self.wire`.
    """

    kind: ClassVar[str] = "instrument"
    PARAMS: ClassVar[Tuple[ParamSpec, ...]] = ()
    QUANTITIES: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, name: Optional[str] = None, resource_name: str = "") -> None:
        self.name = name or self.kind
        self.resource_name = resource_name
        self.wire = WireLog(self.name)
        self.idn_string: Optional[str] = None
        self._closed = False
        self.parameters: Dict[str, Parameter] = {}
        for spec in self.param_specs():
            self.parameters[spec.name] = Parameter(self, spec)

    def param_specs(self) -> Tuple[ParamSpec, ...]:
        """The specs of this instance (a model whose ranges depend on the channel overrides)."""
        return self.PARAMS

    @classmethod
    def param_names(cls) -> Tuple[str, ...]:
        return tuple(p.name for p in cls.PARAMS)

    def __getattr__(self, item: str) -> Parameter:
        params = self.__dict__.get("parameters")
        if params is not None and item in params:
            return params[item]
        raise AttributeError(f"{type(self).__name__} has no attribute {item!r}")

    # --- I/O, done by subclasses ------------------------------------------------------------
    def _read_param(self, spec: ParamSpec) -> Any:
        """The instrument's answer for `spec` (reply text, or a value from a driver)."""
        raise NotImplementedError

    def _write_param(self, spec: ParamSpec, value: Any) -> None:
        """Write an already validated value."""
        raise NotImplementedError

    def idn(self) -> str:
        """The instrument's identification (*IDN?)."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise InstrumentError("instrument is closed", instrument=self.name, command=what)

    # --- common behaviour -------------------------------------------------------------------
    def read_quantity(self, quantity: str) -> float:
        """Read one of QUANTITIES (what monitors poll)."""
        if quantity not in self.QUANTITIES:
            raise InstrumentError(f"unknown quantity {quantity!r}; this {self.kind} offers "
                                  f"{', '.join(self.QUANTITIES)}", instrument=self.name)
        return float(self.parameters[quantity].get())

    def driver_info(self) -> Dict[str, Any]:
        """Which driver speaks to the instrument, for the snapshot."""
        return {"driver": f"{type(self).__module__}.{type(self).__qualname__}"}

    def snapshot(self, update: bool = True) -> Dict[str, Any]:
        """Settings and readings for run provenance; `update` re-reads everything gettable.

        A parameter that fails to read is recorded with its error instead of raising, so a
        provenance snapshot never aborts a run.
        """
        out: Dict[str, Any] = {"name": self.name, "kind": self.kind,
                               "resource": self.resource_name, **self.driver_info()}
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

    # --- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the session (idempotent); the instrument's settings are left as they are."""
        if self._closed:
            return
        self._closed = True
        self._close()

    def __enter__(self) -> "BenchInstrument":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.resource_name}>"
