"""The SCPI drivers, driven for real through pyvisa-sim with the shipped instrument files."""
from __future__ import annotations

import logging
from importlib import resources

import pytest

pyvisa = pytest.importorskip("pyvisa")
pytest.importorskip("pyvisa_sim")

from drivers.errors import ConfigError, HilError  # noqa: E402
from drivers.instruments import (DRIVERS, Direction, InstrumentError,  # noqa: E402
                                 ParameterLimitError, PowerSupply, Smu, TemperatureController,
                                 WireLog)

SMU_RES = "GPIB0::24::INSTR"
PSU_RES = "USB0::0x2A8D::0x1002::SIM00001::INSTR"
TC_RES = "ASRL3::INSTR"


def sim_lib(kind: str) -> str:
    return str(resources.files("sim_backend") / "instruments" / f"{kind}.yaml") + "@sim"


@pytest.fixture
def fresh_lib(tmp_path):
    """pyvisa-sim keeps one simulated device per definition file for the whole process: a
    copy per test gives every test an instrument in its power-on state."""
    def make(kind: str) -> str:
        src = resources.files("sim_backend") / "instruments" / f"{kind}.yaml"
        dst = tmp_path / f"{kind}.yaml"
        dst.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
        return f"{dst}@sim"
    return make


@pytest.fixture
def smu(fresh_lib):
    inst = Smu.open(SMU_RES, name="smu", visa_library=fresh_lib("smu"), timeout_ms=300)
    yield inst
    inst.close()


@pytest.fixture
def psu(fresh_lib):
    inst = PowerSupply.open(PSU_RES, name="vdd", visa_library=fresh_lib("power_supply"),
                            timeout_ms=300)
    yield inst
    inst.close()


@pytest.fixture
def tc(fresh_lib):
    inst = TemperatureController.open(TC_RES, name="socket",
                                      visa_library=fresh_lib("temperature"), timeout_ms=300)
    yield inst
    inst.close()


def test_every_kind_has_a_shipped_simulation():
    for kind in DRIVERS:
        assert (resources.files("sim_backend") / "instruments" / f"{kind}.yaml").is_file()


def test_smu_identity_and_parameter_round_trip(smu):
    assert smu.idn().startswith("PCM-HIL,SIM-SMU")
    smu.source_voltage_v(0.25)
    assert smu.source_voltage_v() == pytest.approx(0.25)
    smu.nplc.set(2)
    assert smu.nplc.get() == pytest.approx(2.0)
    smu.output_on.set(True)
    assert smu.output_on.get() is True


def test_smu_conductance_read_leaves_output_off(smu):
    # The simulated SMU measures 1 µA; at 0.2 V that is a 5 µS device.
    assert smu.measure_conductance_us(0.2, n_avg=3) == pytest.approx(5.0)
    assert smu.output_on.get() is False
    smu.write("SIM:MEAS:CURR 2e-6")
    assert smu.measure_conductance_us(0.1) == pytest.approx(20.0)
    with pytest.raises(InstrumentError, match="non-zero"):
        smu.measure_conductance_us(0.0)


def test_out_of_range_value_is_refused_before_anything_is_written(smu, caplog):
    caplog.set_level(logging.DEBUG, logger="pcm_hil.visa")
    mark = smu.wire.count
    with pytest.raises(ParameterLimitError) as exc:
        smu.source_voltage_v.set(50)
    assert exc.value.parameter == "source_voltage_v" and exc.value.value == 50
    assert "source_voltage_v" in str(exc.value) and "50" in str(exc.value)
    assert "SMU voltage range" in str(exc.value)          # provenance of the limit
    assert smu.wire.sent_since(mark) == []
    assert not [r for r in caplog.records if ">>" in r.getMessage()]
    assert smu.source_voltage_v.get() == pytest.approx(0.0)


def test_wire_log_holds_every_message_in_order(psu):
    mark = psu.wire.count
    psu.voltage_setpoint_v.set(1.2)
    assert psu.voltage_setpoint_v.get() == pytest.approx(1.2)
    recs = psu.wire.records(mark)
    assert [(r.direction, r.message) for r in recs] == [
        (Direction.SENT, "VOLT 1.2"), (Direction.SENT, "SYST:ERR?"),
        (Direction.RECEIVED, '+0,"No error"'), (Direction.SENT, "VOLT?"),
        (Direction.RECEIVED, "+1.200000E+00"), (Direction.SENT, "SYST:ERR?"),
        (Direction.RECEIVED, '+0,"No error"')]
    assert [r.seq for r in recs] == list(range(mark, mark + 7))
    assert psu.wire.last_sent == "SYST:ERR?"


def test_wire_log_keeps_the_newest_and_counts_them_all():
    wire = WireLog("x", maxlen=3)
    for i in range(5):
        wire.sent(f"CMD {i}")
    wire.received(b"\xffok\r\n")
    assert wire.count == 6
    assert wire.sent_since(0) == ["CMD 3", "CMD 4"]       # the oldest fell out
    assert wire.records(5)[0].message == "\\xffok"        # bytes: escaped, no terminator


@pytest.mark.parametrize("bad", ["0.1", None, float("nan"), float("inf"), True])
def test_non_numbers_are_refused(smu, bad):
    with pytest.raises(ParameterLimitError, match="source_voltage_v"):
        smu.source_voltage_v.set(bad)


