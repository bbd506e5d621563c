"""Station files: strict loading with errors naming the bad entry; opening the bench."""
from __future__ import annotations

import json
import subprocess
import sys
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

from lab_bench import lab_data, lab_on_sims, needs_pymeasure

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
    assert all(i.pymeasure is None for i in sim.instruments)    # our generic drivers


@needs_pymeasure
def test_lab_station_names_pymeasure_classes():
    lab = load_station(LAB_STATION)
    assert lab.chip.url == "/dev/ttyUSB0"
    assert [i.pymeasure.class_name for i in lab.instruments] == [
        "pymeasure.instruments.keithley.Keithley2450",
        "pymeasure.instruments.keysight.KeysightE36312A",
        "pymeasure.instruments.lakeshore.LakeShore3xx"]
    assert lab.instruments[1].pymeasure.selectors == {"channel": 1}
    assert lab.instruments[2].pymeasure.selectors == {"input": "A", "loop": 1}
    assert lab.visa_library(lab.instruments[0]) is None          # system VISA
    assert lab.safety.supply_current_max_a == pytest.approx(0.3)
    assert lab.to_dict()["instruments"][1]["pymeasure"]["channel"] == 1


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
    assert_refused(write(tmp_path, data), key, text)


def assert_refused(path: Path, key: str, text: str) -> None:
    """Loading `path` is one ConfigError naming the file and `key`, saying `text`."""
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


# --- PyMeasure instruments ------------------------------------------------------------------------
def _pm(i: int):
    return lambda d: d["instruments"][i]["pymeasure"]


@needs_pymeasure
@pytest.mark.parametrize("mutate, key, text", [
    (lambda d: _pm(0)(d).update(class_name="pymeasure.instruments.keithley.Keithley9999"),
     "instruments[0].pymeasure.class_name", "has no class 'Keithley9999'"),
    (lambda d: _pm(0)(d).update(class_name="Keithley2450"),
     "instruments[0].pymeasure.class_name", "not a PyMeasure instrument class name"),
    (lambda d: _pm(0)(d).update(class_name="pymeasure.instruments.keysight.KeysightE36312A"),
     "instruments[0].pymeasure.class_name", "not a smu pcm-hil can drive"),
    (lambda d: _pm(2)(d).update(class_name="pymeasure.instruments.keithley.Keithley2000"),
     "instruments[2].pymeasure.class_name", "not a temperature pcm-hil can drive"),
    (lambda d: _pm(0)(d).update(clas_name="x"), "instruments[0].pymeasure.clas_name",
     "unknown key"),
    (lambda d: _pm(0)(d).update(options={"bogus": 1}),
     "instruments[0].pymeasure.options.bogus", "not an option of Keithley2450"),
    (lambda d: _pm(0)(d).update(options={"timeout": 9}),
     "instruments[0].pymeasure.options.timeout", "from the instrument's `timeout_ms` key"),
    (lambda d: _pm(0)(d).update(options={"baud_rate": 9600}),
     "instruments[0].pymeasure.options.baud_rate", "nor a setting of a GPIBInstrument"),
    (lambda d: (d["instruments"][2].update(resource="ASRL/dev/ttyUSB1::INSTR"),
                _pm(2)(d).update(options={"parity": "weird"})),
     "instruments[2].pymeasure.options.parity", "'weird' is not one of: none, odd, even"),
    (lambda d: d["instruments"][0].update(resource="nowhere"), "instruments[0].resource",
     "not a VISA resource string"),
    (lambda d: _pm(1)(d).pop("channel"), "instruments[1].pymeasure.channel",
     "required for a Keysight E36312A: the output that feeds the rail (1, 2, 3)"),
    (lambda d: _pm(1)(d).update(channel=4), "instruments[1].pymeasure.channel",
     "4 is not one of: 1, 2, 3"),
    (lambda d: _pm(0)(d).update(channel=1), "instruments[0].pymeasure.channel",
     "a Keithley 2450 has no channel to choose"),
    (lambda d: _pm(2)(d).update(input="C"), "instruments[2].pymeasure.input",
     "'C' is not one of: A, B"),
    (lambda d: d["instruments"][2]["limits"].update(output_on=[0, 1]),
     "instruments[2].limits.output_on", "not a numeric setting of a temperature driven by "
                                        "pymeasure.instruments.lakeshore.LakeShore3xx"),
    (lambda d: d["monitors"][0].update(quantity="temperature_c"), "monitors[0].quantity",
     "not a quantity of a power_supply"),
])
def test_bad_pymeasure_entry_names_the_key(tmp_path, mutate, key, text):
    data = lab_data()
    mutate(data)
    assert_refused(write(tmp_path, data), key, text)


