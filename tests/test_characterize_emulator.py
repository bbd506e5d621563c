"""Characterisation through the firmware emulator: the drift phase waits in the chip's
simulated time (ADVANCE_CLOCK / CLOCK, capability SIM_CLOCK), so an hour of drift takes
seconds, and the file's measured arrays equal an in-process characterisation bit for bit."""
from __future__ import annotations

import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from drivers.fpga import FpgaChip
from drivers.geometry import Geometry
from hil.characterize import CharacterizeConfig, characterize, load_characterization
from sim_backend.emulator import EmulatorServer, FaultConfig
from sim_backend.firmware import Firmware
from sim_backend.pcm_model import PcmModel
from sim_backend.sim_chip import SimulatedChip

from test_emulator import start_cli, stop_cli

GEO = Geometry(1, 256, 256)
SEED = 21
# ~2,000 devices, the default phases: 64 reads after RESET, a 20-pulse SET train, 16 noise
# reads, 12 drift reads from 38.6 s to 3860 s after the last pulse.
CFG = CharacterizeConfig(devices=2000, seed=4)


def make_chip() -> SimulatedChip:
    return SimulatedChip(PcmModel.preset("jap"), GEO, seed=SEED)


def datasets(path) -> dict:
    """Every dataset of an HDF5 file, by name."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_measurements(a_path, b_path) -> None:
    a, b = datasets(a_path), datasets(b_path)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name  # bit for bit (NaN-safe)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The reference file and the in-process chip after writing it."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    chip = make_chip()
    summary = characterize(chip, CFG, path, backend_url="sim://")
    assert summary.clock == "chip"
    return path, chip


@pytest.mark.parametrize("faults", [None, FaultConfig(drop=0.02, corrupt=0.01, seed=2)],
                         ids=["clean", "faulty"])
def test_characterisation_over_tcp_equals_in_process(tmp_path, in_process, faults):
    ref_path, ref_chip = in_process
    out = tmp_path / "emu.h5"
    server = EmulatorServer(Firmware(make_chip()), listen=("127.0.0.1", 0),
                            faults=faults).start()
    try:
        with FpgaChip(server.url, timeout_s=0.3 if faults else 5.0, retries=10) as chip:
            assert chip.info().supports("sim_clock")
            summary = characterize(chip, CFG, out, backend_url=server.url)
            stats = dict(chip.stats)
    finally:
        server.stop()
    assert summary.clock == "chip" and summary.devices == 2000
    assert summary.duration_s < 60  # the hour of drift passed in simulated time
    assert_same_measurements(ref_path, out)
    d = load_characterization(out)
    np.testing.assert_allclose(d.drift_t_s - d.drift_t_prog_s, CFG.drift_targets_s(),
                               rtol=0, atol=0.01)
    assert d.drift_t_s[-1] - d.drift_t_prog_s >= 3859.0
    assert stats["ADVANCE_CLOCK"]["commands"] == CFG.drift_reads
    # every batch and every wait applied exactly once, retried or not
    emu_chip = server.firmware.chip
    assert emu_chip.clock_s == ref_chip.clock_s and emu_chip.counters == ref_chip.counters
    if faults is not None:
        assert sum(server.stats()["faults"].values()) > 0
        assert server.stats()["repeats_answered"] > 0


def test_cli_characterize_against_the_emulator_waits_in_simulated_time(tmp_path):
    """`pcm-hil characterize --backend socket://...` with the default one-hour drift span
    finishes in seconds and records the chip's clock."""
    proc, url = start_cli("--listen", "127.0.0.1:0", "--rows", "64", "--cols", "64",
                          "--seed", "3")
    out = tmp_path / "cli.h5"
    try:
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "hil.cli", "characterize", "--backend", url,
                              "-o", str(out), "--devices", "300", "--pulses", "4",
                              "--reset-reads", "3", "--noise-reads", "3", "--no-progress"],
                             capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        assert stop_cli(proc) == 0
    assert run.returncode == 0, run.stderr
    assert elapsed < 60
    d = load_characterization(out)
    assert d.clock == "chip"
    assert d.drift_t_s[-1] - d.drift_t_prog_s == pytest.approx(3860.0, abs=0.01)


def test_a_chip_without_a_simulated_clock_is_timed_by_the_host(tmp_path):
    """A firmware that does not list SIM_CLOCK (as a real chip's): the driver still has the
    clock methods, but the measurement runs on the wall clock and never asks for CLOCK."""
    server = EmulatorServer(Firmware(make_chip(), capabilities=frozenset({"matvec"})),
                            listen=("127.0.0.1", 0)).start()
    cfg = CharacterizeConfig(devices=200, pulses=3, reset_reads=2, noise_reads=2,
                             drift_reads=0, seed=4)
    try:
        with FpgaChip(server.url, timeout_s=5.0) as chip:
            summary = characterize(chip, cfg, tmp_path / "wall.h5", backend_url=server.url)
            asked = set(chip.stats)
    finally:
        server.stop()
    assert summary.clock == "wall"
    assert not asked & {"CLOCK", "ADVANCE_CLOCK"}
    with h5py.File(tmp_path / "wall.h5", "r") as f:
        assert f.attrs["clock"] == "wall"
        assert f.attrs["adc_full_scale_us"] == server.firmware.full_scale_us
