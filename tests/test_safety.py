"""Safety limits: the station's guard (LimitedBackend) and the chip's own hard limits.

The guard wraps a real simulated chip; "never reached the chip" is checked on the chip's
whole state (its state file, counters and clock), not on a stand-in.
"""
from __future__ import annotations

import numpy as np
import pytest

from drivers.abilities import (ClockedBackend, GuardedBackend, StatefulBackend, find_ability)
from drivers.errors import SafetyLimitError
from drivers.fpga import FpgaChip
from drivers.geometry import Geometry
from drivers.pulse import PulseSpec
from drivers.safety import (HardLimits, LimitedBackend, PulseLimits, SafetyLimits,
                            check_pulse_shape)
from sim_backend.emulator import EmulatorServer
from sim_backend.firmware import Firmware
from sim_backend.sim_chip import SimLimits, SimulatedChip

GEO = Geometry(1, 16, 16)
LIMITS = SafetyLimits(set=PulseLimits(1.5, 200.0), reset=PulseLimits(3.0, 100.0),
                      max_pulses_per_device=4, max_pulses_per_step=60, max_batch_devices=32,
                      read_v_max=0.3)


def chip(seed: int = 5) -> SimulatedChip:
    return SimulatedChip(geometry=GEO, seed=seed)


def state_of(c: SimulatedChip, path) -> tuple:
    c.save_state(path)
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    return arrays, dict(c.counters), c.clock_s


def same_state(a: tuple, b: tuple) -> bool:
    return a[0].keys() == b[0].keys() and all(np.array_equal(a[0][k], b[0][k])
                                              for k in a[0]) and a[1:] == b[1:]


A10 = np.arange(10, dtype=np.uint32)
ONES = np.ones(10, np.int64)

