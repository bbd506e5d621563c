"""The simulated chip: determinism, state size, limits, errors, state files, program_read
against program() + read(), building a chip from its description."""
import zlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# --- program_read: one pass, exactly program() then read() -----------------------------------
PR_GEO = Geometry(1, 64, 64)   # 4,096 devices: room for the large-batch path
_SPREAD = replace(PcmModel.preset("jap"), variability=replace(
    PcmModel.preset("jap").variability, set_mean_rel_std=0.2, stuck_low_fraction=0.02,
    stuck_high_fraction=0.02))
PR_MODELS = {"jap": PcmModel.preset("jap"), "jap+spread+stuck": _SPREAD,
             "pcm_like": PcmModel.preset("pcm_like"), "ideal": PcmModel.preset("ideal")}


def _chip_state(chip, path):
    """Everything a chip holds, through its public state file, counters and clock."""
    chip.save_state(path)
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    return arrays, dict(chip.counters), chip.clock_s


def _assert_program_read_is_program_then_read(model, seed, batches, tmp_path):
    """`batches`: (addresses, n_pulses, pulse, idle seconds before it) in order. Chip `a`
    gets program_read(), twin `b` program() then read(): values bit for bit, then the whole
    chip state, are the same after every batch."""
    a = SimulatedChip(model, PR_GEO, seed=seed)
    b = SimulatedChip(model, PR_GEO, seed=seed)
    for i, (addr, n, pulse, idle_s) in enumerate(batches):
        for chip in (a, b):
            chip.advance_clock(idle_s)
        got = a.program_read(addr, n, pulse)
        b.program(addr, n, pulse)
        want = b.read(addr)
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"batch {i}"
    sa, sb = _chip_state(a, tmp_path / "a.npz"), _chip_state(b, tmp_path / "b.npz")
    assert sa[0].keys() == sb[0].keys()
    for k in sa[0]:
        assert np.array_equal(sa[0][k], sb[0][k]), k
    assert sa[1:] == sb[1:]   # counters (commands, pulses, reads) and the clock


def _batch(rng, size, lo, hi, pulse=PulseSpec.set(), idle_s=0.0):
    addr = rng.choice(PR_GEO.n_devices, size=size, replace=False).astype(np.uint32)
    return addr, rng.integers(lo, hi + 1, size=size), pulse, idle_s


@pytest.mark.parametrize("model", sorted(PR_MODELS))
@pytest.mark.parametrize("shape", [
    "one pulse each",            # the fast path, one draw per device
    "a few pulses each",         # fast path, every device drawn at every pulse index
    "large, several pulses",     # fast path, later pulses drawn for live devices alone
    "some zero counts",          # general path
    "reset",                     # general path
    "empty",
])
def test_program_read_equals_program_then_read(model, shape, tmp_path):
    rng = np.random.default_rng(zlib.crc32(f"{model}/{shape}".encode()))
    first = [_batch(rng, 200, 1, 3)]   # devices with a history: SET counts, reads
    batches = {
        "one pulse each": [_batch(rng, 37, 1, 1), _batch(rng, 37, 1, 1, idle_s=100.0)],
        "a few pulses each": [_batch(rng, 50, 1, 6), _batch(rng, 9, 2, 2)],
        "large, several pulses": [_batch(rng, 1500, 1, 5), _batch(rng, 2000, 3, 4)],
        "some zero counts": [_batch(rng, 60, 0, 3), _batch(rng, 1500, 0, 5)],
        "reset": [_batch(rng, 40, 1, 2, PulseSpec.reset()), _batch(rng, 40, 1, 1)],
        "empty": [_batch(rng, 0, 1, 1), _batch(rng, 0, 1, 1, PulseSpec.reset())],
    }[shape]
    _assert_program_read_is_program_then_read(PR_MODELS[model], 11, first + batches, tmp_path)


@given(model=st.sampled_from(sorted(PR_MODELS)), seed=st.integers(0, 2**32 - 1),
       plan=st.lists(st.tuples(st.one_of(st.integers(0, 48), st.integers(1000, 1800)),
                               st.integers(0, 2), st.integers(1, 7),
                               st.sampled_from([PulseSpec.set(), PulseSpec.set(1.2, 80.0),
                                                PulseSpec.reset()]),
                               st.sampled_from([0.0, 0.5, 500.0]),
                               st.integers(0, 2**32 - 1)),
                     min_size=1, max_size=4))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_program_read_equals_program_then_read_for_any_batches(model, seed, plan, tmp_path):
    batches = [_batch(np.random.default_rng(s), size, min(lo, hi), hi, pulse, idle)
               for size, lo, hi, pulse, idle, s in plan]
    _assert_program_read_is_program_then_read(PR_MODELS[model], seed, batches, tmp_path)


def test_program_read_refuses_what_program_refuses_and_changes_nothing(tmp_path):
    chip = SimulatedChip(geometry=PR_GEO, seed=2)
    before = _chip_state(chip, tmp_path / "before.npz")
    for addr, n, pulse, err in [
            (np.array([1, 2, 1]), np.ones(3), PulseSpec.set(), AddressError),
            (np.array([1, 2]), np.array([1, 256]), PulseSpec.set(), SafetyLimitError),
            (np.array([1]), np.array([1]), PulseSpec.set(amplitude_v=2.5), SafetyLimitError),
            (np.array([PR_GEO.n_devices]), np.array([1]), PulseSpec.set(), AddressError)]:
        with pytest.raises(err):
            chip.program_read(addr, n, pulse)
    after = _chip_state(chip, tmp_path / "after.npz")
    assert all(np.array_equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]


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
