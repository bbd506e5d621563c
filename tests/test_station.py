"""Station files: strict loading with errors naming the bad entry; opening the bench."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from drivers.errors import ConfigError, SafetyLimitError
from drivers.instruments import InstrumentError, ParameterLimitError
from drivers.pulse import PulseSpec
from hil.station import (InstrumentKind, MonitorAction, check_settings, load_station,
                         open_instruments)

ROOT = Path(__file__).resolve().parents[1]
SIM_STATION = ROOT / "configs" / "station_sim.yaml"
LAB_STATION = ROOT / "configs" / "station_lab.yaml"


def base() -> dict:
    return yaml.safe_load(SIM_STATION.read_text(encoding="utf-8"))


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "station.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return p


def local_sim_copies(tmp_path: Path, data: dict) -> dict:
    """Point every instrument at its own copy of the pyvisa-sim file, next to the station
    file (a relative path): fresh simulated instruments for this test only."""
    for inst in data["instruments"]:
        src = resources.files("sim_backend") / "instruments" / f"{inst['kind']}.yaml"
        (tmp_path / f"{inst['kind']}.yaml").write_text(src.read_text(encoding="utf-8"),
                                                       encoding="utf-8")
        inst["visa_library"] = f"{inst['kind']}.yaml@sim"
    return data


def test_shipped_stations_load():
    sim = load_station(SIM_STATION)
    assert sim.chip.url.startswith("sim://")
    assert [i.kind for i in sim.instruments] == [InstrumentKind.SMU,
                                                InstrumentKind.POWER_SUPPLY,
                                                InstrumentKind.TEMPERATURE]
    assert sim.monitors[0].action is MonitorAction.ABORT
    assert sim.visa_library(sim.instruments[0]).endswith("smu.yaml@sim")
    lab = load_station(LAB_STATION)
    assert lab.chip.url == "/dev/ttyUSB0"
    assert lab.visa_library(lab.instruments[0]) is None          # system VISA
    assert lab.visa_library(lab.instruments[2]) == "@py"
    assert lab.safety.supply_current_max_a == pytest.approx(0.3)


@pytest.mark.parametrize("mutate, key, text", [
    (lambda d: d.update(chips=1), "chips", "unknown key"),
    (lambda d: d.pop("safety"), "safety", "required key is missing"),
    (lambda d: d["safety"].pop("max_batch_devices"), "safety.max_batch_devices",
     "required key is missing"),
    (lambda d: d["safety"]["set"].update(amplitude_v_max=-1), "safety.set", "must be > 0"),
    (lambda d: d["safety"].update(read_v_max=0), "safety", "read_v_max must be > 0"),
    (lambda d: d["safety"].update(max_pulses_per_device="many"),
     "safety.max_pulses_per_device", "expected an integer"),
    (lambda d: d["instruments"][1].update(kind="oscilloscope"), "instruments[1].kind",
     "not one of: smu, power_supply, temperature"),
    (lambda d: d["instruments"][0].pop("resource"), "instruments[0].resource",
     "required key is missing"),
    (lambda d: d["instruments"][2].update(name="smu"), "instruments[2].name",
     "already used by instruments[0]"),
    (lambda d: d["instruments"][0]["limits"].update(volts=[0, 1]),
     "instruments[0].limits.volts", "not a numeric setting of a smu"),
    (lambda d: d["instruments"][0]["limits"].update(source_voltage_v=[1, -1]),
     "instruments[0].limits.source_voltage_v", "low 1 > high -1"),
    (lambda d: d["instruments"][0]["limits"].update(source_voltage_v=[1]),
     "instruments[0].limits.source_voltage_v", "expected [low, high]"),
    (lambda d: d["instruments"][0].update(visa_library="missing.yaml@sim"),
     "instruments[0].visa_library", "not found"),
    (lambda d: d["safety"].pop("supply_current_max_a"), "safety.supply_current_max_a",
     "required when the station has a power_supply"),
    (lambda d: d["monitors"][1].update(instrument="oven"), "monitors[1].instrument",
     "'oven' is not an instrument of this station"),
    (lambda d: d["monitors"][0].update(quantity="temperature_c"), "monitors[0].quantity",
     "not a quantity of a power_supply"),
    (lambda d: d["monitors"][0].update(every_n_steps=0), "monitors[0]",
     "every_n_steps must be >= 1"),
    (lambda d: d["monitors"][0].update(action="panic"), "monitors[0].action",
     "not one of: pause, abort"),
    (lambda d: [d["monitors"][0].pop(k) for k in ("low", "high")], "monitors[0]",
     "needs a band"),
    (lambda d: d.update(format="pcm-hil-station/9"), "format", "is not"),
])
def test_bad_station_names_the_bad_entry(tmp_path, mutate, key, text):
    data = base()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_station(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert text in msg


def test_malformed_yaml_is_one_error(tmp_path):
    p = tmp_path / "station.yaml"
    p.write_text("chip: {url: 'sim://'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_station(p)


def test_safety_checks_pulses_batches_and_steps():
    s = load_station(SIM_STATION).safety
    s.check_pulse(PulseSpec.set(1.5, 1000))
    with pytest.raises(SafetyLimitError, match=r"safety\.set\.amplitude_v_max"):
        s.check_pulse(PulseSpec.set(1.6, 50))
    with pytest.raises(SafetyLimitError, match=r"safety\.reset\.width_ns_max"):
        s.check_pulse(PulseSpec.reset(2.5, 500))
    addr = np.arange(4, dtype=np.uint32)
    s.check_program(addr, np.array([0, 1, 32, 5]), PulseSpec.set())
    with pytest.raises(SafetyLimitError) as exc:
        s.check_program(addr, np.array([0, 33, 1, 40]), PulseSpec.set())
    assert list(exc.value.devices) == [1, 3]
    with pytest.raises(SafetyLimitError, match="max_pulses_per_step"):
        s.check_step(500_001)
    with pytest.raises(SafetyLimitError, match="max_batch_devices"):
        s.check_read(np.zeros(1_048_577, dtype=np.uint32))


def test_safety_limits_matvec_input_voltages():
    """A MATVEC above safety.read_v_max never reaches the chip; below it, the chip answers."""
    from drivers.geometry import Geometry
    from drivers.safety import LimitedBackend
    from sim_backend import PcmModel, SimulatedChip
    s = load_station(SIM_STATION).safety
    assert s.read_v_max == pytest.approx(0.3)
    chip = SimulatedChip(PcmModel.preset("ideal"), Geometry(1, 8, 8), seed=0)
    guarded = LimitedBackend(chip, s)
    block = np.arange(6).reshape(2, 3)
    with pytest.raises(SafetyLimitError, match=r"x\[1, 1\] = -0.31 V exceeds "
                                               r"safety\.read_v_max = 0.3 V"):
        guarded.matvec(block, np.array([[0.1, 0.0], [0.2, -0.31], [0.0, 0.0]]))
    with pytest.raises(SafetyLimitError, match=r"x\[1\] is NaN: a line voltage must be finite"):
        guarded.matvec(block, np.array([0.1, np.nan, 0.0]))
    assert guarded.refused == 2 and chip.counters["commands"] == 0
    assert guarded.matvec(block, np.array([0.3, -0.3, 0.0])).shape == (2,)


def test_open_instruments_applies_station_limits(tmp_path):
    path = write(tmp_path, local_sim_copies(tmp_path, base()))
    station = load_station(path)
    with open_instruments(station) as inst:
        assert sorted(inst) == ["smu", "socket", "vdd"]
        v = inst["smu"].source_voltage_v
        assert (v.low, v.high) == (-0.5, 0.5)
        assert v.limits_source == "station instruments[0].limits.source_voltage_v"
        cur = inst["vdd"].current_limit_a
        assert cur.high == pytest.approx(0.5)
        assert cur.limits_source == "station safety.supply_current_max_a"
        with pytest.raises(ParameterLimitError, match="safety.supply_current_max_a"):
            cur.set(0.8)
        snap = inst.snapshot()
        assert snap["vdd"]["parameters"]["current_limit_a"]["high"] == pytest.approx(0.5)
        with pytest.raises(ConfigError, match="no open instrument named 'oven'"):
            inst["oven"]


def test_instrument_already_outside_its_limits_is_refused(tmp_path):
    path = write(tmp_path, local_sim_copies(tmp_path, base()))
    station = load_station(path)
    with open_instruments(station, ["vdd"]) as inst:
        vdd = inst["vdd"]
        vdd.current_limit_a.set(0.3)
        vdd.current_limit_a.tighten(None, 0.2, "test")
        with pytest.raises(InstrumentError, match="present current_limit_a = 0.3"):
            check_settings(vdd)


def test_open_instruments_is_all_or_nothing(tmp_path):
    data = local_sim_copies(tmp_path, base())
    data["instruments"][2]["resource"] = "ASRL9::INSTR"       # not in the sim file
    data["instruments"][2]["timeout_ms"] = 100
    station = load_station(write(tmp_path, data))
    with pytest.warns(UserWarning):
        with pytest.raises(InstrumentError, match="ASRL9::INSTR"):
            open_instruments(station)
