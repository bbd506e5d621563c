"""The run-log reader (hil.run_log.reader.RunLog): what a log holds comes back exactly, the
host's view of the conductances at any step, damaged and foreign files, the digest, and
sequential access to the event tables.
"""
from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_log_fakes import (GEOMETRY, N_DEVICES, SHAPES, as_schema_1_0,  # noqa: E402
                           fake_layout, fake_log, fake_run, host_view, small_cfg)

from hil.run_log import (PURPOSES, SCHEMA_VERSION, RunLog, RunLogError,  # noqa: E402
                         RunLogWriter)
from hil.run_state import RunState  # noqa: E402


@pytest.fixture
def logged(tmp_path):
    """A finished fake run: (path, Capture with the expected content)."""
    return fake_log(tmp_path)


def test_round_trip(logged):
    path, cap = logged
    assert not os.path.exists(path + ".journal")   # removed when the log is closed
    with RunLog(path) as r:
        assert r.journal().batches == []
        assert r.schema_version == SCHEMA_VERSION == "1.2"
        assert r.status.status == "completed" and r.summary["steps"] == 120
        assert [s.status for s in r.status_history()] == ["running", "completed"]
        assert r.purposes[1:len(PURPOSES) + 1] == list(PURPOSES)
        assert list(r.layout) == list(fake_layout())
        for k, a in fake_layout().items():
            assert np.array_equal(r.layout[k], a)
        assert r.experiment_config().name == "fake"
        assert r.config["log"]["flush_every_steps"] == 25
        prov = r.provenance
        assert prov["seed"] == 0 and prov["chip"]["chip_id"] == "sim"
        env = prov["environment"]
        assert env["packages"]["numpy"] and env["packages"]["h5py"] and env["python"]
        assert r.chip_info().geometry == GEOMETRY
        # reads: every batch, in order, values exact
        rb = r.read_batches()
        assert rb["seq"].size == len(cap.reads)
        ev = r.read_events()
        for i, (step, a, v, purpose) in enumerate(cap.reads):
            o, c = rb["offset"][i], rb["count"][i]
            assert rb["step"][i] == step and r.purpose_name(rb["purpose"][i]) == purpose
            assert np.array_equal(ev["address"][o:o + c], a)
            assert np.array_equal(ev["value"][o:o + c], v)
            assert np.all(ev["step"][o:o + c] == step)
        # pulse batches, acknowledged, with pulse shape
        batches = list(r.iter_pulse_batches())
        assert len(batches) == len(cap.programs)
        for b, (step, a, n, pulse, purpose) in zip(batches, cap.programs):
            assert (b.step, b.purpose, b.status, b.pulse) == (step, purpose, "acked", pulse)
            assert np.array_equal(b.addresses, a) and np.array_equal(b.n_pulses, n)
        # command order: seq interleaves reads and programs, 0..N-1
        seq = np.sort(np.concatenate([rb["seq"], r.pulse_batches()["seq"]]))
        assert np.array_equal(seq, np.arange(seq.size))
        # metrics
        sm = r.step_metrics()
        assert np.array_equal(sm["step"], [s for s, _ in cap.step_metrics])
        assert np.array_equal(sm["set_pulses"], [m["set_pulses"] for _, m in cap.step_metrics])
        em = r.epoch_metrics()
        assert em["epoch"].tolist() == [0] and em["seconds"][0] == 1.23
        # snapshots
        snaps = r.snapshots()
        assert snaps["step"].tolist() == [s for s, _, _ in cap.snapshots]
        for i, (s, g, chi) in enumerate(cap.snapshots):
            assert np.array_equal(r.snapshot_g(i), g)
            for k, v in r.snapshot_chi(i).items():
                assert np.array_equal(v, chi[k])


def test_conductance_at_any_step_matches_the_host_view(logged):
    path, cap = logged
    n = N_DEVICES
    with RunLog(path) as r:
        for step in (0, 1, 14, 15, 39, 40, 41, 77, 119, 120):
            want = host_view(cap, step, n)
            assert np.array_equal(r.conductance(step), want, equal_nan=True), step
        # a subset, repeated and unmapped addresses
        sub = np.array([5, 3, 5, 4000], dtype=np.int64)
        got = r.conductance(77, sub)
        want = host_view(cap, 77, n)
        assert np.array_equal(got[:3], want[[5, 3, 5]]) and np.isnan(got[3])
        st = r.state(77)
        assert st["layer1.minus"].shape == SHAPES[1]
        assert r.chi(79)[0] == 40 and r.chi(80)[0] == 80
        # traces: every read of a device in order
        tr = r.traces([7])
        exp = [(s, v[a == 7][0]) for s, a, v, _ in cap.reads if np.any(a == 7)]
        assert list(zip(tr["step"].tolist(), tr["value"].tolist())) == \
            [(s, float(v)) for s, v in exp]
        pps = r.pulses_per_step()
        assert pps["set"][pps["step"] == 1][0] == cap.step_metrics[0][1]["set_pulses"]


