"""Source-measure unit: the precise single-device read that calibrates the chip's ADC.

`SmuRole` is what every SMU offers pcm-hil, whichever driver speaks to it; `Smu` is our
generic SCPI driver (Keithley 24xx-like): source a voltage, measure the current, report the
conductance. A lab whose SMU speaks another dialect subclasses and overrides PARAMS, or names
a PyMeasure driver in its station file (drivers.instruments.pymeasure_models).
"""
from __future__ import annotations

from typing import ClassVar, Tuple

import numpy as np

from drivers.instruments.errors import InstrumentError
from drivers.instruments.instrument import BenchInstrument
from drivers.instruments.scpi import ScpiInstrument, ScpiParam


class SmuRole(BenchInstrument):
    """A source-measure unit wired to one device of the chip (or a reference resistor).

    Its drivers offer the parameters source_voltage_v, current_compliance_a, nplc, output_on
    and current_a (measured)."""

    kind: ClassVar[str] = "smu"
    QUANTITIES: ClassVar[Tuple[str, ...]] = ("current_a", "source_voltage_v")

    def measure_conductance_us(self, read_voltage_v: float = 0.2, n_avg: int = 1) -> float:
        """Conductance in µS from I/V at a small read voltage, averaged over n_avg readings.

        The output is switched on only for the measurement and off again afterwards, even if
        the measurement fails, so the device under test is never left biased.
        """
        if read_voltage_v == 0:
            raise InstrumentError("read_voltage_v must be non-zero to compute a conductance",
                                  instrument=self.name)
        if int(n_avg) < 1:
            raise InstrumentError(f"n_avg must be >= 1, got {n_avg}", instrument=self.name)
        self.source_voltage_v.set(read_voltage_v)
        self.output_on.set(True)
        try:
            currents = np.array([self.current_a.get() for _ in range(int(n_avg))])
        finally:
            self.output_on.set(False)
        return float(currents.mean() / read_voltage_v * 1e6)


class Smu(SmuRole, ScpiInstrument):
    """Our generic SCPI SMU (the simulated bench's default)."""

    PARAMS: ClassVar[Tuple[ScpiParam, ...]] = (
        ScpiParam("source_voltage_v", "V", float, -21.0, 21.0, "SMU voltage range",
                  "sourced voltage", "SOUR:VOLT?", "SOUR:VOLT {}"),
        ScpiParam("current_compliance_a", "A", float, 1e-9, 0.105, "SMU current range",
                  "current compliance", "SENS:CURR:PROT?", "SENS:CURR:PROT {}"),
        ScpiParam("nplc", "PLC", float, 0.01, 10.0, "SMU integration range",
                  "integration time in power-line cycles", "SENS:CURR:NPLC?",
                  "SENS:CURR:NPLC {}"),
        ScpiParam("output_on", "", bool, doc="source output on/off", get_cmd="OUTP?",
                  set_cmd="OUTP {}"),
        ScpiParam("current_a", "A", doc="measured current", get_cmd="MEAS:CURR?"),
    )
