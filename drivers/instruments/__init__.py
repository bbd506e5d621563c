"""SCPI drivers of the lab instruments around the chip, over pyvisa.

Every driver logs each command on "pcm_hil.visa", checks the SCPI error queue after each
command, and keeps its settings as Parameter objects that own their limits. `DRIVERS` maps the
driver kind named in a station file to its class.
"""
from typing import Dict, Type

from drivers.instruments.errors import InstrumentError, ParameterLimitError
from drivers.instruments.parameter import ParamSpec, Parameter
from drivers.instruments.power_supply import PowerSupply
from drivers.instruments.scpi import ScpiInstrument, open_visa_resource
from drivers.instruments.smu import Smu
from drivers.instruments.temperature import TemperatureController

DRIVERS: Dict[str, Type[ScpiInstrument]] = {
    Smu.kind: Smu,
    PowerSupply.kind: PowerSupply,
    TemperatureController.kind: TemperatureController,
}

__all__ = ["DRIVERS", "InstrumentError", "ParamSpec", "Parameter", "ParameterLimitError",
           "PowerSupply", "ScpiInstrument", "Smu", "TemperatureController",
           "open_visa_resource"]
