"""The supported bench models, driven through the real PyMeasure classes against pyvisa-sim
definitions written from each model's manual (sim_backend/instruments/<model>.yaml).

What reaches an instrument is read from its wire log: every message PyMeasure's adapter moved.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("pymeasure", reason="PyMeasure is not installed "
                                        "(pip install 'pcm-hil[pymeasure]')")
pyvisa = pytest.importorskip("pyvisa")

from drivers.errors import ConfigError  # noqa: E402
from drivers.instruments import InstrumentError, ParameterLimitError  # noqa: E402
from drivers.instruments.pymeasure_link import PyMeasureInstrument  # noqa: E402
from drivers.instruments.pymeasure_models import (MODELS, Keithley2450Smu,  # noqa: E402
                                                  KeysightE36312ASupply,
                                                  LakeShore331Controller, binding_for)

from lab_bench import sim_text  # noqa: E402

K2450 = "pymeasure.instruments.keithley.Keithley2450"
E36312A = "pymeasure.instruments.keysight.KeysightE36312A"
LS3XX = "pymeasure.instruments.lakeshore.LakeShore3xx"
LS331 = "pymeasure.instruments.lakeshore.LakeShore331"
RESOURCES = {Keithley2450Smu: "GPIB0::18::INSTR",
             KeysightE36312ASupply: "USB0::0x2A8D::0x1102::MY59001234::INSTR",
             LakeShore331Controller: "GPIB0::12::INSTR"}
CLASSES = {Keithley2450Smu: K2450, KeysightE36312ASupply: E36312A,
           LakeShore331Controller: LS3XX}
SELECTORS = {Keithley2450Smu: {}, KeysightE36312ASupply: {"channel": 1},
             LakeShore331Controller: {"input": "A", "loop": 1}}


@pytest.fixture
def sim(tmp_path):
    """A fresh copy of a model's shipped definition (`edit` changes its text first)."""
    def make(binding: type, edit: Callable[[str], str] = lambda t: t) -> str:
        path = tmp_path / binding.SIM_FILE
        path.write_text(edit(sim_text(binding.SIM_FILE)), encoding="utf-8")
        return f"{path}@sim"
    return make


@pytest.fixture
def open_model(sim):
    opened = []

    def make(binding: type, class_name: str = "", lib: str = "",
             **selectors: Any) -> PyMeasureInstrument:
        inst = binding.open(class_name or CLASSES[binding], RESOURCES[binding],
                            name=binding.kind, visa_library=lib or sim(binding),
                            timeout_ms=200, selectors=selectors or SELECTORS[binding])
        opened.append(inst)
        return inst
    yield make
    for inst in opened:
        inst.close()


# --- Keithley 2450 --------------------------------------------------------------------------------
def test_2450_parameters_are_the_smu_role_through_pymeasure_properties(open_model):
    smu = open_model(Keithley2450Smu)
    assert smu.idn_string.startswith("KEITHLEY INSTRUMENTS,MODEL 2450,")
    mark = smu.wire.count
    smu.source_voltage_v(0.25)
    smu.current_compliance_a(1e-5)
    smu.nplc(2)
    assert smu.wire.sent_since(mark) == [":SOUR:VOLT:LEV 0.25", "SYST:ERR?",
                                         ":SOUR:VOLT:ILIM 1e-05", "SYST:ERR?",
                                         ":SENS:CURR:NPLC 2", "SYST:ERR?"]
    assert smu.source_voltage_v() == pytest.approx(0.25)
    assert smu.current_compliance_a() == pytest.approx(1e-5)
    assert smu.nplc() == pytest.approx(2.0)
    assert smu.output_on() is False


