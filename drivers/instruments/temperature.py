"""Temperature controller of the chip socket: setpoint and measured temperature.

PCM drift and read noise depend on temperature, so characterisation and training runs record
it (snapshot) and monitors can pause a run when the socket leaves its band.
"""
from __future__ import annotations

from typing import ClassVar, Tuple

from drivers.instruments.parameter import ParamSpec
from drivers.instruments.scpi import ScpiInstrument


class TemperatureController(ScpiInstrument):
    """A generic SCPI temperature controller (one loop)."""

    kind: ClassVar[str] = "temperature"
    PARAMS: ClassVar[Tuple[ParamSpec, ...]] = (
        ParamSpec("setpoint_c", "degC", "SOUR:TEMP?", "SOUR:TEMP {}", float, -40.0, 150.0,
                  "controller range", "control-loop setpoint"),
        ParamSpec("output_on", "", "OUTP?", "OUTP {}", bool, doc="heater/cooler loop on/off"),
        ParamSpec("temperature_c", "degC", "MEAS:TEMP?", None, float,
                  doc="measured socket temperature"),
    )
    QUANTITIES: ClassVar[Tuple[str, ...]] = ("temperature_c", "setpoint_c")
