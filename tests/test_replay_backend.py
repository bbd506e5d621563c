"""The replay backend (hil.replay.backend, `replay://RUN.h5`): a logged run served back as a
chip; the first command that differs from the log is named by step, command and device."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_log_fakes import (fake_layout, fake_log, fake_run, small_cfg,  # noqa: E402
                           tamper_one_pulse)

from drivers.errors import ChipFaultError, HilError  # noqa: E402
from drivers.geometry import Geometry  # noqa: E402
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET  # noqa: E402
from hil.backend_url import open_backend  # noqa: E402
from hil.recorder import NullRecorder  # noqa: E402
from hil.replay import (LoggedCommand, ReplayBackend, ReplayDivergence,  # noqa: E402
                        VerifyRecorder)
from hil.run_log import RunLog, RunLogError, RunLogWriter  # noqa: E402
from sim_backend.sim_chip import SimulatedChip  # noqa: E402


@pytest.fixture
def logged(tmp_path):
    return fake_log(tmp_path, steps=90)[0]


def test_replay_serves_the_log_and_reproduces_the_run(logged):
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        rec = VerifyRecorder(log)
        fake_run(rec, steps=90, backend=be)
        assert be.remaining() == 0 and be.commands_served == be.commands_logged
        assert rec.si == rec.n_step == 90 and rec.ki == rec.n_snap
        info = be.info()
        assert info.geometry.cols == 64 and "exact_read" not in info.capabilities
        assert "exact_read" in be.logged_capabilities


def test_a_different_run_diverges_at_the_first_difference(logged):
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        with pytest.raises(ReplayDivergence) as e:
            fake_run(NullRecorder(), steps=90, seed=5, backend=be)
        d = e.value
        assert d.step == 1 and d.command_index == 2 and d.device is not None
        assert "step 1, command #2 (PROGRAM_SET update)" in str(d)
        assert f"device {d.device}" in str(d)


def test_tampered_pulse_is_named(logged):
    step, seq, dev = tamper_one_pulse(logged)
    with RunLog(logged) as log:
        with pytest.raises(ReplayDivergence) as e:
            fake_run(NullRecorder(), steps=90, backend=ReplayBackend(log))
    d = e.value
    assert (d.step, d.command_index, d.device) == (step, seq, dev)
    assert "pulses on the device, the log has" in str(d)


def test_read_of_other_devices_and_end_of_log(logged):
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        a = np.concatenate([x.ravel() for x in fake_layout().values()])
        be.program(a, np.ones(a.size, np.int64),
                   DEFAULT_RESET)
        bad = a.copy()
        bad[7] = 4000
        with pytest.raises(ReplayDivergence, match="device 4000") as e:
            be.read(bad)
        assert e.value.command_index == 1 and e.value.step == 0
        with pytest.raises(ReplayDivergence, match="the log has READ"):
            be.program(a[:3], np.ones(3), DEFAULT_SET)
        v = be.read(a)
        assert np.array_equal(v, log.read_events(0, 1)["value"][:a.size])
        be.close()
    # a log that ends: the next command diverges with the log's end named
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        fake_run(NullRecorder(), steps=90, backend=be)
        with pytest.raises(ReplayDivergence, match="log ends after"):
            be.read(a[:2])


def _log_failed_inside_a_batch(path: str) -> np.ndarray:
    """A log whose run failed inside its first update batch (sent, never acknowledged);
    returns the batch's devices."""
    w = RunLogWriter(path, small_cfg())
    chip_info = SimulatedChip(geometry=Geometry(1, 64, 64)).info()
    w.begin(config={}, provenance={"chip": chip_info.to_dict()}, layout=fake_layout())
    a = np.arange(4, dtype=np.uint32)
    w.before_program(1, a, np.ones(4, np.int64), DEFAULT_SET, "update")
    w.finish("failed", "LinkError: timeout")
    return a


def test_unacknowledged_batch_replays_as_a_chip_fault(tmp_path):
    path = str(tmp_path / "wal.h5")
    a = _log_failed_inside_a_batch(path)
    with ReplayBackend(path) as be:
        with pytest.raises(ChipFaultError, match="never got an acknowledgement"):
            be.program(a, np.ones(4, np.int64), DEFAULT_SET)


def test_backend_url_and_bad_urls(logged, tmp_path):
    with open_backend(f"replay://{logged}") as be:
        assert isinstance(be, ReplayBackend) and be.commands_logged > 0
    with pytest.raises(RunLogError, match="no such file"):
        open_backend(f"replay://{tmp_path}/missing.h5")
    with pytest.raises(RunLogError, match="names no run log"):
        open_backend("replay://")
    assert issubclass(ReplayDivergence, HilError)


def test_next_command_names_the_logged_command_a_re_run_must_send(logged):
    """The cursor the resume layer steers by: kind, command index, step and purpose of the
    next logged command, walking the log in command order."""
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        first = be.next_command()
        assert first == LoggedCommand("program", 0, 0, "init_reset", 0, True)
        seen = []
        spy = _Spy(be, seen)
        fake_run(NullRecorder(), steps=90, backend=spy)
        rb, pb = log.read_batches(), log.pulse_batches()
        logged = sorted([(int(q), "read", int(t)) for q, t in zip(rb["seq"], rb["step"])]
                        + [(int(q), "program", int(t)) for q, t in zip(pb["seq"], pb["step"])])
        assert [(c.index, c.kind, c.step) for c in seen] == logged
        assert spy.next_command() is None


class _Spy(ReplayBackend):
    """Records next_command() before every command it serves."""

    def __init__(self, inner: ReplayBackend, seen: list) -> None:
        self.__dict__.update(inner.__dict__)
        self._seen = seen

    def read(self, addresses):
        self._seen.append(self.next_command())
        return super().read(addresses)

    def program(self, addresses, n_pulses, pulse):
        self._seen.append(self.next_command())
        return super().program(addresses, n_pulses, pulse)


def test_a_batch_acknowledged_after_its_commit_is_served_as_acknowledged(tmp_path):
    """A batch logged as sent whose acknowledgement only the journal holds replays as a
    chip fault, unless the caller (a resume) passes it in acknowledged_late."""
    path = str(tmp_path / "late.h5")
    a = _log_failed_inside_a_batch(path)
    with RunLog(path) as log:
        bid = int(log.pulse_batches()["batch_id"][0])
        assert not ReplayBackend(log).next_command().acknowledged
        be = ReplayBackend(log, acknowledged_late=[bid])
        assert be.next_command().acknowledged
        be.program(a, np.ones(4, np.int64), DEFAULT_SET)   # no chip fault
        assert be.batches_checked == 1 and be.remaining() == 0
