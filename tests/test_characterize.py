"""Characterisation on the simulated chip, the HDF5 file, and the model-fit round trip."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from drivers.backend import ChipBackend
from drivers.layers import BackendLayer
from drivers.errors import ConfigError, SafetyLimitError
from hil.backend_url import open_backend
from hil.characterize import (FORMAT, FORMAT_VERSION, CharacterizeConfig, characterize,
                              load_characterization)
from hil.cli import main
from hil.fit_model import FitOptions, fit_model, write_model_yaml
from drivers.safety import LimitedBackend
from hil.station import PulseLimits, SafetyLimits
from sim_backend.pcm_model import PcmModel

ROOT = Path(__file__).resolve().parents[1]
SMALL = CharacterizeConfig(devices=400, pulses=5, reset_reads=4, noise_reads=3,
                           drift_reads=4, drift_start_s=40.0, drift_end_s=400.0, seed=3)


def sim(model: str = "jap", seed: int = 1, rows: int = 64, cols: int = 64) -> ChipBackend:
    return open_backend(f"sim://?model={model}&seed={seed}&rows={rows}&cols={cols}")


def test_file_schema_and_batched_commands(tmp_path):
    chip = sim()
    out = tmp_path / "c.h5"
    summary = characterize(chip, SMALL, out, backend_url="sim://test")
    c = SMALL
    expected = 1 + 1 + c.reset_reads + 2 * c.pulses + c.noise_reads + c.drift_reads
    assert summary.commands == expected == chip.counters["commands"]   # never per device
    assert chip.counters["set_pulses"] == c.devices * c.pulses
    assert chip.counters["reset_pulses"] == c.devices
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["status"] == "completed" and f.attrs["clock"] == "chip"
        assert json.loads(f.attrs["config_json"])["devices"] == 400
        assert json.loads(f.attrs["chip_info_json"])["geometry"]["rows"] == 64
        assert f["devices"].dtype == np.uint32 and f["devices"].shape == (400,)
        assert np.all(np.diff(f["devices"][...].astype(np.int64)) > 0)
        assert f["reset/g_us"].shape == (4, 400) and f["set/g_us"].shape == (5, 400)
        assert f["noise/g_us"].shape == (3, 400) and f["drift/g_us"].shape == (4, 400)
        assert list(f["set/pulse_index"][...]) == [1, 2, 3, 4, 5]
        assert f["set"].attrs["kind"] == "SET" and f["reset"].attrs["amplitude_v"] == 2.5
        assert np.all(np.isfinite(f["set/g_us"][...]))
    d = load_characterization(out)
    # drift reads land at the requested times after the last SET pulse (chip clock)
    np.testing.assert_allclose(d.drift_t_s - d.drift_t_prog_s, c.drift_targets_s(),
                               rtol=0, atol=0.01)
    assert d.drift_t_prog_s == pytest.approx(d.set_t_prog_s[-1])
    assert np.all(np.diff(d.set_t_s) > 0)
    # the pulse train goes up on average, as the JAP model says
    assert np.all(np.diff(d.set_g.mean(axis=1)) > 0)


def test_same_seed_same_file_contents(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    characterize(sim(), SMALL, a)
    characterize(sim(), SMALL, b)
    da, db = load_characterization(a), load_characterization(b)
    for name in ("devices", "reset_g", "set_g", "noise_g", "drift_g", "drift_t_s"):
        np.testing.assert_array_equal(getattr(da, name), getattr(db, name))


def test_existing_file_is_not_overwritten(tmp_path):
    out = tmp_path / "c.h5"
    out.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        characterize(sim(), SMALL, out)
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("limits, refused", [
    (dict(set=PulseLimits(0.8, 1000)), "safety.set.amplitude_v_max"),
    (dict(reset=PulseLimits(3.0, 40)), "safety.reset.width_ns_max"),   # RESET comes 2nd
    (dict(max_pulses_per_step=399), "safety.max_pulses_per_step"),
])
def test_safety_limits_refuse_before_any_command(tmp_path, limits, refused):
    """The station's guard checks the whole measurement before its first command."""
    chip = sim()
    safety = SafetyLimits(**{**dict(set=PulseLimits(1.5, 1000), reset=PulseLimits(3.0, 100),
                                    max_pulses_per_device=4, max_pulses_per_step=10_000,
                                    max_batch_devices=10_000), **limits})
    guard = LimitedBackend(chip, safety)
    with pytest.raises(SafetyLimitError, match=refused):
        characterize(guard, SMALL, tmp_path / "c.h5")
    assert chip.commands_executed == 0 and guard.refused == 0   # nothing was sent
    assert not (tmp_path / "c.h5").exists()