def test_onoff_parameter_refuses_other_values(psu):
    with pytest.raises(ParameterLimitError, match="output_on"):
        psu.output_on.set(2)


def test_instrument_side_range_error_comes_from_the_error_queue(smu):
    # Bypass the driver's own check: the simulated instrument rejects the value itself.
    with pytest.raises(InstrumentError) as exc:
        smu.write("SOUR:VOLT 50")
    assert exc.value.scpi_errors == ((-100, "Command error"),)
    assert exc.value.command == "SOUR:VOLT 50"
    assert "smu" in str(exc.value)
    # the queue was drained: the next command is clean
    smu.source_voltage_v.set(0.1)
    assert smu.error_queue() == []


def test_unknown_command_and_unknown_query(tc):
    with pytest.raises(InstrumentError) as exc:
        tc.write("BOGUS:CMD 1")
    assert exc.value.scpi_errors == ((-100, "Command error"),)
    with pytest.raises(InstrumentError) as exc:
        tc.query("BOGUS?")
    assert "no valid reply" in str(exc.value)
    assert exc.value.scpi_errors == ((-100, "Command error"),)
    assert tc.setpoint_c.get() == pytest.approx(25.0)   # still usable


def test_stale_errors_are_cleared_when_a_driver_attaches(fresh_lib):
    rm = pyvisa.ResourceManager(fresh_lib("smu"))
    res = rm.open_resource(SMU_RES, read_termination="\n", write_termination="\n",
                           timeout=300)
    res.write("NOT:A:COMMAND")
    res.write("ALSO:NOT")
    smu = Smu(res, "smu")
    assert smu.clear_errors() == [(-100, "Command error"), (-100, "Command error")]
    assert smu.error_queue() == []
    smu.close()
    rm.close()


def test_every_command_and_reply_is_logged(psu, caplog):
    caplog.set_level(logging.DEBUG, logger="pcm_hil.visa")
    psu.voltage_setpoint_v.set(1.2)
    psu.current_a.get()
    msgs = [r.getMessage() for r in caplog.records if r.name == "pcm_hil.visa"]
    assert "vdd >> VOLT 1.2" in msgs
    assert "vdd >> SYST:ERR?" in msgs
    assert "vdd >> MEAS:CURR?" in msgs
    assert any(m.startswith("vdd << +5.0") for m in msgs)


def test_limits_can_be_narrowed_never_widened(psu):
    p = psu.current_limit_a
    p.tighten(None, 0.5, "station safety.supply_current_max_a")
    assert (p.low, p.high) == (0.0, 0.5)
    assert p.limits_source == "station safety.supply_current_max_a"
    p.tighten(-1.0, 10.0, "somewhere wider")          # wider: ignored
    assert (p.low, p.high) == (0.0, 0.5)
    assert p.limits_source == "station safety.supply_current_max_a"
    with pytest.raises(ParameterLimitError, match=r"0\.6 A is outside.*safety"):
        p.set(0.6)
    with pytest.raises(ConfigError, match="do not overlap"):
        p.tighten(1.0, 2.0, "station x")
    with pytest.raises(ConfigError, match="on/off"):
        psu.output_on.tighten(0, 1, "station y")


def test_apply_validates_both_values_before_writing_either(psu):
    with pytest.raises(ParameterLimitError, match="current_limit_a"):
        psu.apply(1.0, 99.0)
    assert psu.voltage_setpoint_v.get() == pytest.approx(0.0)   # untouched
    psu.apply(1.2, 0.3)
    assert psu.voltage_setpoint_v.get() == pytest.approx(1.2)
    assert psu.current_limit_a.get() == pytest.approx(0.3)


def test_read_only_and_quantities(psu, tc):
    with pytest.raises(InstrumentError, match="read-only"):
        psu.current_a.set(1.0)
    assert psu.read_quantity("current_a") == pytest.approx(0.05)
    assert tc.read_quantity("temperature_c") == pytest.approx(25.0)
    with pytest.raises(InstrumentError, match="temperature_c"):
        psu.read_quantity("temperature_c")


def test_snapshot_holds_settings_readings_and_limit_provenance(smu, psu, tc):
    for inst in (smu, psu, tc):
        snap = inst.snapshot()
        assert snap["idn"].startswith("PCM-HIL")
        assert snap["kind"] == inst.kind
        for name in inst.param_names():
            assert name in snap["parameters"]
            assert snap["parameters"][name]["value"] is not None
    p = psu.snapshot()["parameters"]["current_limit_a"]
    assert (p["low"], p["high"], p["limits_source"]) == (0.0, 5.0, "supply current range")
    assert psu.snapshot()["parameters"]["current_a"]["value"] == pytest.approx(0.05)


@pytest.mark.filterwarnings("ignore:read string doesn't end")
def test_open_errors_are_typed():
    with pytest.raises(InstrumentError, match="GPIB0::99::INSTR"):
        Smu.open("GPIB0::99::INSTR", visa_library=sim_lib("smu"), timeout_ms=100)
    with pytest.raises(InstrumentError, match="VISA library"):
        Smu.open(SMU_RES, visa_library="no-such-file.yaml@sim")


def test_closed_instrument_refuses_commands(tc):
    tc.close()
    with pytest.raises(InstrumentError, match="closed"):
        tc.temperature_c.get()
    tc.close()   # idempotent


def test_instrument_errors_are_hil_errors():
    assert issubclass(InstrumentError, HilError)
    assert issubclass(ParameterLimitError, InstrumentError)