def test_2450_conductance_read_switches_the_output_on_only_to_measure(open_model):
    smu = open_model(Keithley2450Smu)
    mark = smu.wire.count
    # the simulated 2450 reads 1 uA: a 5 uS device at 0.2 V
    assert smu.measure_conductance_us(0.2) == pytest.approx(5.0)
    assert smu.wire.sent_since(mark) == [":SOUR:VOLT:LEV 0.2", "SYST:ERR?", "OUTPUT ON",
                                         "SYST:ERR?", ":READ?", "SYST:ERR?", "OUTPUT OFF",
                                         "SYST:ERR?"]
    assert smu.output_on() is False


def test_limit_refused_before_the_driver_writes_anything(open_model):
    smu = open_model(Keithley2450Smu)
    smu.source_voltage_v.tighten(-0.3, 0.3, "station instruments[0].limits.source_voltage_v")
    mark = smu.wire.count
    with pytest.raises(ParameterLimitError) as exc:
        smu.source_voltage_v.set(0.5)
    assert "0.5 V is outside the limits [-0.3, 0.3] V" in str(exc.value)
    assert "station instruments[0].limits.source_voltage_v" in str(exc.value)
    # PyMeasure's own validator would have truncated 2 A to 1.05 A and sent it: ours refuses
    with pytest.raises(ParameterLimitError, match="Keithley 2450 current limit range"):
        smu.current_compliance_a.set(2.0)
    assert smu.wire.sent_since(mark) == []            # not one byte reached the instrument
    assert smu.source_voltage_v() == pytest.approx(0.0)


def test_2450_sourcing_current_is_refused_at_open(sim, open_model):
    lib = sim(Keithley2450Smu, lambda t: t.replace('default: "VOLT"', 'default: "CURR"'))
    with pytest.raises(InstrumentError, match="sources current, not voltage"):
        open_model(Keithley2450Smu, lib=lib)


def test_another_model_at_the_address_is_refused(sim, open_model):
    lib = sim(Keithley2450Smu, lambda t: t.replace("MODEL 2450", "MODEL 2400"))
    with pytest.raises(InstrumentError, match=r"MODEL 2400.*not a Keithley 2450"):
        open_model(Keithley2450Smu, lib=lib)


def test_an_error_the_instrument_queues_names_the_command(open_model):
    smu = open_model(Keithley2450Smu)
    with pytest.raises(InstrumentError) as exc:
        smu.ask(":NOT:A:QUERY?")
    assert exc.value.scpi_errors == ((-100, "Command error"),)
    assert exc.value.command == ":NOT:A:QUERY?"
    smu.nplc(1)                                        # the queue was drained
    assert smu.error_queue() == []


# --- Keysight E36312A -----------------------------------------------------------------------------
@pytest.mark.parametrize("channel, v_max, i_max", [(1, 6.0, 5.0), (2, 25.0, 1.0)])
def test_e36312a_ranges_and_commands_follow_the_output(open_model, channel, v_max, i_max):
    vdd = open_model(KeysightE36312ASupply, channel=channel)
    assert (vdd.voltage_setpoint_v.high, vdd.current_limit_a.high) == (v_max, i_max)
    assert vdd.current_limit_a.limits_source == f"Keysight E36312A output {channel} rating"
    mark = vdd.wire.count
    vdd.apply(1.1, 0.2)
    vdd.output_on(True)
    assert vdd.wire.sent_since(mark) == [
        f"CURR 0.2, (@{channel})", "SYST:ERR?", f"VOLT 1.1, (@{channel})", "SYST:ERR?",
        f"OUTPut 1, (@{channel})", "SYST:ERR?"]
    assert vdd.output_on() is True and vdd.voltage_setpoint_v() == pytest.approx(1.1)


def test_e36312a_apply_checks_both_values_before_writing_either(open_model):
    vdd = open_model(KeysightE36312ASupply, channel=2)
    mark = vdd.wire.count
    with pytest.raises(ParameterLimitError, match="current_limit_a: 2 A"):
        vdd.apply(1.0, 2.0)                            # output 2 is rated 1 A
    assert vdd.wire.sent_since(mark) == []