def test_batches_are_split_to_the_station_limit(tmp_path):
    chip = sim()
    safety = SafetyLimits(set=PulseLimits(1.5, 1000), reset=PulseLimits(3.0, 100),
                          max_pulses_per_device=1, max_pulses_per_step=10_000,
                          max_batch_devices=150)
    s = characterize(LimitedBackend(chip, safety), SMALL, tmp_path / "c.h5")
    per_batch = 3                                    # 400 devices in batches of <= 150
    c = SMALL
    assert s.commands == per_batch * (2 + c.reset_reads + 2 * c.pulses + c.noise_reads
                                      + c.drift_reads)


class _FailingChip(BackendLayer):
    """A layer over a simulated chip whose n-th read fails (a link dying mid-run)."""

    def __init__(self, inner: ChipBackend, fail_at: int) -> None:
        super().__init__(inner)
        self.fail_at, self.reads, self.safe_calls = fail_at, 0, 0

    def read(self, addresses):
        self.reads += 1
        if self.reads == self.fail_at:
            raise ConnectionError("link lost")
        return self.inner.read(addresses)

    def safe_state(self):
        self.safe_calls += 1


def test_failure_mid_run_keeps_a_readable_file(tmp_path):
    chip = _FailingChip(sim(), fail_at=8)
    out = tmp_path / "c.h5"
    with pytest.raises(ConnectionError):
        characterize(chip, SMALL, out)
    assert chip.safe_calls == 1
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "failed"
        assert "link lost" in f.attrs["status_reason"]
        assert f.attrs["clock"] == "chip"             # the chip's clock, through the layer
    with pytest.raises(ConfigError, match="status is 'failed'"):
        load_characterization(out)
    d = load_characterization(out, allow_incomplete=True)
    assert np.all(np.isfinite(d.reset_g))             # what was measured is there
    assert np.isfinite(d.set_g[0]).all() and np.isnan(d.set_g[-1]).all()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_characterization(tmp_path / "none.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ConfigError, match="not an HDF5 file"):
        load_characterization(bad)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "pcm-hil-run"
    with pytest.raises(ConfigError, match=r"other\.h5: format: .*not a characterisation"):
        load_characterization(other)
    newer = tmp_path / "newer.h5"
    with h5py.File(newer, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = 99
    with pytest.raises(ConfigError, match="format_version: format version 99"):
        load_characterization(newer)


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="devices: must be >= 1"):
        CharacterizeConfig(devices=0)
    with pytest.raises(ConfigError, match="drift_start_s"):
        CharacterizeConfig(drift_start_s=100, drift_end_s=10)
    with pytest.raises(ConfigError, match="amplitude_v must be > 0"):
        CharacterizeConfig(set_amplitude_v=0)
    with pytest.raises(ConfigError, match="asked for 5000 devices, the chip has 4096"):
        characterize(sim(), CharacterizeConfig(devices=5000), tmp_path / "unused.h5")


# --- the round trip: characterise a chip with known parameters, fit, compare ------------------
# Tolerances are about 4x the spread of the estimates over chip seeds (10,000 devices).
JAP_TOLERANCE = {
    "set.m1": (-0.084, 0.004), "set.c1": (0.880, 0.04), "set.a1": (1.40, 0.07),
    "set.m2": (0.091, 0.003), "set.c2": (0.260, 0.025), "set.a2": (2.15, 0.12),
    "set.alpha": (2.6, 0.15),
    "reset.mean_us": (0.100, 0.005), "reset.std_us": (0.010, 0.005),
    "drift.nu_mean": (0.040, 0.001), "drift.nu_std": (0.0, 0.003),
    "read_noise.rel": (0.030, 0.001), "read_noise.abs_us": (0.130, 0.002),
}


def _fitted(model: PcmModel) -> dict:
    out = {}
    for section in ("set", "reset", "drift", "read_noise"):
        for k, v in getattr(model, section).__dict__.items():
            out[f"{section}.{k}"] = v
    return out


def test_round_trip_recovers_the_jap_model(tmp_path):
    chip = open_backend("sim://?model=jap&seed=11&rows=128&cols=128")
    out = tmp_path / "jap.h5"
    characterize(chip, CharacterizeConfig(devices=10_000, pulses=20, seed=11), out)
    result = fit_model(load_characterization(out), FitOptions(name="jap_fit"))
    got = _fitted(result.model)
    report = {k: (round(got[k], 5), v[0]) for k, v in JAP_TOLERANCE.items()}
    for key, (true, tol) in JAP_TOLERANCE.items():
        assert abs(got[key] - true) <= tol, f"{key}: fitted {got[key]:.5g}, true {true} " \
                                            f"(tolerance {tol}); all: {report}"
    assert result.diagnostics["set_converged"]
    assert result.model.g_min_us == 0.1 and result.model.g_max_us == 20.0
    # the written model is loadable, and the chip simulates it
    path = tmp_path / "jap_fit.yaml"
    write_model_yaml(result, path, source="jap.h5")
    loaded = PcmModel.from_yaml(path)
    assert loaded.set.alpha == pytest.approx(result.model.set.alpha, rel=1e-5)
    assert "set.alpha" in path.read_text()                 # standard errors in the header
    again = open_backend(f"sim://?model={path}&seed=2&rows=8&cols=8")
    assert again.info().g_max_us == 20.0


def test_round_trip_recovers_a_drift_spread(tmp_path):
    spec = PcmModel.preset("jap").to_dict()
    spec.update(name="jap_nu")
    spec["drift"].update(nu_mean=0.05, nu_std=0.02)
    import yaml
    model_path = tmp_path / "jap_nu.yaml"
    model_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    chip = open_backend(f"sim://?model={model_path}&seed=5&rows=128&cols=128")
    out = tmp_path / "nu.h5"
    characterize(chip, CharacterizeConfig(devices=10_000, pulses=20, seed=5), out)
    m = fit_model(load_characterization(out)).model
    assert m.drift.nu_mean == pytest.approx(0.05, abs=0.001)
    assert m.drift.nu_std == pytest.approx(0.02, abs=0.002)


# --- the commands ------------------------------------------------------------------------------
def test_cli_characterize_then_fit_model(tmp_path, capsys):
    h5, yml, png, js = (tmp_path / n for n in ("c.h5", "m.yaml", "m.png", "m.json"))
    rc = main(["characterize", "--backend", "sim://?model=jap&seed=2&rows=32&cols=32",
               "-o", str(h5), "--devices", "600", "--pulses", "6", "--reset-reads", "8",
               "--noise-reads", "4", "--drift-reads", "4", "--drift-end-s", "400",
               "--no-progress"])
    assert rc == 0
    assert "characterised 600 devices" in capsys.readouterr().out
    assert main(["characterize", "--backend", "sim://", "-o", str(h5)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    rc = main(["fit-model", str(h5), "-o", str(yml), "--plot", str(png),
               "--summary-json", str(js)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "set.alpha" in text and "read_noise.abs_us" in text
    assert PcmModel.from_yaml(yml).name == "m"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(js.read_text())["model"]["name"] == "m"


def test_cli_characterize_with_station(tmp_path, capsys):
    out = tmp_path / "s.h5"
    rc = main(["characterize", "--station", str(ROOT / "configs" / "station_sim.yaml"),
               "--backend", "sim://?model=jap&seed=4&rows=16&cols=16", "--no-instruments",
               "-o", str(out), "--devices", "100", "--pulses", "3", "--reset-reads", "2",
               "--noise-reads", "2", "--drift-reads", "0", "--no-progress"])
    assert rc == 0
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["safety_json"])["max_pulses_per_device"] == 32
        assert json.loads(f.attrs["provenance_json"])["station"]["name"] == "sim-bench"
    rc = main(["characterize", "--station", str(ROOT / "configs" / "station_sim.yaml"),
               "-o", str(tmp_path / "t.h5"), "--set-amplitude-v", "1.9"])
    assert rc == 1
    assert "safety.set.amplitude_v_max" in capsys.readouterr().err
    assert not (tmp_path / "t.h5").exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["characterize", "-o", str(tmp_path / "x.h5")]) == 1
    assert "--backend" in capsys.readouterr().err
    junk = tmp_path / "junk.h5"
    junk.write_text("x")
    assert main(["fit-model", str(junk), "-o", str(tmp_path / "m.yaml")]) == 1
    assert "junk.h5" in capsys.readouterr().err


@pytest.mark.parametrize("command, phrases", [
    ("characterize", ["--backend", "--station", "drift", "docs/characterization.md"]),
    ("fit-model", ["--plot", "alpha", "nu_std", "sim://?model="]),
])
def test_help_is_thorough(command, phrases, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for p in phrases:
        assert p in text
