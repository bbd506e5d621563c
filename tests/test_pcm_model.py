"""The JAP model against PAPER.md's Monte-Carlo table, and the other presets."""
from dataclasses import replace

import numpy as np
import pytest

from drivers import ConfigError, PulseSpec
from sim_backend import PcmModel, SimulatedChip
from drivers.geometry import Geometry

# PAPER.md §3: mean/std of G after n SET pulses from RESET (1e5 devices, no read noise).
TABLE_N = [1, 2, 3, 5, 10, 15, 20]
TABLE_MEAN = [2.06, 3.44, 4.47, 5.92, 7.83, 8.81, 9.41]
TABLE_STD = [1.52, 1.98, 2.19, 2.37, 2.46, 2.56, 2.67]


def test_jap_monte_carlo_matches_paper_table():
    chip = SimulatedChip(PcmModel.preset("jap"), Geometry(1, 100, 1000), seed=11)
    addr = np.arange(100_000, dtype=np.uint32)
    chip.program(addr, np.ones(addr.size, np.int64), PulseSpec.reset())
    means, stds = {}, {}
    for n in range(1, 21):
        chip.program(addr, np.ones(addr.size, np.int64), PulseSpec.set())
        g = chip.true_conductance(addr).astype(np.float64)
        means[n], stds[n] = g.mean(), g.std()
    for n, m, s in zip(TABLE_N, TABLE_MEAN, TABLE_STD):
        # standard error of the mean is ~0.008 µS; allow 0.05 µS for rounding in the table
        assert means[n] == pytest.approx(m, abs=0.05), n
        assert stds[n] == pytest.approx(s, abs=0.05), n


@pytest.mark.parametrize("devices", [40, 1000])   # both ways of _set_levels: dense, live only
def test_multi_pulse_command_equals_single_pulses(devices):
    """n pulses in one command follow the same draws as n commands of one pulse."""
    model = PcmModel.preset("jap")
    a = SimulatedChip(model, Geometry(1, 10, 100), seed=3)
    b = SimulatedChip(model, Geometry(1, 10, 100), seed=3)
    addr = np.arange(devices, dtype=np.uint32)
    n = np.arange(devices) % 5
    a.program(addr, n, PulseSpec.set())
    for k in range(5):
        sel = n > k
        b.program(addr[sel], np.ones(sel.sum(), np.int64), PulseSpec.set())
    assert np.array_equal(a.true_conductance(addr), b.true_conductance(addr))


def test_reset_level_distribution():
    chip = SimulatedChip(PcmModel.preset("jap"), Geometry(1, 100, 500), seed=5)
    addr = np.arange(50_000, dtype=np.uint32)
    chip.program(addr, np.full(addr.size, 3, np.int64), PulseSpec.set())
    chip.program(addr, np.ones(addr.size, np.int64), PulseSpec.reset())
    g = chip.true_conductance(addr)
    assert g.min() >= 0.1  # clipped at g_min
    # N(0.1, 0.01) clipped at 0.1: half the devices sit exactly at g_min
    assert np.mean(g == np.float32(0.1)) == pytest.approx(0.5, abs=0.02)


def test_drift_follows_power_law():
    m = PcmModel.preset("jap")
    f = m.drift_factor(np.array([10.0, 38.6, 386.0, 3860.0]), m.drift.nu_mean)
    assert f[0] == 1.0 and f[1] == 1.0
    assert f[2] == pytest.approx(10 ** -0.04)
    assert f[3] == pytest.approx(100 ** -0.04)


def test_read_noise_statistics():
    model = replace(PcmModel.preset("jap"),
                    drift=replace(PcmModel.preset("jap").drift, nu_mean=0.0))
    chip = SimulatedChip(model, Geometry(1, 100, 500), seed=9)
    addr = np.arange(50_000, dtype=np.uint32)
    chip.program(addr, np.full(addr.size, 5, np.int64), PulseSpec.set())
    g = chip.true_conductance(addr).astype(np.float64)
    r = chip.read(addr).astype(np.float64)
    z = (r - g) / (0.03 * g + 0.13)
    assert abs(z.mean()) < 0.02 and z.std() == pytest.approx(1.0, abs=0.02)
    # a second read draws fresh noise
    r2 = chip.read(addr).astype(np.float64)
    assert np.corrcoef(r - g, r2 - g)[0, 1] < 0.02


def test_ideal_preset_is_exact():
    chip = SimulatedChip(PcmModel.preset("ideal"), Geometry(1, 4, 4), seed=0)
    addr = np.arange(16, dtype=np.uint32)
    chip.program(addr, np.ones(16, np.int64), PulseSpec.reset())
    chip.program(addr, np.arange(16) % 4, PulseSpec.set())
    expect = (0.1 + 0.5 * (np.arange(16) % 4)).astype(np.float32)
    assert np.allclose(chip.read(addr), expect, atol=1e-3)  # 16-bit ADC step


def test_presets_and_bad_model_files(tmp_path):
    assert {"jap", "ideal", "pcm_like"} <= set(PcmModel.presets())
    with pytest.raises(ConfigError, match="unknown device model preset"):
        PcmModel.preset("nope")
    bad = tmp_path / "m.yaml"
    bad.write_text("name: x\nset:\n  alfa: 2.6\n")
    with pytest.raises(ConfigError, match=r"set\.alfa: unknown key"):
        PcmModel.from_yaml(bad)
    bad.write_text("name: x\ng_min_us: 5\ng_max_us: 1\n")
    with pytest.raises(ConfigError, match="g_min_us < g_max_us"):
        PcmModel.from_yaml(bad)
    with pytest.raises(ConfigError, match="neither a preset"):
        PcmModel.load(str(tmp_path / "missing.yaml"))


def test_model_yaml_round_trip(tmp_path):
    import yaml
    m = PcmModel.preset("pcm_like")
    p = tmp_path / "fitted.yaml"
    p.write_text(yaml.safe_dump(m.to_dict()))
    assert PcmModel.from_yaml(p) == m