def test_e36312a_measurements(open_model):
    vdd = open_model(KeysightE36312ASupply)
    assert vdd.read_quantity("current_a") == pytest.approx(0.05)
    assert vdd.read_quantity("voltage_v") == pytest.approx(1.2)


# --- Lake Shore 331 -------------------------------------------------------------------------------
def test_331_setpoint_and_reading(open_model):
    tc = open_model(LakeShore331Controller)
    assert tc.idn_string.startswith("LSCI,MODEL331")
    mark = tc.wire.count
    tc.setpoint_c(30)
    assert tc.setpoint_c() == pytest.approx(30.0)
    assert tc.read_quantity("temperature_c") == pytest.approx(25.0)
    assert tc.wire.sent_since(mark) == ["SETP 1,30.000000", "*ESR?", "SETP? 1", "*ESR?",
                                        "CRDG? A", "*ESR?"]


def test_331_loop_2_and_input_b(open_model):
    tc = open_model(LakeShore331Controller, input="B", loop=2)
    mark = tc.wire.count
    tc.setpoint_c(20)
    tc.temperature_c()
    assert tc.wire.sent_since(mark)[::2] == ["SETP 2,20.000000", "CRDG? B"]


def test_331_errors_come_from_the_event_status_register(open_model):
    tc = open_model(LakeShore331Controller)
    with pytest.raises(InstrumentError) as exc:
        tc.ask("NOSUCH? A")                            # the 331 does not answer: a timeout
    assert exc.value.scpi_errors == ((32, "Command error"),)
    assert tc.error_queue() == []                      # reading *ESR? cleared it


def test_331_loop_in_kelvin_is_refused_at_open(sim, open_model):
    lib = sim(LakeShore331Controller, lambda t: t.replace('default: "A,2,1,1"',
                                                         'default: "A,1,1,1"'))
    with pytest.raises(InstrumentError, match=r"loop 1 sets its setpoint in kelvin "
                                              r"\(CSET\? 1 = A,1,1,1\)"):
        open_model(LakeShore331Controller, lib=lib)


