"""Monitors: instrument readings polled during a run, with a band and an action.

The training loop calls `Monitor.poll(step)` once per step. Each configured monitor reads its
quantity every N steps; a reading outside its band (or a failed read: an instrument that
cannot be read is not known to be safe) asks the loop to pause or abort. The class only reads,
compares and reports; the readings come back with the action so the loop can log them with
the step. `poll_between_steps` is what every training loop does with them.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

from drivers.errors import ConfigError
from drivers.instruments import BenchInstrument, InstrumentError
from hil.recorder import Recorder
from hil.run_control import RunAborted, RunControl
from hil.station import MonitorAction, MonitorSpec, Station

log = logging.getLogger("pcm_hil.monitors")
#: While paused, every monitor is re-read this often until all are back in band.
PAUSE_POLL_S = 5.0

_SEVERITY = {None: 0, MonitorAction.PAUSE: 1, MonitorAction.ABORT: 2}


@dataclass(frozen=True)
class Violation:
    """One monitor out of band (value NaN and `error` set when the read itself failed)."""

    label: str
    value: float
    low: Optional[float]
    high: Optional[float]
    action: MonitorAction
    error: Optional[str] = None

    def describe(self) -> str:
        if self.error:
            return f"{self.label}: read failed ({self.error}) -> {self.action.value}"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "+inf" if self.high is None else f"{self.high:g}"
        return f"{self.label} = {self.value:g} outside [{lo}, {hi}] -> {self.action.value}"


@dataclass(frozen=True)
class PollResult:
    """What one poll read: readings by "instrument.quantity", violations, the action to take.

    `action` is None when everything read was in band (or nothing was due this step); when
    several monitors fire, the most severe action wins (abort over pause).
    """

    step: int
    readings: Dict[str, float] = field(default_factory=dict)
    violations: Tuple[Violation, ...] = ()
    action: Optional[MonitorAction] = None


class Monitor:
    """Polls a station's monitors on its open instruments."""

    def __init__(self, specs: Sequence[MonitorSpec],
                 instruments: Mapping[str, BenchInstrument]) -> None:
        for i, spec in enumerate(specs):
            if spec.instrument not in instruments:
                raise ConfigError(f"{spec.instrument!r} is not open (open: "
                                  f"{', '.join(instruments) or 'none'})",
                                  key=f"monitors[{i}].instrument")
            inst = instruments[spec.instrument]
            if spec.quantity not in inst.QUANTITIES:
                raise ConfigError(f"{spec.quantity!r} is not a quantity of {inst.kind} "
                                  f"{inst.name} (quantities: {', '.join(inst.QUANTITIES)})",
                                  key=f"monitors[{i}].quantity")
        self.specs = tuple(specs)
        self.instruments = instruments
        self.last: Optional[PollResult] = None

    @classmethod
    def from_station(cls, station: Station,
                     instruments: Mapping[str, BenchInstrument]) -> "Monitor":
        return cls(station.monitors, instruments)

    def due(self, step: int) -> Tuple[MonitorSpec, ...]:
        """Monitors that read at this step (step 0 reads all: a run starts checked)."""
        return tuple(s for s in self.specs if step % s.every_n_steps == 0)

    def poll(self, step: int) -> PollResult:
        """Read what is due at `step`; return readings, violations and the action (or None)."""
        return self._read(step, self.due(step))

    def poll_all(self, step: int) -> PollResult:
        """Read every monitor now (while a run is paused, waiting to be back in band)."""
        return self._read(step, self.specs)

    def _read(self, step: int, specs: Sequence[MonitorSpec]) -> PollResult:
        readings: Dict[str, float] = {}
        violations = []
        for spec in specs:
            inst = self.instruments[spec.instrument]
            try:
                value = inst.read_quantity(spec.quantity)
            except InstrumentError as e:
                readings[spec.label] = math.nan
                violations.append(Violation(spec.label, math.nan, spec.low, spec.high,
                                            spec.action, error=str(e)))
                continue
            readings[spec.label] = value
            if not spec.in_band(value):
                violations.append(Violation(spec.label, value, spec.low, spec.high,
                                            spec.action))
        action = None
        for v in violations:
            log.warning("step %d: monitor %s", step, v.describe())
            if _SEVERITY[v.action] > _SEVERITY[action]:
                action = v.action
        result = PollResult(step, readings, tuple(violations), action)
        self.last = result
        return result


def poll_between_steps(monitor: Monitor, step: int, recorder: Recorder,
                       control: Optional[RunControl]) -> None:
    """Read the station's monitors that are due after `step` and log the readings; abort
    (RunAborted) or pause on a reading out of band.

    Pausing holds the chip idle and re-reads every `PAUSE_POLL_S` until everything is back
    in band (Ctrl-C still stops the run)."""
    result = monitor.poll(step)
    while True:
        if result.readings:
            recorder.on_monitor(step, result.readings)
        if result.action is None:
            return
        why = "; ".join(v.describe() for v in result.violations)
        if result.action is MonitorAction.ABORT:
            raise RunAborted(f"monitor: {why}; at step {step}")
        log.warning("pausing at step %d: %s", step, why)
        if control is not None:
            control.check(step)
        time.sleep(PAUSE_POLL_S)
        result = monitor.poll_all(step)
