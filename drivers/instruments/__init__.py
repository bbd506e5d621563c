"""Drivers of the lab instruments around the chip, over pyvisa.

Every driver puts each message through its wire log (also logged on "pcm_hil.visa"), checks
the instrument's errors after each command, and keeps its settings as Parameter objects that
own their limits. `DRIVERS` maps the driver kind named in a station file to our generic SCPI
driver of that kind; PyMeasure's model drivers are in drivers.instruments.pymeasure_models
(needs the `pymeasure` extra).
"""
from typing import Dict, Type

from drivers.instruments.errors import InstrumentError, ParameterLimitError
from drivers.instruments.instrument import BenchInstrument
from drivers.instruments.parameter import ParamSpec, Parameter
from drivers.instruments.power_supply import PowerSupply, PowerSupplyRole
from drivers.instruments.scpi import ScpiInstrument, ScpiParam, open_visa_resource
from drivers.instruments.smu import Smu, SmuRole
from drivers.instruments.temperature import TemperatureController, TemperatureRole
from drivers.instruments.wire import Direction, WireLog, WireRecord

DRIVERS: Dict[str, Type[ScpiInstrument]] = {
    Smu.kind: Smu,
    PowerSupply.kind: PowerSupply,
    TemperatureController.kind: TemperatureController,
}

__all__ = ["BenchInstrument", "DRIVERS", "Direction", "InstrumentError", "ParamSpec",
           "Parameter", "ParameterLimitError", "PowerSupply", "PowerSupplyRole",
           "ScpiInstrument", "ScpiParam", "Smu", "SmuRole", "TemperatureController",
           "TemperatureRole", "WireLog", "WireRecord", "open_visa_resource"]
