"""The Recorder interface (hil.recorder): every hook a no-op by default, and a combined
program-then-read write-ahead that a recorder which knows only the two halves still gets
right."""
from __future__ import annotations

import numpy as np

from drivers.pulse import DEFAULT_SET
from hil.recorder import NullRecorder, Recorder


class _Halves(Recorder):
    def __init__(self) -> None:
        self.calls = []

    def before_program(self, step, addresses, n_pulses, pulse, purpose, *, wire_seq=-1):
        self.calls.append(("program", step, purpose, wire_seq, addresses.tolist()))

    def before_read(self, step, addresses, purpose, *, wire_seq=-1):
        self.calls.append(("read", step, purpose, wire_seq, addresses.tolist()))


def test_a_combined_write_ahead_is_the_program_then_the_read_under_one_wire_seq():
    rec = _Halves()
    a = np.array([3, 5], np.uint32)
    rec.before_program_read(7, a, np.ones(2, np.int64), DEFAULT_SET, "update", "readback",
                            wire_seq=41)
    assert rec.calls == [("program", 7, "update", 41, [3, 5]),
                         ("read", 7, "readback", 41, [3, 5])]
    rec.calls.clear()
    rec.before_program_read(8, a, np.ones(2, np.int64), DEFAULT_SET, "update", "readback")
    assert [c[3] for c in rec.calls] == [-1, -1]   # a backend without sequence numbers


def test_the_null_recorder_accepts_every_hook():
    rec = NullRecorder()
    a = np.arange(3, dtype=np.uint32)
    rec.begin(config={}, provenance={}, layout={"x.plus": a})
    rec.before_read(0, a, "full_read")
    rec.on_read(0, a, np.zeros(3, np.float32), "full_read")
    rec.before_program(1, a, np.ones(3), DEFAULT_SET, "update")
    rec.on_program(1, a, np.ones(3), DEFAULT_SET, "update")
    rec.on_matvec(1, a.reshape(1, 3), np.zeros(3), np.zeros(1, np.float32))
    rec.on_snapshot(1, np.zeros(3, np.float32), {})
    rec.on_step_metrics(1, {"loss": 1.0})
    rec.on_monitor(1, {"t": 25.0})
    rec.on_epoch_metrics(0, {"test_accuracy": 0.5})
    rec.flush()
    rec.finish("completed")
