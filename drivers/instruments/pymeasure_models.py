"""The bench models pcm-hil drives through PyMeasure: which driver property serves which role
parameter, the model's own ranges, and what the model must be set to before a run.

One class per supported model and role. Each takes its parameter names, units and meaning
from our generic driver of the same role (drivers.instruments.smu, ...), so a station, a
monitor or a run log sees the same parameters whichever driver a station file names; only
the ranges (the model's, as its manual gives them) and the way to the instrument differ.
`binding_for(class_name, kind)` finds the binding of a PyMeasure class for a role.

Each model has a pyvisa-sim definition in sim_backend/instruments (SIM_FILE), written from
the model's manual; docs/instruments.md lists what each role uses of each model.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Dict, Mapping, Tuple, Type

from drivers.errors import ConfigError
from drivers.instruments.errors import InstrumentError
from drivers.instruments.power_supply import PowerSupply, PowerSupplyRole
from drivers.instruments.pymeasure_link import (DriverParam, ErrorReport, PyMeasureInstrument,
                                                like, pymeasure_class)
from drivers.instruments.smu import Smu, SmuRole
from drivers.instruments.temperature import TemperatureController, TemperatureRole

_SMU = {p.name: p for p in Smu.PARAMS}
_PSU = {p.name: p for p in PowerSupply.PARAMS}
_TC = {p.name: p for p in TemperatureController.PARAMS}


class Keithley2450Smu(SmuRole, PyMeasureInstrument):
    """Keithley 2450 SourceMeter (its SCPI command set) as the station's SMU.

    The role sources a voltage and measures a current, so the 2450 must be in voltage-source
    mode (its power-on default); pcm-hil refuses it otherwise rather than switch modes on an
    instrument wired to a device.
    """

    PYMEASURE_CLASSES = ("pymeasure.instruments.keithley.Keithley2450",)
    MODEL = "Keithley 2450"
    IDN_PATTERN = r"^KEITHLEY INSTRUMENTS,MODEL 2450,"
    SIM_FILE = "keithley_2450.yaml"
    PARAMS: ClassVar[Tuple[DriverParam, ...]] = (
        like(_SMU["source_voltage_v"], low=-210.0, high=210.0,
             limits_source="Keithley 2450 voltage source range",
             get_attr="source_voltage", set_attr="source_voltage"),
        like(_SMU["current_compliance_a"], low=1e-9, high=1.05,
             limits_source="Keithley 2450 current limit range",
             get_attr="compliance_current", set_attr="compliance_current"),
        like(_SMU["nplc"], low=0.01, high=10.0, limits_source="Keithley 2450 NPLC range",
             get_attr="current_nplc", set_attr="current_nplc"),
        like(_SMU["output_on"], get_attr="source_enabled",
             switch=("enable_source", "disable_source")),
        like(_SMU["current_a"], get_attr="current"),
    )

    def check_setup(self) -> None:
        mode = self._access("Keithley2450.source_mode", lambda: self.driver.source_mode)
        if mode != "voltage":
            raise InstrumentError(f"the 2450 sources {mode}, not voltage; an SMU of this "
                                  "station sources a voltage and measures a current: set "
                                  "the source function to voltage on the instrument first",
                                  instrument=self.name)


class KeysightE36312ASupply(PowerSupplyRole, PyMeasureInstrument):
    """One output (`channel`) of a Keysight E36312A triple-output supply as a chip rail.

    Output 1 is rated 6 V / 5 A, outputs 2 and 3 25 V / 1 A: the parameters' ranges are
    those of the chosen output (before the station narrows them).
    """

    PYMEASURE_CLASSES = ("pymeasure.instruments.keysight.KeysightE36312A",)
    MODEL = "Keysight E36312A"
    IDN_PATTERN = r"^Keysight Technologies,E36312A,"
    SELECTORS: ClassVar[Mapping[str, Tuple[Any, ...]]] = {"channel": (1, 2, 3)}
    SELECTOR_DOCS: ClassVar[Mapping[str, str]] = {"channel": "the output that feeds the rail"}
    SIM_FILE = "keysight_e36312a.yaml"
    RATINGS: ClassVar[Dict[int, Tuple[float, float]]] = {1: (6.0, 5.0), 2: (25.0, 1.0),
                                                         3: (25.0, 1.0)}
    PARAMS: ClassVar[Tuple[DriverParam, ...]] = (
        like(_PSU["voltage_setpoint_v"], get_attr="ch_{channel}.voltage_setpoint",
             set_attr="ch_{channel}.voltage_setpoint"),
        like(_PSU["current_limit_a"], get_attr="ch_{channel}.current_limit",
             set_attr="ch_{channel}.current_limit"),
        like(_PSU["output_on"], get_attr="ch_{channel}.output_enabled",
             set_attr="ch_{channel}.output_enabled"),
        like(_PSU["voltage_v"], get_attr="ch_{channel}.voltage"),
        like(_PSU["current_a"], get_attr="ch_{channel}.current"),
    )

    def param_specs(self) -> Tuple[DriverParam, ...]:
        ch = self.selectors["channel"]
        v_max, i_max = self.RATINGS[ch]
        rated = {"voltage_setpoint_v": v_max, "current_limit_a": i_max}
        return tuple(
            replace(p, low=0.0, high=rated[p.name],
                    limits_source=f"Keysight E36312A output {ch} rating")
            if p.name in rated else p for p in self.PARAMS)


class LakeShore331Controller(TemperatureRole, PyMeasureInstrument):
    """A Lake Shore 331: one sensor `input` (A or B) and one control `loop` (1 or 2).

    The 331 sets a loop's setpoint in that loop's setpoint units (kelvin, Celsius or sensor
    units, CSET); pcm-hil's setpoint_c is in °C, so a loop whose units are not Celsius is
    refused when the station opens. The 331 has no SCPI error queue: errors are read from
    its event status register (*ESR?).
    """

    PYMEASURE_CLASSES = ("pymeasure.instruments.lakeshore.LakeShore3xx",
                         "pymeasure.instruments.lakeshore.LakeShore331")
    MODEL = "Lake Shore 331"
    IDN_PATTERN = r"^LSCI,MODEL331"
    SELECTORS: ClassVar[Mapping[str, Tuple[Any, ...]]] = {"input": ("A", "B"), "loop": (1, 2)}
    SELECTOR_DOCS: ClassVar[Mapping[str, str]] = {
        "input": "the sensor input that reads the socket",
        "loop": "the control loop whose setpoint is set"}
    ERRORS = ErrorReport.EVENT_STATUS
    SIM_FILE = "lakeshore_331.yaml"
    CSET_UNITS: ClassVar[Dict[int, str]] = {1: "kelvin", 2: "Celsius", 3: "sensor units"}
    PARAMS: ClassVar[Tuple[DriverParam, ...]] = (
        like(_TC["setpoint_c"], low=-273.15, high=None,
             limits_source="Lake Shore 331 setpoint (above 0 K)",
             get_attr="output_{loop}.setpoint", set_attr="output_{loop}.setpoint"),
        like(_TC["temperature_c"], get_attr="input_{input}.celsius"),
    )

    def check_setup(self) -> None:
        loop = self.selectors["loop"]
        reply = self.ask(f"CSET? {loop}")          # <input>,<units>,<powerup>,<current/power>
        fields = reply.split(",")
        try:
            units = int(fields[1])
        except (IndexError, ValueError):
            raise InstrumentError(f"cannot read the setpoint units from CSET? {loop} = "
                                  f"{reply!r}", instrument=self.name) from None
        if units != 2:
            raise InstrumentError(
                f"loop {loop} sets its setpoint in {self.CSET_UNITS.get(units, units)} "
                f"(CSET? {loop} = {reply}); setpoint_c is in °C: set the loop's setpoint "
                "units to Celsius on the instrument first", instrument=self.name)


MODELS: Dict[str, Tuple[Type[PyMeasureInstrument], ...]] = {
    SmuRole.kind: (Keithley2450Smu,),
    PowerSupplyRole.kind: (KeysightE36312ASupply,),
    TemperatureRole.kind: (LakeShore331Controller,),
}


def binding_for(class_name: str, kind: str) -> Type[PyMeasureInstrument]:
    """The binding that drives PyMeasure class `class_name` as a `kind`; ConfigError (no
    key) naming what is supported otherwise."""
    pm_class = pymeasure_class(class_name)
    for binding in MODELS.get(kind, ()):
        if binding.drives(pm_class):
            return binding
    supported = ", ".join(c for b in MODELS.get(kind, ()) for c in b.PYMEASURE_CLASSES)
    elsewhere = [k for k, bindings in MODELS.items()
                 if k != kind and any(b.drives(pm_class) for b in bindings)]
    hint = f"; it is a {elsewhere[0]} here" if elsewhere else ""
    raise ConfigError(f"{class_name} is not a {kind} pcm-hil can drive (for a {kind}: "
                      f"{supported or 'none'}){hint}")
