"""Optional backend abilities: which backends have which, and find_ability through layers.

Real backends throughout: the simulated chip, and the FPGA driver against the firmware
emulator over TCP.
"""
from __future__ import annotations

import numpy as np
import pytest

from drivers.abilities import (ABILITIES, ABILITY_CAPABILITY, AdcReadout, ClockedBackend,
                               GuardedBackend, SequencedBackend, StatefulBackend,
                               find_ability, has_ability)
from drivers.backend import Capability, ChipBackend
from drivers.fpga import FpgaChip
from drivers.geometry import Geometry
from drivers.layers import BackendLayer
from drivers.pulse import PulseSpec
from drivers.safety import LimitedBackend, PulseLimits, SafetyLimits
from sim_backend.emulator import EmulatorServer
from sim_backend.firmware import Firmware
from sim_backend.sim_chip import SimulatedChip

GEO = Geometry(1, 16, 16)
ADDR = np.arange(20, dtype=np.uint32)
STATION = SafetyLimits(set=PulseLimits(1.5, 1000), reset=PulseLimits(3.0, 100),
                       max_pulses_per_device=8, max_pulses_per_step=1000,
                       max_batch_devices=256)


def sim(seed: int = 3) -> SimulatedChip:
    return SimulatedChip(geometry=GEO, seed=seed)


@pytest.fixture
def emulator():
    """The firmware emulator over TCP on a simulated chip, with the firmware's own abilities."""
    server = EmulatorServer(Firmware(sim()), listen=("127.0.0.1", 0)).start()
    yield server
    server.stop()


@pytest.fixture
def fpga(emulator):
    with FpgaChip(emulator.url, timeout_s=2.0) as chip:
        yield chip


def test_the_simulated_chip_has_a_clock_and_a_saved_state_only():
    chip = sim()
    assert find_ability(chip, ClockedBackend) is chip
    assert find_ability(chip, StatefulBackend) is chip
    for ability in (SequencedBackend, GuardedBackend, AdcReadout):
        assert find_ability(chip, ability) is None


def test_the_fpga_driver_numbers_commands_and_reports_its_adc(fpga, emulator):
    assert find_ability(fpga, SequencedBackend) is fpga
    assert find_ability(fpga, AdcReadout) is fpga
    assert fpga.adc_full_scale_us == emulator.firmware.full_scale_us
    # a simulator behind the firmware: its clock over the wire, but no state file on the host
    assert find_ability(fpga, ClockedBackend) is fpga
    assert fpga.info().supports(Capability.STATE_FILE)
    assert find_ability(fpga, StatefulBackend) is None


def test_next_wire_seq_is_the_number_the_next_command_goes_under(fpga, emulator):
    seq = find_ability(fpga, SequencedBackend)
    n = seq.next_wire_seq()
    fpga.program(ADDR, np.ones(ADDR.size, np.int64), PulseSpec.set())
    assert fpga.status().last_seq == n                   # the firmware executed it as n
    assert seq.next_wire_seq() == (fpga.last_seq + 1) & 0xFFFFFFFF


def test_use_seq_resends_under_a_number_the_firmware_remembers(fpga, emulator):
    """The point of the ability: a command re-sent under its number is not applied twice."""
    seq = find_ability(LimitedBackend(fpga, STATION), SequencedBackend)
    assert seq is fpga
    n = seq.next_wire_seq()
    fpga.program(ADDR, np.full(ADDR.size, 2, np.int64), PulseSpec.set())
    pulses = emulator.firmware.chip.counters["set_pulses"]
    seq.use_seq(n)
    assert seq.next_wire_seq() == n
    fpga.program(ADDR, np.full(ADDR.size, 2, np.int64), PulseSpec.set())
    assert emulator.firmware.chip.counters["set_pulses"] == pulses == 2 * ADDR.size
    assert emulator.firmware.counters["repeats_answered"] == 1


def test_an_ability_counts_only_where_the_chip_advertises_its_capability():
    """FpgaChip has advance_clock for every chip; only a chip listing SIM_CLOCK answers it."""
    server = EmulatorServer(Firmware(sim(), capabilities=frozenset({"matvec"})),
                            listen=("127.0.0.1", 0)).start()
    try:
        with FpgaChip(server.url, timeout_s=2.0) as chip:
            assert not chip.info().supports(Capability.SIM_CLOCK)
            assert find_ability(chip, ClockedBackend) is None
            assert find_ability(chip, SequencedBackend) is chip   # needs no capability
    finally:
        server.stop()
    assert ABILITY_CAPABILITY[ClockedBackend] is Capability.SIM_CLOCK
    assert ABILITY_CAPABILITY[StatefulBackend] is Capability.STATE_FILE


def test_finding_an_ability_sends_nothing(fpga):
    """clock_s is a round trip on the driver: looking for the clock must not make one."""
    before = {k: dict(v) for k, v in fpga.stats.items()}
    for ability in ABILITIES:
        find_ability(LimitedBackend(fpga, STATION), ability)
    assert fpga.stats == before


def test_the_simulated_clock_through_the_wire_is_the_emulated_chips(fpga, emulator):
    clock = find_ability(LimitedBackend(fpga, STATION), ClockedBackend)
    assert clock.advance_clock(12.5) == clock.clock_s == emulator.firmware.chip.clock_s


def test_abilities_are_found_through_every_layer_and_the_outermost_wins():
    chip = sim()
    inner_guard = LimitedBackend(chip, STATION)
    stack = LimitedBackend(BackendLayer(inner_guard), STATION)
    assert find_ability(stack, StatefulBackend) is chip
    assert find_ability(stack, ClockedBackend) is chip
    assert find_ability(stack, GuardedBackend) is stack
    assert find_ability(stack.inner, GuardedBackend) is inner_guard
    assert find_ability(stack, SequencedBackend) is None


def test_a_backend_that_is_not_a_layer_hides_what_it_wraps():
    """Only BackendLayer.inner is walked: a wrapper must declare itself a layer to expose
    the abilities below it."""

    class Opaque(ChipBackend):   # holds a chip in an attribute named inner, but no layer
        def __init__(self, chip):
            self.inner = chip

        def info(self):
            return self.inner.info()

        def read(self, addresses):
            return self.inner.read(addresses)

        def program(self, addresses, n_pulses, pulse):
            self.inner.program(addresses, n_pulses, pulse)

        def safe_state(self):
            self.inner.safe_state()

        def close(self):
            self.inner.close()

    assert find_ability(Opaque(sim()), StatefulBackend) is None


def test_stateful_ability_saves_and_restores_through_the_stack(tmp_path):
    a = sim(seed=8)
    state = find_ability(LimitedBackend(a, STATION), StatefulBackend)
    a.program(ADDR, np.full(ADDR.size, 3, np.int64), PulseSpec.set())
    assert state.commands_executed == 1
    state.save_state(tmp_path / "chip.npz")
    b = sim(seed=8)
    find_ability(BackendLayer(b), StatefulBackend).load_state(tmp_path / "chip.npz")
    assert np.array_equal(a.read(ADDR), b.read(ADDR))


def test_only_declared_abilities_can_be_looked_for():
    with pytest.raises(TypeError, match="not a backend ability"):
        find_ability(sim(), LimitedBackend)
    with pytest.raises(TypeError, match="not a backend ability"):
        has_ability(sim(), int)