def test_foreign_truncated_corrupted_and_newer_files(logged, tmp_path):
    path, _ = logged
    with pytest.raises(RunLogError, match="no such file"):
        RunLog(str(tmp_path / "missing.h5"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(RunLogError, match="not an HDF5 file"):
        RunLog(str(text))
    foreign = str(tmp_path / "foreign.h5")
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(RunLogError, match="not a pcm-hil run log"):
        RunLog(foreign)
    data = open(path, "rb").read()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunLogError, match="truncated"):
        RunLog(str(trunc))
    newer = str(tmp_path / "newer.h5")
    open(newer, "wb").write(data)
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = "2.0"
    with pytest.raises(RunLogError, match="schema 2.0, newer"):
        RunLog(newer)
    missing = str(tmp_path / "missing_ds.h5")
    open(missing, "wb").write(data)
    with h5py.File(missing, "r+") as f:
        del f["reads/events/value"]
    with pytest.raises(RunLogError, match="/reads/events/value is missing"):
        RunLog(missing)
    # garbage in the middle of the file: every failure is a RunLogError
    bad = tmp_path / "garbage.h5"
    b = bytearray(data)
    rng = np.random.default_rng(1)
    for off in rng.integers(4096, len(b) - 4096, 40):
        b[off:off + 256] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
    bad.write_bytes(bytes(b))
    with pytest.raises(RunLogError):
        with RunLog(str(bad)) as r:
            for step in (0, 60, 120):
                r.conductance(step)
            r.step_metrics()
            r.status_history()
            list(r.iter_pulse_batches())


def test_digest_is_the_same_for_the_same_run(tmp_path):
    paths = []
    for i, seed in enumerate((0, 0, 1)):
        p = str(tmp_path / f"d{i}.h5")
        fake_run(RunLogWriter(p, small_cfg()), steps=40, seed=seed)
        paths.append(p)
    digests = []
    for p in paths:
        with RunLog(p) as r:
            digests.append(r.digest())
    assert open(paths[0], "rb").read() != open(paths[1], "rb").read()   # timestamps differ
    assert digests[0] == digests[1] != digests[2]


def test_status_history_is_a_sequence_of_run_states(logged):
    path, _ = logged
    with RunLog(path) as r:
        states = [s.status for s in r.status_history()]
        assert states == [RunState.RUNNING, RunState.COMPLETED]
        assert all(isinstance(s, RunState) for s in states)
        assert r.status.status == "completed" and r.status.status.final


# --- sequential access to the event tables (replay walks a log this way) -----------------------
def _matvec_log(path: str) -> None:
    """A log with on-chip weighted sums: blocks of 3 rows, vector and matrix inputs."""
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    block = np.arange(12, dtype=np.uint32).reshape(3, 4)
    for step in range(1, 6):
        x = np.full(4, 0.1 * step)
        w.on_matvec(step, block, x, (block @ x).astype(np.float32))
        xm = np.ones((4, 2))
        w.on_matvec(step, block, xm, (block @ xm).astype(np.float32))
    w.finish("completed")


def test_event_rows_returns_any_window_of_every_event_table(logged, tmp_path):
    path, cap = logged
    with RunLog(path) as r:
        for table, whole in (("reads", r.read_events()), ("pulses", r.pulse_events())):
            n = r.event_count(table)
            assert n == whole["address"].size > 100
            for start, stop in ((0, n), (0, 1), (17, 91), (n - 5, n), (n, n)):
                got = r.event_rows(table, start, stop)
                assert list(got) == list(whole)
                for col, a in whole.items():
                    assert got[col].dtype == a.dtype
                    assert np.array_equal(got[col], a[start:stop]), (table, col, start)
            # only the columns asked for; never past the last commit
            assert list(r.event_rows(table, 3, 9, ("address",))) == ["address"]
            assert r.event_rows(table, n - 2, n + 1000)["address"].size == 2
        # a batch's offset and count name its rows
        rb = r.read_batches()
        i = len(cap.reads) // 2
        o, k = int(rb["offset"][i]), int(rb["count"][i])
        assert np.array_equal(r.event_rows("reads", o, o + k)["value"], cap.reads[i][2])
        with pytest.raises(RunLogError, match="no event table 'snapshots'"):
            r.event_rows("snapshots", 0, 1)
        with pytest.raises(RunLogError, match="'pulses' has no column 'value'"):
            r.event_rows("pulses", 0, 1, ("value",))
    mv = str(tmp_path / "mv.h5")
    _matvec_log(mv)
    with RunLog(mv) as r:
        assert r.event_count("matvec") == 5 * (3 + 6)
        assert np.array_equal(r.event_rows("matvec", 0, r.event_count("matvec"))["value"],
                              r.matvec_values())
        assert np.array_equal(r.event_rows("matvec", 3, 9)["value"], r.matvec_values(1, 2))


def test_a_schema_1_0_log_has_an_empty_matvec_table(tmp_path):
    path = str(tmp_path / "mv.h5")
    _matvec_log(path)
    with h5py.File(path, "r+") as f:    # what a 1.0 writer made: no /matvec
        del f["matvec"]
        f.attrs["schema_version"] = "1.0"
    with RunLog(path) as r:
        assert not r.has_matvec and r.event_count("matvec") == 0
        got = r.event_rows("matvec", 0, 10)
        assert got["value"].size == 0 and got["value"].dtype == np.float32


# --- logs of earlier schemas ---------------------------------------------------------------------
#: A schema 1.1 log written by the 1.1 writer (fake_run(steps=40, snapshot_every=20) through
#: RunLogWriter with small_cfg(flush_every=10, snapshot_every=20)), kept to prove that every
#: later reader still reads it, and its digest, computed when it was written.
FIXTURE_1_1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                           "run-log-1.1.h5")
DIGEST_1_1 = "8c84fe3529f510de13eb5a73765e0ab8ff9fdc7561fa269e1e2cbb4e83c18a0e"


