"""ChipIO: every command counted once and reported once, with its write-ahead first.

Real backends (the simulated chip; the FPGA driver against the emulator over TCP) and a
recorder that keeps what it is told, so the order and content of the reports are checked.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest

from drivers.errors import SafetyLimitError
from drivers.fpga import FpgaChip
from drivers.geometry import Geometry
from drivers.pulse import PulseSpec
from drivers.safety import LimitedBackend, PulseLimits, SafetyLimits
from hil.chip_io import ChipIO, IoCounters, wire_seq_of
from hil.recorder import Recorder
from sim_backend.emulator import EmulatorServer
from sim_backend.firmware import Firmware
from sim_backend.sim_chip import SimulatedChip

GEO = Geometry(1, 32, 32)
STATION = SafetyLimits(set=PulseLimits(1.5, 1000), reset=PulseLimits(3.0, 100),
                       max_pulses_per_device=8, max_pulses_per_step=10_000,
                       max_batch_devices=1024)


class Trace(Recorder):
    """Keeps (hook, step, purpose, wire_seq, addresses) of every chip report."""

    def __init__(self) -> None:
        self.events: List[Tuple] = []

    def before_read(self, step, addresses, purpose, *, wire_seq=-1):
        self.events.append(("before_read", step, purpose, wire_seq, addresses.copy()))

    def on_read(self, step, addresses, values, purpose):
        self.events.append(("on_read", step, purpose, values.copy(), addresses.copy()))

    def before_program(self, step, addresses, n_pulses, pulse, purpose, *, wire_seq=-1):
        self.events.append(("before_program", step, purpose, wire_seq, addresses.copy()))

    def on_program(self, step, addresses, n_pulses, pulse, purpose):
        self.events.append(("on_program", step, purpose, int(n_pulses.sum()),
                            addresses.copy()))

    def on_matvec(self, step, block, x, values):
        self.events.append(("on_matvec", step, None, values.copy(), block.copy()))

    def hooks(self) -> List[str]:
        return [e[0] for e in self.events]


def sim(seed: int = 2) -> SimulatedChip:
    return SimulatedChip(geometry=GEO, seed=seed)


@pytest.fixture
def fpga():
    server = EmulatorServer(Firmware(sim()), listen=("127.0.0.1", 0)).start()
    try:
        with FpgaChip(server.url, timeout_s=2.0) as chip:
            yield chip, server
    finally:
        server.stop()


def test_counters_count_what_was_sent():
    chip = sim()
    io = ChipIO(chip)
    a = np.arange(100, dtype=np.uint32)
    io.program(a, np.ones(100, np.int64), PulseSpec.reset(), "init_reset")
    n = np.arange(100) % 4                         # 25 devices get no pulse
    io.program(a, n, PulseSpec.set(), "init_set")
    io.read(a[:60], "full_read")
    io.program_read(a[:10], np.full(10, 3), PulseSpec.set(), "update", "readback")
    assert io.counters == IoCounters(
        program_commands=3, read_commands=2, set_pulses=int(n.sum()) + 30, reset_pulses=100,
        devices_read=70, devices_pulsed=100 + 75 + 10, largest_batch=100,
        most_pulses_per_device=3)
    assert chip.counters["set_pulses"] == io.counters.set_pulses
    assert chip.counters["reset_pulses"] == io.counters.reset_pulses
    assert chip.counters["reads"] == io.counters.devices_read


def test_every_command_is_written_ahead_then_reported_done():
    chip, twin = sim(), sim()
    trace = Trace()
    io = ChipIO(chip, trace)
    a = np.arange(8, dtype=np.uint32)
    io.step = 4
    io.program(a, np.ones(8, np.int64), PulseSpec.set(), "update")
    values = io.read(a, "readback")
    io.step = 5
    both = io.program_read(a[:3], np.ones(3, np.int64), PulseSpec.set(), "update", "readback")
    block = a.reshape(2, 4)
    sums = io.matvec(block, np.array([0.1, 0.0, -0.1, 0.2]))
    assert trace.hooks() == ["before_program", "on_program", "before_read", "on_read",
                             "before_program", "before_read", "on_program", "on_read",
                             "on_matvec"]
    assert [e[1] for e in trace.events] == [4, 4, 4, 4, 5, 5, 5, 5, 5]
    assert [e[2] for e in trace.events[:8]] == ["update", "update", "readback", "readback",
                                                "update", "readback", "update", "readback"]
    # what was reported is what the chip answered: a twin sent the same commands agrees
    twin.program(a, np.ones(8, np.int64), PulseSpec.set())
    assert np.array_equal(values, twin.read(a)) and np.array_equal(trace.events[3][3], values)
    assert np.array_equal(trace.events[7][3], both)
    assert np.array_equal(both, twin.program_read(a[:3], np.ones(3, np.int64), PulseSpec.set()))
    assert np.array_equal(trace.events[8][3], sums)


def test_an_empty_program_batch_is_neither_sent_nor_reported():
    chip = sim()
    trace = Trace()
    io = ChipIO(chip, trace)
    io.program(np.zeros(0, np.uint32), np.zeros(0, np.int64), PulseSpec.set(), "update")
    assert chip.commands_executed == 0 and trace.events == []
    assert io.counters == IoCounters()


def test_a_refused_command_is_written_ahead_but_never_reported_done():
    chip = sim()
    trace = Trace()
    io = ChipIO(LimitedBackend(chip, STATION), trace)
    with pytest.raises(SafetyLimitError):
        io.program(np.arange(4), np.full(4, 9), PulseSpec.set(), "update")
    assert trace.hooks() == ["before_program"]
    assert io.counters == IoCounters() and chip.commands_executed == 0


def test_write_aheads_carry_the_wire_seq_each_command_goes_out_under(fpga):
    chip, server = fpga
    trace = Trace()
    io = ChipIO(LimitedBackend(chip, STATION), trace)   # found through the guard
    a = np.arange(16, dtype=np.uint32)
    io.program(a, np.ones(16, np.int64), PulseSpec.set(), "update")
    assert trace.events[0][3] == chip.status().last_seq
    io.read(a, "readback")
    assert trace.events[2][3] == chip.status().last_seq
    io.program_read(a[:5], np.ones(5, np.int64), PulseSpec.set(), "update", "readback")
    halves = [e for e in trace.events[4:] if e[0].startswith("before")]
    assert [e[0] for e in halves] == ["before_program", "before_read"]
    assert halves[0][3] == halves[1][3] == chip.status().last_seq   # one command, one seq
    assert chip.stats["PROGRAM_READ"]["commands"] == 1


def test_a_backend_without_sequence_numbers_passes_no_wire_seq():
    """A recorder written before wire_seq existed keeps working on such a backend."""

    class OldRecorder(Recorder):
        def __init__(self):
            self.seen = 0

        def before_read(self, step, addresses, purpose):
            self.seen += 1

        def before_program(self, step, addresses, n_pulses, pulse, purpose):
            self.seen += 1

    rec = OldRecorder()
    io = ChipIO(LimitedBackend(sim(), STATION), rec)
    a = np.arange(4, dtype=np.uint32)
    io.program(a, np.ones(4, np.int64), PulseSpec.set(), "update")
    io.read(a, "readback")
    io.program_read(a, np.ones(4, np.int64), PulseSpec.set(), "update", "readback")
    assert rec.seen == 4


def test_wire_seq_of_a_stack(fpga):
    chip, _ = fpga
    assert wire_seq_of(sim()) == -1
    assert wire_seq_of(LimitedBackend(sim(), STATION)) == -1
    assert wire_seq_of(LimitedBackend(chip, STATION)) == chip.next_wire_seq()
    chip.use_seq(0xFFFFFFFF)
    assert wire_seq_of(chip) == 0xFFFFFFFF
    chip.read(np.arange(2))
    assert wire_seq_of(chip) == 0                 # 32-bit numbers wrap
