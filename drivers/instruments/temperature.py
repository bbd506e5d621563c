"""Temperature controller of the chip socket: setpoint and measured temperature.

PCM drift and read noise depend on temperature, so characterisation and training runs record
it (snapshot) and monitors can pause a run when the socket leaves its band.
`TemperatureRole` is what every controller offers pcm-hil; `TemperatureController` is our
generic SCPI driver.
"""
from __future__ import annotations

from typing import ClassVar, Tuple

from drivers.instruments.instrument import BenchInstrument
from drivers.instruments.scpi import ScpiInstrument, ScpiParam


class TemperatureRole(BenchInstrument):
    """One control loop and the sensor that watches the socket, in °C.

    Its drivers offer the parameters setpoint_c and temperature_c (measured); ours also
    output_on."""

    kind: ClassVar[str] = "temperature"
    QUANTITIES: ClassVar[Tuple[str, ...]] = ("temperature_c", "setpoint_c")


class TemperatureController(TemperatureRole, ScpiInstrument):
    """Our generic SCPI temperature controller (one loop; the simulated bench's default)."""

    PARAMS: ClassVar[Tuple[ScpiParam, ...]] = (
        ScpiParam("setpoint_c", "degC", float, -40.0, 150.0, "controller range",
                  "control-loop setpoint", "SOUR:TEMP?", "SOUR:TEMP {}"),
        ScpiParam("output_on", "", bool, doc="heater/cooler loop on/off", get_cmd="OUTP?",
                  set_cmd="OUTP {}"),
        ScpiParam("temperature_c", "degC", doc="measured socket temperature",
                  get_cmd="MEAS:TEMP?"),
    )
