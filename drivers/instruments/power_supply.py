"""DC power supply for the chip's rails: voltage, current limit, measured current, output.

Generic SCPI dialect (Keysight E36xx-like). The station's safety section narrows the current
limit's range (safety.supply_current_max_a), so a typo in an experiment cannot set a limit the
chip would not survive.
"""
from __future__ import annotations

from typing import ClassVar, Tuple

from drivers.instruments.parameter import ParamSpec
from drivers.instruments.scpi import ScpiInstrument


class PowerSupply(ScpiInstrument):
    """One output of a bench supply feeding a chip rail."""

    kind: ClassVar[str] = "power_supply"
    PARAMS: ClassVar[Tuple[ParamSpec, ...]] = (
        ParamSpec("voltage_setpoint_v", "V", "VOLT?", "VOLT {}", float, 0.0, 6.0,
                  "supply voltage range", "programmed output voltage"),
        ParamSpec("current_limit_a", "A", "CURR?", "CURR {}", float, 0.0, 5.0,
                  "supply current range", "current limit (constant-current threshold)"),
        ParamSpec("output_on", "", "OUTP?", "OUTP {}", bool, doc="output on/off"),
        ParamSpec("voltage_v", "V", "MEAS:VOLT?", None, float, doc="measured output voltage"),
        ParamSpec("current_a", "A", "MEAS:CURR?", None, float, doc="measured output current"),
    )
    QUANTITIES: ClassVar[Tuple[str, ...]] = ("current_a", "voltage_v")

    def apply(self, voltage_v: float, current_limit_a: float) -> None:
        """Program voltage and current limit, both validated before either is written."""
        self.voltage_setpoint_v.validate(voltage_v)
        self.current_limit_a.validate(current_limit_a)
        self.current_limit_a.set(current_limit_a)
        self.voltage_setpoint_v.set(voltage_v)
