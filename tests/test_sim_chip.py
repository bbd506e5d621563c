"""The simulated chip: determinism, state size, limits, errors, state files, building a chip
from its description."""
from dataclasses import replace

import numpy as np
import pytest

from drivers import AddressError, Capability, ChipError, ConfigError, PulseSpec, SafetyLimitError
from drivers.geometry import Geometry
from sim_backend import STATE_BYTES_PER_DEVICE, PcmModel, SimChipSpec, SimulatedChip


def _no_drift_jap():
    m = PcmModel.preset("jap")
    return replace(m, drift=replace(m.drift, nu_mean=0.0))


def test_default_geometry_and_state_size():
    chip = SimulatedChip(seed=1)
    info = chip.info()
    assert info.geometry.n_devices == 1_048_576
    assert chip.state_bytes / info.geometry.n_devices <= STATE_BYTES_PER_DEVICE == 16
    assert info.supports(Capability.MATVEC) and info.supports(Capability.EXACT_READ)


def test_split_and_reordered_batches_are_bit_identical(rng):
    model = _no_drift_jap()
    geo = Geometry(1, 64, 256)
    addr = rng.choice(geo.n_devices, size=5000, replace=False).astype(np.uint32)
    n = rng.integers(0, 6, size=addr.size)
    whole = SimulatedChip(model, geo, seed=42)
    parts = SimulatedChip(model, geo, seed=42)
    for _ in range(3):
        whole.program(addr, n, PulseSpec.set())
        perm = rng.permutation(addr.size)
        for chunk in np.array_split(perm, 7):
            parts.program(addr[chunk], n[chunk], PulseSpec.set())
    assert np.array_equal(whole.true_conductance(addr), parts.true_conductance(addr))
    perm = rng.permutation(addr.size)
    r_whole = whole.read(addr)
    r_parts = np.empty_like(r_whole)
    for chunk in np.array_split(perm, 5):
        r_parts[chunk] = parts.read(addr[chunk])
    assert np.array_equal(r_whole, r_parts)


def test_seed_changes_results():
    geo = Geometry(1, 8, 8)
    a, b = SimulatedChip(seed=1, geometry=geo), SimulatedChip(seed=2, geometry=geo)
    addr = np.arange(64, dtype=np.uint32)
    for c in (a, b):
        c.program(addr, np.full(64, 2, np.int64), PulseSpec.set())
    assert not np.array_equal(a.true_conductance(addr), b.true_conductance(addr))


def test_drift_lowers_reads_over_simulated_time():
    chip = SimulatedChip(geometry=Geometry(1, 100, 100), seed=3)
    addr = np.arange(10_000, dtype=np.uint32)
    chip.program(addr, np.full(addr.size, 5, np.int64), PulseSpec.set())
    g0 = chip.read_exact(addr)
    chip.clock_s += 3860.0 + 38.6
    g1 = chip.read_exact(addr)
    assert np.allclose(g1 / g0, 100 ** -0.04, rtol=1e-3)


def test_address_and_limit_errors_name_the_devices():
    chip = SimulatedChip(geometry=Geometry(1, 4, 4), seed=0)
    with pytest.raises(AddressError, match="outside") as e:
        chip.read(np.array([3, 16, 99]))
    assert list(e.value.devices) == [16, 99] and e.value.command == "READ"
    with pytest.raises(AddressError, match="repeated"):
        chip.program(np.array([1, 2, 1]), np.ones(3, np.int64), PulseSpec.set())
    with pytest.raises(SafetyLimitError, match="pulses per device") as e:
        chip.program(np.array([1, 2]), np.array([1, 1000]), PulseSpec.set())
    assert list(e.value.devices) == [2]
    with pytest.raises(SafetyLimitError, match="amplitude"):
        chip.program(np.array([1]), np.array([1]), PulseSpec.set(amplitude_v=3.0))
    with pytest.raises(ChipError, match="shape"):
        chip.program(np.array([1, 2]), np.array([1]), PulseSpec.set())