def test_331_also_through_the_deprecated_lakeshore331_class(open_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # PyMeasure 0.16: use 3xx
        tc = open_model(LakeShore331Controller, class_name=LS331)
    assert tc.driver_info()["driver"] == LS331
    assert tc.setpoint_c() == pytest.approx(25.0)


# --- every model ----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:read string doesn't end")
def test_open_errors_are_typed(sim):
    with pytest.raises(InstrumentError, match=r"cannot open VISA resource 'GPIB0::18::INSTR' "
                                              r"with Keithley2450"):
        Keithley2450Smu.open(K2450, "GPIB0::18::INSTR", name="smu",
                             visa_library="no-such-file.yaml@sim")
    lib = sim(Keithley2450Smu)
    with pytest.raises(InstrumentError, match=r"no working instrument at 'GPIB0::99::INSTR': "
                                              r"empty answer to \*IDN\?"):
        Keithley2450Smu.open(K2450, "GPIB0::99::INSTR", name="smu", visa_library=lib,
                             timeout_ms=100)
    with pytest.raises(ConfigError, match="required for a Keysight E36312A"):
        KeysightE36312ASupply.open(E36312A, RESOURCES[KeysightE36312ASupply], name="vdd",
                                   visa_library=sim(KeysightE36312ASupply))


def test_a_closed_instrument_refuses_access(open_model):
    tc = open_model(LakeShore331Controller)
    tc.close()
    with pytest.raises(InstrumentError, match="closed"):
        tc.temperature_c.get()
    tc.close()                                         # idempotent



@pytest.mark.parametrize("binding", [Keithley2450Smu, KeysightE36312ASupply,
                                     LakeShore331Controller])
def test_every_parameter_a_binding_uses_is_in_the_manuals_command_set(open_model, binding):
    """The definitions hold the manual's commands only: a parameter whose property sent a
    command the manual does not list would fail here with the instrument's error."""
    inst = open_model(binding)
    snap = inst.snapshot()
    assert snap["idn"] == inst.idn_string
    assert snap["driver"] == CLASSES[binding] and snap["driver_version"].startswith("pymeasure")
    for name, p in snap["parameters"].items():
        assert "error" not in p, (name, p)
        assert p["value"] is not None


def test_bindings_speak_the_vocabulary_of_our_generic_drivers():
    from drivers.instruments import DRIVERS
    for kind, bindings in MODELS.items():
        ours = {p.name: p for p in DRIVERS[kind].PARAMS}
        for b in bindings:
            assert b.kind == kind and b.QUANTITIES == DRIVERS[kind].QUANTITIES
            for p in b.PARAMS:
                assert (p.unit, p.kind, p.doc) == (ours[p.name].unit, ours[p.name].kind,
                                                   ours[p.name].doc)


@pytest.mark.parametrize("class_name, kind, text", [
    (K2450, "power_supply", "not a power_supply pcm-hil can drive (for a power_supply: "
                            f"{E36312A}); it is a smu here"),
    ("pymeasure.instruments.keithley.Keithley2000", "smu", "not a smu pcm-hil can drive"),
    ("pymeasure.instruments.keithley.Keithley9999", "smu", "has no class 'Keithley9999'"),
    ("pymeasure.instruments.nosuchmaker.Model1", "smu", "cannot import"),
    ("pymeasure.instruments.validators.strict_range", "smu", "not a PyMeasure instrument"),
    ("drivers.instruments.Smu", "smu", "not a PyMeasure instrument class name"),
])
def test_binding_for_names_what_is_wrong(class_name, kind, text):
    with pytest.raises(ConfigError) as exc:
        binding_for(class_name, kind)
    assert text in str(exc.value)


# --- where PyMeasure and the manual disagree ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Deviation:
    """A PyMeasure access whose command is not in the model's manual (as of PyMeasure 0.16)."""

    binding: type
    attribute: str
    access: Callable[[Any], Any]
    sends: str
    manual: str


# What pcm-hil therefore does not use; docs/instruments.md lists the same.
EXPECTED_DEVIATIONS = [
    Deviation(LakeShore331Controller, "output_{loop}.range", lambda d: d.output_1.range,
              "RANGE? 1", "RANGE? takes no loop on the 331: the heater range is loop 1's"),
    Deviation(LakeShore331Controller, "output_{loop}.range",
              lambda d: setattr(d.output_1, "range", "low"),
              "RANGE 1,1", "RANGE <range> on the 331 (the 335/336 form has the output first)"),
    Deviation(LakeShore331Controller, "output_{loop}.output", lambda d: d.output_1.output,
              "HTR? 1", "HTR? takes no argument on the 331 (loop 2's output is AOUT?)"),
    Deviation(LakeShore331Controller, "next_error", lambda d: d.next_error,
              "SYST:ERR?", "the 331 has no SCPI error queue; errors set bits of *ESR?"),
]


@pytest.mark.parametrize("dev", EXPECTED_DEVIATIONS, ids=lambda d: d.sends)
def test_pymeasure_commands_the_manual_does_not_list(open_model, dev):
    inst = open_model(dev.binding)
    mark = inst.wire.count
    try:
        dev.access(inst.driver)
    except pyvisa.errors.VisaIOError:
        pass                                           # a query the model does not answer
    assert inst.wire.sent_since(mark) == [dev.sends]
    assert inst.error_queue() == [(32, "Command error")], dev.manual
    used = {a for p in dev.binding.PARAMS for a in (p.get_attr, p.set_attr) if a}
    assert dev.attribute not in used                   # so no parameter of ours relies on it


def test_sim_files_are_package_data():
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["sim_backend"]
    for bindings in MODELS.values():
        for b in bindings:
            assert (root / "sim_backend" / "instruments" / b.SIM_FILE).is_file()
            assert any(Path("instruments", b.SIM_FILE).match(g) for g in globs)
