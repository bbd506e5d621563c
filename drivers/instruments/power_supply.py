"""DC power supply for the chip's rails: voltage, current limit, measured current, output.

`PowerSupplyRole` is what every supply offers pcm-hil, whichever driver speaks to it;
`PowerSupply` is our generic SCPI driver (Keysight E36xx-like). The station's safety section
narrows the current limit's range (safety.supply_current_max_a), so a typo in an experiment
cannot set a limit the chip would not survive.
"""
from __future__ import annotations

from typing import ClassVar, Tuple

from drivers.instruments.instrument import BenchInstrument
from drivers.instruments.scpi import ScpiInstrument, ScpiParam


class PowerSupplyRole(BenchInstrument):
    """One output of a bench supply feeding a chip rail.

    Its drivers offer the parameters voltage_setpoint_v, current_limit_a, output_on,
    voltage_v and current_a (measured)."""

    kind: ClassVar[str] = "power_supply"
    QUANTITIES: ClassVar[Tuple[str, ...]] = ("current_a", "voltage_v")

    def apply(self, voltage_v: float, current_limit_a: float) -> None:
        """Program voltage and current limit, both validated before either is written."""
        self.voltage_setpoint_v.validate(voltage_v)
        self.current_limit_a.validate(current_limit_a)
        self.current_limit_a.set(current_limit_a)
        self.voltage_setpoint_v.set(voltage_v)


class PowerSupply(PowerSupplyRole, ScpiInstrument):
    """Our generic SCPI supply (the simulated bench's default)."""

    PARAMS: ClassVar[Tuple[ScpiParam, ...]] = (
        ScpiParam("voltage_setpoint_v", "V", float, 0.0, 6.0, "supply voltage range",
                  "programmed output voltage", "VOLT?", "VOLT {}"),
        ScpiParam("current_limit_a", "A", float, 0.0, 5.0, "supply current range",
                  "current limit (constant-current threshold)", "CURR?", "CURR {}"),
        ScpiParam("output_on", "", bool, doc="output on/off", get_cmd="OUTP?",
                  set_cmd="OUTP {}"),
        ScpiParam("voltage_v", "V", doc="measured output voltage", get_cmd="MEAS:VOLT?"),
        ScpiParam("current_a", "A", doc="measured output current", get_cmd="MEAS:CURR?"),
    )