def test_stuck_devices_ignore_pulses():
    m = PcmModel.preset("jap")
    m = replace(m, variability=replace(m.variability, stuck_low_fraction=0.01,
                                       stuck_high_fraction=0.01))
    chip = SimulatedChip(m, Geometry(1, 100, 100), seed=4)
    stuck = chip.stuck_devices
    assert 100 < stuck.size < 300
    before = chip.true_conductance(stuck)
    chip.program(stuck, np.full(stuck.size, 3, np.int64), PulseSpec.set())
    assert np.array_equal(chip.true_conductance(stuck), before)


def test_matvec_is_g_times_v_on_ideal_devices():
    chip = SimulatedChip(PcmModel.preset("ideal"), Geometry(1, 8, 8), seed=0)
    block = np.arange(12, dtype=np.uint32).reshape(3, 4)
    chip.program(block.ravel(), np.arange(12) % 3, PulseSpec.set())
    g = chip.read_exact(block.ravel()).reshape(3, 4).astype(np.float64)
    x = np.array([0.1, -0.2, 0.05, 0.3])   # volts
    assert np.allclose(g, (0.1 + 0.5 * (np.arange(12) % 3)).reshape(3, 4), atol=1e-6)
    assert np.allclose(chip.matvec(block, x), g @ x, atol=1e-4)
    # The chip's hard read-voltage limit, and finite inputs only: refused, nothing read
    commands = chip.counters["commands"]
    with pytest.raises(SafetyLimitError, match=r"x\[2\] = -0.6 V exceeds the chip's read_v_max"):
        chip.matvec(block, np.array([0.1, 0.2, -0.6, 0.0]))
    with pytest.raises(ChipError, match=r"x\[1, 0\] is inf"):
        chip.matvec(block, np.array([[0.1], [np.inf], [0.0], [0.0]]))
    assert chip.counters["commands"] == commands


def test_state_file_round_trip_and_refusal(tmp_path):
    geo = Geometry(1, 16, 16)
    a = SimulatedChip(geometry=geo, seed=5)
    addr = np.arange(100, dtype=np.uint32)
    a.program(addr, np.full(100, 4, np.int64), PulseSpec.set())
    a.read(addr)
    path = tmp_path / "chip.npz"
    a.save_state(path)
    b = SimulatedChip(geometry=geo, seed=5)
    b.load_state(path)
    a.program(addr, np.ones(100, np.int64), PulseSpec.set())
    b.program(addr, np.ones(100, np.int64), PulseSpec.set())
    assert np.array_equal(a.read(addr), b.read(addr))
    with pytest.raises(ConfigError, match="seed"):
        SimulatedChip(geometry=geo, seed=6).load_state(path)
    (tmp_path / "junk.npz").write_bytes(b"not a state file")
    with pytest.raises(ConfigError, match="not a simulated-chip state file"):
        b.load_state(tmp_path / "junk.npz")


# --- building a chip from a description --------------------------------------------------------
def test_spec_builds_the_chip_it_describes():
    spec = SimChipSpec(model="pcm_like", seed=9, arrays=2, rows=8, cols=16)
    a, b = spec.build(), spec.build()
    assert a.geometry == spec.geometry == Geometry(2, 8, 16)
    assert a.model == PcmModel.preset("pcm_like") and a.seed == 9
    addr = np.arange(40, dtype=np.uint32)
    assert np.array_equal(a.read(addr), b.read(addr))   # the same description, the same chip
    other = SimChipSpec(model="pcm_like", seed=10, arrays=2, rows=8, cols=16).build()
    assert not np.array_equal(other.read(addr), a.read(addr))
    with pytest.raises(ConfigError, match="neither a preset"):
        SimChipSpec(model="no-such-model").build()


def test_commands_executed_counts_every_command_and_advance_clock_returns_the_clock():
    chip = SimulatedChip(geometry=Geometry(1, 4, 4), seed=0)
    addr = np.arange(4, dtype=np.uint32)
    chip.read(addr)
    chip.program(addr, np.ones(4, np.int64), PulseSpec.set())
    chip.program_read(addr, np.ones(4, np.int64), PulseSpec.set())   # two commands
    chip.matvec(addr.reshape(2, 2), np.array([0.1, 0.2]))
    assert chip.commands_executed == 5
    t = chip.clock_s
    assert chip.advance_clock(10.0) == chip.clock_s == t + 10.0
    assert chip.commands_executed == 5   # waiting is not a command
