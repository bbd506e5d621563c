"""The shipped lab station (configs/station_lab.yaml) on simulated instruments, for tests.

Each instrument keeps the PyMeasure class, resource, limits and monitors of the lab file; only
its VISA library becomes pyvisa-sim with a fresh copy of the model's shipped definition (the
resources of the lab file are those the definitions serve). pyvisa-sim keeps one device per
definition file per process, so a copy per test starts every instrument in its shipped state.
"""
from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAB_STATION = ROOT / "configs" / "station_lab.yaml"
SIM_FILES = {"smu": "keithley_2450.yaml", "power_supply": "keysight_e36312a.yaml",
             "temperature": "lakeshore_331.yaml"}

HAVE_PYMEASURE = importlib.util.find_spec("pymeasure") is not None
needs_pymeasure = pytest.mark.skipif(
    not HAVE_PYMEASURE, reason="PyMeasure is not installed (pip install 'pcm-hil[pymeasure]')")


def sim_text(file: str) -> str:
    return (resources.files("sim_backend") / "instruments" / file).read_text(encoding="utf-8")


def lab_data() -> dict:
    return yaml.safe_load(LAB_STATION.read_text(encoding="utf-8"))


def lab_on_sims(tmp_path: Path, mutate: Optional[Callable[[dict], None]] = None,
                edit_sim: Optional[Callable[[str, str], str]] = None,
                timeout_ms: int = 300) -> Path:
    """Write the lab station, on fresh pyvisa-sim copies, to tmp_path; return its path.

    `mutate(data)` changes the station data; `edit_sim(file, text)` the definition texts."""
    data = lab_data()
    for inst in data["instruments"]:
        file = SIM_FILES[inst["kind"]]
        text = sim_text(file)
        if edit_sim is not None:
            text = edit_sim(file, text)
        (tmp_path / file).write_text(text, encoding="utf-8")
        inst["visa_library"] = f"{file}@sim"
        inst["timeout_ms"] = timeout_ms
    if mutate is not None:
        mutate(data)
    path = tmp_path / "station_lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
