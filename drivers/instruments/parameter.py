"""Instrument parameters that own their limits (in the style of QCoDeS parameters).

Every setting of an instrument is one small object: its unit, its limits and where those
limits came from (the instrument's range, a station's safety section, ...). A value outside
the limits is refused here, before anything is written to the instrument, with an error naming
the parameter and the value. Limits can only be narrowed after construction, never widened,
so a station file can make an instrument safer but not less safe than its driver.

How a parameter reaches the instrument is its instrument's business: our SCPI drivers send
the commands of a ScpiParam, the PyMeasure instruments use a PyMeasure driver's properties
(DriverParam). The Parameter only validates, converts and remembers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional

from drivers.errors import ConfigError
from drivers.instruments.errors import InstrumentError, ParameterLimitError

if TYPE_CHECKING:  # pragma: no cover
    from drivers.instruments.instrument import BenchInstrument

_UNSET = object()


@dataclass(frozen=True)
class ParamSpec:
    """Declaration of one instrument parameter, shared by every instance of a driver.

    `kind` is float, int or bool. `low`/`high` are the instrument's own limits and
    `limits_source` says where they come from. Subclasses say how it is read and written
    (`gettable`/`settable`); a parameter that cannot be set is a measurement.
    """

    name: str
    unit: str = ""
    kind: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    limits_source: str = "driver"
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in (float, int, bool):
            raise ValueError(f"parameter {self.name}: kind must be float, int or bool")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"parameter {self.name}: low {self.low} > high {self.high}")

    @property
    def gettable(self) -> bool:
        raise NotImplementedError

    @property
    def settable(self) -> bool:
        raise NotImplementedError


class Parameter:
    """One setting or reading of one open instrument: validates, writes, reads, remembers."""

    def __init__(self, instrument: "BenchInstrument", spec: ParamSpec) -> None:
        self.instrument = instrument
        self.spec = spec
        self.low: Optional[float] = spec.low
        self.high: Optional[float] = spec.high
        self.limits_source = spec.limits_source
        self.last_value: Any = None
        self.last_time: Optional[float] = None

    # --- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def full_name(self) -> str:
        return f"{self.instrument.name}.{self.spec.name}"

    @property
    def unit(self) -> str:
        return self.spec.unit

    def _fmt(self, v: Any) -> str:
        return f"{v:g} {self.unit}".rstrip() if isinstance(v, (int, float)) else repr(v)

    # --- limits ---------------------------------------------------------------------------
    def tighten(self, low: Optional[float], high: Optional[float], source: str) -> None:
        """Narrow the limits (never widen them); `source` is recorded as their provenance."""
        if self.spec.kind is bool:
            raise ConfigError(f"{self.full_name} is on/off and has no numeric limits",
                              key=source)
        new_low = self.low if low is None else (low if self.low is None else max(low, self.low))
        new_high = self.high if high is None else (high if self.high is None
                                                   else min(high, self.high))
        if new_low is not None and new_high is not None and new_low > new_high:
            raise ConfigError(f"limits [{low}, {high}] do not overlap the range "
                              f"[{self.low}, {self.high}] of {self.full_name} "
                              f"(from {self.limits_source})", key=source)
        if (new_low, new_high) != (self.low, self.high):
            self.low, self.high = new_low, new_high
            self.limits_source = source

    def validate(self, value: Any) -> Any:
        """Return `value` converted to the parameter's kind, or raise ParameterLimitError."""
        kind = self.spec.kind
        err = dict(instrument=self.instrument.name, parameter=self.name, value=value)
        if kind is bool:
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise ParameterLimitError(f"{self.name}: {value!r} is not on/off (true/false)",
                                      **err)
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(
                value, "__float__"):
            raise ParameterLimitError(f"{self.name}: {value!r} is not a number", **err)
        v = float(value)
        if not math.isfinite(v):
            raise ParameterLimitError(f"{self.name}: {value!r} is not a finite number", **err)
        if kind is int:
            if v != int(v):
                raise ParameterLimitError(f"{self.name}: {value!r} is not an integer", **err)
            v = int(v)
        if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "+inf" if self.high is None else f"{self.high:g}"
            raise ParameterLimitError(
                f"{self.name}: {self._fmt(v)} is outside the limits [{lo}, {hi}] "
                f"{self.unit} (limits from {self.limits_source}); nothing was sent", **err)
        return v

    # --- I/O ------------------------------------------------------------------------------
    def set(self, value: Any) -> None:
        """Validate, then write the value; the instrument's errors are checked after."""
        if not self.spec.settable:
            raise InstrumentError(f"{self.name} is read-only", instrument=self.instrument.name)
        v = self.validate(value)
        self.instrument._write_param(self.spec, v)
        self.last_value, self.last_time = v, time.time()

    def get(self) -> Any:
        """Ask the instrument for the current value (a measurement for read-only ones)."""
        if not self.spec.gettable:
            raise InstrumentError(f"{self.name} cannot be read back",
                                  instrument=self.instrument.name)
        v = self._convert(self.instrument._read_param(self.spec))
        self.last_value, self.last_time = v, time.time()
        return v

    def _convert(self, raw: Any) -> Any:
        """The parameter's kind from what the instrument answered: a reply text (first field
        of a comma list), or a number, flag or list of them from a PyMeasure property."""
        if isinstance(raw, (list, tuple)) and len(raw) == 1:
            raw = raw[0]
        kind = self.spec.kind
        try:
            if isinstance(raw, str):
                text = raw.strip()
                if kind is bool:
                    up = text.upper()
                    if up in ("1", "ON", "+1"):
                        return True
                    if up in ("0", "OFF", "+0"):
                        return False
                    raise ValueError(text)
                f = float(text.split(",")[0])
            elif kind is bool:
                if isinstance(raw, (bool, int, float)) and raw in (0, 1):
                    return bool(raw)
                raise ValueError(raw)
            elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
                f = float(raw)
            else:
                raise ValueError(raw)
            return int(f) if kind is int else f
        except ValueError:
            raise InstrumentError(f"{self.name}: cannot read reply {raw!r} as "
                                  f"{kind.__name__}", instrument=self.instrument.name,
                                  command=self.instrument.wire.last_sent) from None

    def __call__(self, value: Any = _UNSET) -> Any:
        """QCoDeS style: `p()` reads, `p(v)` sets."""
        if value is _UNSET:
            return self.get()
        self.set(value)
        return None

    def snapshot(self) -> Dict[str, Any]:
        """Last known value, unit and limits with their provenance (no instrument I/O)."""
        return {"value": self.last_value, "unit": self.unit, "low": self.low,
                "high": self.high, "limits_source": self.limits_source,
                "settable": self.spec.settable, "time": self.last_time}

    def __repr__(self) -> str:
        return f"<Parameter {self.full_name} [{self.low}, {self.high}] {self.unit}>"