def test_a_schema_1_1_log_reads_and_replays():
    from hil.replay import ReplayBackend, VerifyRecorder
    with RunLog(FIXTURE_1_1) as r:
        assert r.schema_version == "1.1" and r.has_matvec and not r.has_events
        assert r.digest() == DIGEST_1_1
        assert r.status.status is RunState.COMPLETED and r.summary["steps"] == 40
        assert r.events() == [] and r.event_kinds == [""]
        assert np.array_equal(r.conductance(40), r.snapshot_g(-1))
        with h5py.File(FIXTURE_1_1, "r") as f:
            assert f["reads/events/address"].compression == "lzf"   # read as before
        be, rec = ReplayBackend(r), VerifyRecorder(r)
        fake_run(rec, steps=40, snapshot_every=20, backend=be)   # the same commands again
        assert be.remaining() == 0 and rec.si == 40 and rec.ki == rec.n_snap == 4


def test_a_schema_1_0_log_still_reads(tmp_path):
    old = str(tmp_path / "old.h5")
    with open(FIXTURE_1_1, "rb") as src, open(old, "wb") as dst:
        dst.write(src.read())
    with h5py.File(old, "r+") as f:
        as_schema_1_0(f)
    with RunLog(old) as r:
        assert r.schema_version == "1.0" and not r.has_matvec and not r.has_events
        assert r.digest() == DIGEST_1_1   # without MATVECs, the digest 1.0 defined
        assert r.counts["matvec_batches"] == 0 and r.events() == []


# --- run events (schema 1.2) -------------------------------------------------------------------
def test_run_events_come_back_as_named_records(tmp_path):
    path = str(tmp_path / "ev.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    w.on_event(3, "run_paused", {"monitor": "temp_c", "reading": np.float32(31.5)})
    w.on_event(3, "command_refused", {"command": "PROGRAM_SET", "devices": np.arange(2),
                                      "why": "amplitude 2.5 V > station limit 2.0 V"})
    w.on_event(9, "run_resumed", {})
    w.on_event(9, "calibration_done", {"ok": True})   # a kind of its own: next free code
    with RunLog(path) as live:                         # committed at once
        assert [e.kind for e in live.events()] == ["run_paused", "command_refused",
                                                   "run_resumed", "calibration_done"]
    with pytest.raises(RunLogError, match="detail must be a mapping"):
        w.on_event(9, "run_paused", ["not", "a", "mapping"])
    with pytest.raises(RunLogError, match="event kind '' is not a string"):
        w.on_event(9, "", {})
    with pytest.raises(RunLogError, match="goes back"):
        w.on_event(2, "run_paused", {})
    w.finish("completed")
    with RunLog(path) as r:
        ev = r.events()
        assert [(e.step, e.kind) for e in ev] == [(3, "run_paused"), (3, "command_refused"),
                                                  (9, "run_resumed"), (9, "calibration_done")]
        assert ev[0].detail == {"monitor": "temp_c", "reading": 31.5}
        assert ev[1].detail["devices"] == [0, 1] and ev[2].detail == {}
        assert all(isinstance(e.time_unix, float) and e.time_unix > 0 for e in ev)
        assert r.event_kinds[1:5] == ["run_paused", "run_resumed", "command_refused",
                                      "segment_started"]
        assert r.event_kinds[5] == "calibration_done"