#: (what is sent, the limit its message must name)
REFUSED = {
    "SET amplitude": (lambda g: g.program(A10, ONES, PulseSpec.set(1.6, 50)),
                      "safety.set.amplitude_v_max = 1.5 V"),
    "SET width": (lambda g: g.program(A10, ONES, PulseSpec.set(1.0, 250)),
                  "safety.set.width_ns_max = 200.0 ns"),
    "RESET amplitude": (lambda g: g.program(A10, ONES, PulseSpec.reset(3.5, 50)),
                        "safety.reset.amplitude_v_max = 3.0 V"),
    "RESET width": (lambda g: g.program(A10, ONES, PulseSpec.reset(2.5, 150)),
                    "safety.reset.width_ns_max = 100.0 ns"),
    "pulses per device": (lambda g: g.program(A10, np.full(10, 5), PulseSpec.set()),
                          "safety.max_pulses_per_device"),
    "program batch": (lambda g: g.program(np.arange(33), np.ones(33), PulseSpec.set()),
                      "safety.max_batch_devices = 32"),
    "pulses per step": (lambda g: g.program(np.arange(20), np.full(20, 4), PulseSpec.set()),
                        "safety.max_pulses_per_step = 60"),
    "program_read pulse": (lambda g: g.program_read(A10, ONES, PulseSpec.set(1.6, 50)),
                           "safety.set.amplitude_v_max"),
    "program_read batch": (lambda g: g.program_read(np.arange(40), np.ones(40),
                                                    PulseSpec.set()),
                           "safety.max_batch_devices"),
    "read batch": (lambda g: g.read(np.arange(33)), "safety.max_batch_devices = 32"),
    "matvec block": (lambda g: g.matvec(np.arange(36).reshape(6, 6), np.zeros(6)),
                     "safety.max_batch_devices = 32"),
    "matvec voltage": (lambda g: g.matvec(np.arange(6).reshape(2, 3),
                                          np.array([0.1, 0.31, 0.0])),
                       "safety.read_v_max = 0.3 V"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_each_limit_refuses_before_the_chip_sees_the_command(case, tmp_path):
    send, limit = REFUSED[case]
    inner = chip()
    inner.program(A10, ONES, PulseSpec.set())   # a chip with some history
    guard = LimitedBackend(inner, LIMITS)
    before = state_of(inner, tmp_path / "before.npz")
    with pytest.raises(SafetyLimitError, match=limit.replace(".", r"\.")):
        send(guard)
    assert same_state(before, state_of(inner, tmp_path / "after.npz"))
    assert guard.refused == 1


def test_commands_within_the_limits_pass_unchanged(tmp_path):
    inner, twin = chip(), chip()
    guard = LimitedBackend(inner, LIMITS)
    a = np.arange(32, dtype=np.uint32)
    n = np.arange(32) % 2   # 16 pulses in the command, 1 per device at most
    for be in (guard, twin):
        be.program(a, n, PulseSpec.set(1.5, 200.0))   # exactly at the limits
    assert np.array_equal(guard.read(a), twin.read(a))
    assert np.array_equal(guard.program_read(a[:8], np.full(8, 4), PulseSpec.set()),
                          twin.program_read(a[:8], np.full(8, 4), PulseSpec.set()))
    x = np.array([0.3, -0.3, 0.0])
    assert np.array_equal(guard.matvec(a[:6].reshape(2, 3), x),
                          twin.matvec(a[:6].reshape(2, 3), x))
    assert guard.refused == 0
    assert same_state(state_of(inner, tmp_path / "a.npz"), state_of(twin, tmp_path / "b.npz"))


def test_the_refused_counter_counts_every_refusal():
    guard = LimitedBackend(chip(), LIMITS)
    for case in ("SET amplitude", "read batch", "matvec voltage"):
        with pytest.raises(SafetyLimitError):
            REFUSED[case][0](guard)
    guard.read(A10)
    assert guard.refused == 3


def test_preflight_checks_are_the_guards_checks_and_send_nothing(tmp_path):
    """check_* answer "would this pass" with the guard's own rules; no command, no count."""
    inner = chip()
    guard = LimitedBackend(inner, LIMITS)
    before = state_of(inner, tmp_path / "before.npz")
    guard.check_program(A10, ONES, PulseSpec.set())
    guard.check_read(np.arange(32))
    guard.check_matvec(np.arange(6).reshape(2, 3), np.array([0.3, 0.0, -0.3]))
    with pytest.raises(SafetyLimitError, match=r"safety\.max_pulses_per_step"):
        guard.check_program(np.arange(20), np.full(20, 4), PulseSpec.set())
    with pytest.raises(SafetyLimitError, match=r"safety\.max_batch_devices"):
        guard.check_read(np.arange(33))
    with pytest.raises(SafetyLimitError, match=r"safety\.read_v_max"):
        guard.check_matvec(np.arange(6).reshape(2, 3), np.array([0.4, 0.0, 0.0]))
    assert guard.refused == 0
    assert same_state(before, state_of(inner, tmp_path / "after.npz"))


def test_abilities_of_the_chip_are_found_through_the_guard(tmp_path):
    inner = chip()
    guard = LimitedBackend(inner, LIMITS)
    assert find_ability(guard, GuardedBackend) is guard
    assert guard.station_limits is LIMITS
    assert find_ability(guard, ClockedBackend) is inner
    assert find_ability(guard, StatefulBackend) is inner
    assert not hasattr(guard, "clock_s")   # found, never forwarded


def test_read_exact_and_safe_state_pass_unguarded():
    """Neither touches a device's state: the guard has nothing to refuse."""
    inner, twin = chip(), chip()
    guard = LimitedBackend(inner, LIMITS)
    assert np.array_equal(guard.read_exact(np.arange(100)), twin.read_exact(np.arange(100)))
    guard.safe_state()
    assert guard.refused == 0


# --- the chip's own hard limits ---------------------------------------------------------------
def test_hard_limits_round_trip_the_hello_dictionary():
    sim = SimLimits()
    assert isinstance(sim, HardLimits)
    d = chip().info().hard_limits
    assert d == sim.as_dict() and list(d) == ["max_pulses_per_device", "set_amplitude_v_max",
                                             "reset_amplitude_v_max", "width_ns_max",
                                             "read_v_max"]
    assert HardLimits.from_dict(d) == HardLimits(255, 2.0, 4.0, 10_000.0, 0.5)
    # a newer firmware's unknown key is ignored; a missing one is no limit
    partial = HardLimits.from_dict({"set_amplitude_v_max": 1.8, "future_limit": 1.0})
    assert partial.as_dict() == {"set_amplitude_v_max": 1.8}
    partial.check_pulse(PulseSpec.reset(9.0, 1e6))   # no reset or width limit: passes


@pytest.mark.parametrize("pulse, message", [
    (PulseSpec.set(2.5, 50), "SET amplitude 2.5 V exceeds the chip's set_amplitude_v_max "
                             "= 2.0 V"),
    (PulseSpec.reset(4.5, 50), "RESET amplitude 4.5 V exceeds the chip's "
                               "reset_amplitude_v_max = 4.0 V"),
    (PulseSpec.set(1.0, 20_000), "SET width 20000 ns exceeds the chip's width_ns_max "
                                 "= 10000.0 ns"),
])
def test_the_simulated_chip_and_the_driver_refuse_a_pulse_with_one_message(pulse, message):
    """One rule for the chip's limits: in-process, and in the driver before anything is sent
    to the firmware (which would refuse it too)."""
    sim = chip()
    with pytest.raises(SafetyLimitError, match=message) as e:
        sim.program(A10, ONES, pulse)
    assert e.value.command == f"PROGRAM_{pulse.kind.name}"
    assert sim.commands_executed == 0
    server = EmulatorServer(Firmware(chip()), listen=("127.0.0.1", 0)).start()
    try:
        with FpgaChip(server.url, timeout_s=2.0) as fpga:
            sent = dict(fpga.stats)
            with pytest.raises(SafetyLimitError, match=message):
                fpga.program(A10, ONES, pulse)
            with pytest.raises(SafetyLimitError, match=message):
                fpga.program_read(A10, ONES, pulse)
            assert fpga.stats == sent
        assert server.firmware.chip.commands_executed == 0
    finally:
        server.stop()


def test_pulse_counts_above_the_chips_limit_name_it():
    sim = SimulatedChip(geometry=GEO, seed=0, limits=SimLimits(max_pulses_per_device=3))
    with pytest.raises(SafetyLimitError,
                       match=r"the chip's max_pulses_per_device\) must be in 0\.\.3") as e:
        sim.program(A10, np.array([0, 1, 2, 3, 4, 1, 1, 1, 1, 1]), PulseSpec.set())
    assert list(e.value.devices) == [4]


def test_check_pulse_shape_names_whose_limit():
    with pytest.raises(SafetyLimitError, match=r"^\[PROGRAM_SET\] SET amplitude 1\.1 V exceeds "
                                               r"the bench's a = 1\.0 V$"):
        check_pulse_shape(PulseSpec.set(1.1, 10), 1.0, None, amplitude_limit="the bench's a",
                          width_limit="w")
    with pytest.raises(SafetyLimitError, match=r"width 11\.0 ns exceeds w = 10\.0 ns"):
        check_pulse_shape(PulseSpec.set(1.0, 11.0), None, 10.0, amplitude_limit="a",
                          width_limit="w", command="PROGRAM_READ")
    check_pulse_shape(PulseSpec.set(1.0, 10.0), 1.0, 10.0, amplitude_limit="a",
                      width_limit="w")   # at the limits: allowed