def test_station_naming_pymeasure_without_it_installed_says_how_to_get_it():
    code = ("import sys; sys.modules['pymeasure'] = None\n"
            "from hil.station import load_station\n"
            f"load_station({str(LAB_STATION)!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode != 0
    assert ("instruments[0].pymeasure.class_name: PyMeasure is not installed "
            "(pip install 'pcm-hil[pymeasure]')") in r.stderr


@needs_pymeasure
def test_lab_station_opens_its_models_with_station_limits_and_interlock(tmp_path):
    station = load_station(lab_on_sims(tmp_path))
    with open_instruments(station) as inst:
        smu, vdd, socket = inst["smu"], inst["vdd"], inst["socket"]
        v = smu.source_voltage_v
        assert (v.low, v.high) == (-0.3, 0.3)
        assert v.limits_source == "station instruments[0].limits.source_voltage_v"
        cur = vdd.current_limit_a
        assert (cur.high, cur.limits_source) == (0.3, "station safety.supply_current_max_a")
        assert socket.setpoint_c.limits_source == "station instruments[2].limits.setpoint_c"
        mark = vdd.wire.count
        with pytest.raises(ParameterLimitError, match="safety.supply_current_max_a"):
            cur.set(0.5)
        with pytest.raises(ParameterLimitError, match="instruments.2..limits.setpoint_c"):
            socket.setpoint_c.set(120)
        assert vdd.wire.sent_since(mark) == []
        snap = inst.snapshot()
    assert snap["vdd"]["driver"] == "pymeasure.instruments.keysight.KeysightE36312A"
    assert snap["vdd"]["selectors"] == {"channel": 1}
    assert snap["vdd"]["parameters"]["current_limit_a"]["high"] == pytest.approx(0.3)
    assert snap["smu"]["idn"].startswith("KEITHLEY INSTRUMENTS,MODEL 2450")
    assert snap["socket"]["parameters"]["temperature_c"]["value"] == pytest.approx(25.0)


@needs_pymeasure
def test_lab_supply_already_above_the_interlock_is_refused_and_nothing_stays_open(tmp_path):
    def supply_at_0_4_a(file, text):
        return text.replace("default: 0.1", "default: 0.4", 1) \
            if file == "keysight_e36312a.yaml" else text
    station = load_station(lab_on_sims(tmp_path, edit_sim=supply_at_0_4_a))
    with pytest.raises(InstrumentError, match=r"present current_limit_a = 0.4 A is outside "
                                              r"its limits \[0.0, 0.3\]"):
        open_instruments(station)


def _train(tmp_path, station, *args):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("data: {train_examples: 300, test_examples: 100}\n"
                   "training: {epochs: 1, baseline: false}\n")
    return subprocess.run([sys.executable, "-m", "hil.cli", "train", "--config", str(cfg),
                           "--no-progress", "--station", str(station), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def _chip_safety(d):
    """The lab file's chip limits are for its own chip: the simulated default network needs
    the simulated bench's (batches of the whole network, 20 pulses per device at init)."""
    d["safety"] = base()["safety"]


@needs_pymeasure
def test_dry_run_of_the_lab_station_opens_no_instrument(tmp_path):
    def unreachable(d):
        _chip_safety(d)
        for inst in d["instruments"]:      # opening any of them would fail at once
            inst["visa_library"] = str(tmp_path / "no-such-visa-library.so")
    data = lab_data()
    unreachable(data)
    r = _train(tmp_path, write(tmp_path, data), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would send:" in r.stdout and "within the limits" in r.stdout


@needs_pymeasure
def test_training_with_the_lab_station_logs_the_instruments_provenance(tmp_path):
    from hil.run_log import RunLog
    station = lab_on_sims(tmp_path, mutate=_chip_safety)
    run = tmp_path / "run.h5"
    r = _train(tmp_path, station, "--backend", "sim://", "--run", str(run))
    assert r.returncode == 0, r.stderr
    with RunLog(str(run)) as log:
        prov = log.provenance
        readings = log.monitor_readings()
    snap = prov["instruments"]
    assert sorted(snap) == ["smu", "socket", "vdd"]
    smu = snap["smu"]
    assert smu["driver"] == "pymeasure.instruments.keithley.Keithley2450"
    assert smu["binding"] == "drivers.instruments.pymeasure_models.Keithley2450Smu"
    assert smu["driver_version"].startswith("pymeasure 0.16")
    assert smu["parameters"]["source_voltage_v"]["limits_source"] == \
        "station instruments[0].limits.source_voltage_v"
    assert snap["vdd"]["parameters"]["current_limit_a"]["limits_source"] == \
        "station safety.supply_current_max_a"
    assert snap["socket"]["idn"].startswith("LSCI,MODEL331")
    assert snap["socket"]["parameters"]["setpoint_c"]["value"] == pytest.approx(25.0)
    assert prov["station"]["instruments"][1]["pymeasure"]["channel"] == 1
    json.dumps(prov)                       # plain data all the way down
    # the monitors read the E36312A every 10 steps and the 331 every 100
    assert list(readings["step"][:3]) == [10, 20, 30]
    assert np.allclose(readings["vdd.current_a"], 0.05)
    assert np.nanmax(readings["socket.temperature_c"]) == pytest.approx(25.0)


@needs_pymeasure
def test_out_of_band_socket_temperature_aborts_training(tmp_path):
    def hot_socket(file, text):
        return text.replace("default: 25.0\n        getter: {q: \"CRDG? A\"",
                            "default: 40.0\n        getter: {q: \"CRDG? A\"") \
            if file == "lakeshore_331.yaml" else text

    def abort_on_socket(d):
        _chip_safety(d)
        d["monitors"][1].update(action="abort", every_n_steps=5)     # first poll: step 5
    station = lab_on_sims(tmp_path, mutate=abort_on_socket, edit_sim=hot_socket)
    r = _train(tmp_path, station, "--backend", "sim://", "--no-log")
    assert r.returncode == 130, r.stderr
    assert "monitor: socket.temperature_c = 40 outside [23, 27] -> abort; at step 5" \
        in r.stderr
