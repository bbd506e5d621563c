"""Monitors polled by a training loop, on pyvisa-sim instruments."""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import pytest
import yaml

from drivers.errors import ConfigError
from hil.monitors import Monitor
from hil.station import MonitorAction, MonitorSpec, load_station, open_instruments

from lab_bench import lab_on_sims, needs_pymeasure

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(tmp_path):
    """The simulated station with fresh simulated instruments (own pyvisa-sim copies)."""
    data = yaml.safe_load((ROOT / "configs" / "station_sim.yaml").read_text(encoding="utf-8"))
    for inst in data["instruments"]:
        src = resources.files("sim_backend") / "instruments" / f"{inst['kind']}.yaml"
        (tmp_path / f"{inst['kind']}.yaml").write_text(src.read_text(encoding="utf-8"),
                                                       encoding="utf-8")
        inst["visa_library"] = f"{inst['kind']}.yaml@sim"
        inst["timeout_ms"] = 200
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    station = load_station(path)
    instruments = open_instruments(station)
    yield station, instruments
    instruments.close()


def test_in_band_readings_come_back_without_action(bench):
    station, inst = bench
    mon = Monitor.from_station(station, inst)
    r = mon.poll(0)                       # step 0: every monitor is due
    assert r.action is None and r.violations == ()
    assert r.readings == {"vdd.current_a": pytest.approx(0.05),
                          "socket.temperature_c": pytest.approx(25.0)}
    assert mon.last is r


def test_quantities_are_read_every_n_steps_only(bench, caplog):
    station, inst = bench
    mon = Monitor.from_station(station, inst)          # vdd every 10, socket every 50
    assert mon.poll(7).readings == {}
    assert set(mon.poll(10).readings) == {"vdd.current_a"}
    assert set(mon.poll(50).readings) == {"vdd.current_a", "socket.temperature_c"}
    # nothing is read on steps that are not due: no instrument traffic
    caplog.set_level("DEBUG", logger="pcm_hil.visa")
    mon.poll(11)
    assert not caplog.records


def test_out_of_band_current_aborts(bench):
    station, inst = bench
    mon = Monitor.from_station(station, inst)
    inst["vdd"].write("SIM:MEAS:CURR 0.45")            # simulated over-current
    r = mon.poll(10)
    assert r.action is MonitorAction.ABORT
    assert r.readings["vdd.current_a"] == pytest.approx(0.45)
    (v,) = r.violations
    assert v.label == "vdd.current_a" and v.high == pytest.approx(0.4)
    assert "outside [0, 0.4]" in v.describe()


def test_temperature_out_of_band_pauses_and_abort_wins(bench):
    station, inst = bench
    mon = Monitor.from_station(station, inst)
    inst["socket"].write("SIM:MEAS:TEMP 31.5")
    assert mon.poll(50).action is MonitorAction.PAUSE
    inst["vdd"].write("SIM:MEAS:CURR -0.01")            # below the band too
    r = mon.poll(50)
    assert r.action is MonitorAction.ABORT
    assert {v.action for v in r.violations} == {MonitorAction.PAUSE, MonitorAction.ABORT}
    inst["socket"].write("SIM:MEAS:TEMP 25")
    inst["vdd"].write("SIM:MEAS:CURR 0.1")
    assert mon.poll(50).action is None                  # back in band


def test_failed_read_counts_as_out_of_band(bench):
    station, inst = bench
    mon = Monitor.from_station(station, inst)
    inst["socket"].close()
    r = mon.poll(50)
    assert r.action is MonitorAction.PAUSE
    assert math.isnan(r.readings["socket.temperature_c"])
    (v,) = r.violations
    assert "closed" in v.error


def test_one_sided_band(bench):
    _, inst = bench
    mon = Monitor([MonitorSpec("socket", "temperature_c", 1, high=24.0,
                               action=MonitorAction.ABORT)], inst)
    assert mon.poll(3).action is MonitorAction.ABORT


def test_monitor_refuses_unknown_instrument_or_quantity(bench):
    _, inst = bench
    with pytest.raises(ConfigError, match=r"monitors\[0\]\.instrument.*'oven' is not open"):
        Monitor([MonitorSpec("oven", "temperature_c", high=1.0)], inst)
    with pytest.raises(ConfigError, match=r"monitors\[1\]\.quantity.*'voltage_v'"):
        Monitor([MonitorSpec("vdd", "current_a", high=1.0),
                 MonitorSpec("socket", "voltage_v", high=1.0)], inst)


@needs_pymeasure
def test_lake_shore_temperature_out_of_band_aborts(tmp_path):
    """The lab station's Lake Shore 331 (through PyMeasure) with its socket monitor set to
    abort: the monitor reads CRDG? A as the 331's manual gives it."""
    station = load_station(lab_on_sims(
        tmp_path, mutate=lambda d: d["monitors"][1].update(action="abort")))
    with open_instruments(station) as inst:
        mon = Monitor.from_station(station, inst)
        assert mon.poll(100).action is None
        socket = inst["socket"]
        socket.driver.write("SIM:CRDG A,31.5")          # the socket heats up
        mark = socket.wire.count
        r = mon.poll(100)
        assert r.action is MonitorAction.ABORT
        assert r.readings["socket.temperature_c"] == pytest.approx(31.5)
        (v,) = [v for v in r.violations if v.label == "socket.temperature_c"]
        assert v.describe() == "socket.temperature_c = 31.5 outside [23, 27] -> abort"
        assert socket.wire.sent_since(mark) == ["CRDG? A", "*ESR?"]
