"""The run-log writer (hil.run_log.writer.RunLogWriter): write-ahead batch status, growing
metric tables, bad input refused without losing what is logged, final statuses, and a log
that survives its writer being killed at any moment.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
from run_log_fakes import (N_DEVICES, Capture, fake_layout, fake_run, host_view,  # noqa: E402
                           small_cfg)

from drivers.pulse import DEFAULT_SET  # noqa: E402
from hil.run_log import PURPOSES, RunLog, RunLogError, RunLogWriter  # noqa: E402
from hil.run_state import RunState  # noqa: E402


def test_write_ahead_flag_marks_unacknowledged_batch(tmp_path):
    path = str(tmp_path / "wal.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    a = np.arange(4, dtype=np.uint32)
    w.before_program(1, a, np.ones(4), DEFAULT_SET, "update")
    w.on_program(1, a, np.ones(4), DEFAULT_SET, "update")
    w.before_program(2, a, np.full(4, 2), DEFAULT_SET, "update")
    w.flush()   # the batch is durable before the command goes out
    with RunLog(path) as r:
        assert r.pulse_batches()["status"].tolist() == [2, 1]
    w.finish("failed", "LinkError: timeout")   # never acknowledged
    with RunLog(path) as r:
        b = list(r.iter_pulse_batches())
        assert [x.status for x in b] == ["acked", "sent"]
        assert r.status.status == "failed" and "timeout" in r.status.reason


def test_ack_after_flush_updates_the_file(tmp_path):
    path = str(tmp_path / "wal2.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    a = np.arange(4, dtype=np.uint32)
    w.before_program(1, a, np.ones(4), DEFAULT_SET, "update")
    w.flush()
    w.on_program(1, a, np.ones(4), DEFAULT_SET, "update")
    w.finish("completed")
    with RunLog(path) as r:
        assert r.pulse_batches()["status"].tolist() == [2]


def test_metric_columns_grow_and_unknown_purpose_gets_a_code(tmp_path):
    path = str(tmp_path / "m.h5")
    w = RunLogWriter(path, small_cfg(flush_every=2))
    w.begin(config={}, provenance={}, layout=fake_layout())
    for s in range(1, 8):
        m = {"loss": s * 0.5}
        if s >= 4:
            m["late_metric"] = s
        w.on_step_metrics(s, m)
    w.on_read(8, np.array([1, 2], np.uint32), np.array([1.5, 2.5], np.float32), "calibrate")
    w.finish("completed")
    with RunLog(path) as r:
        sm = r.step_metrics()
        assert sm["loss"].tolist() == [s * 0.5 for s in range(1, 8)]
        assert np.isnan(sm["late_metric"][:3]).all() and sm["late_metric"][3:].tolist() == \
            [4, 5, 6, 7]
        code = r.read_batches()["purpose"][0]
        assert r.purpose_name(code) == "calibrate" and code == len(PURPOSES) + 1


def test_bad_input_is_one_clear_error_and_loses_nothing(tmp_path):
    path = str(tmp_path / "bad.h5")
    w = RunLogWriter(path, small_cfg())
    with pytest.raises(RunLogError, match="before begin"):
        w.on_read(0, np.arange(2), np.ones(2), "readback")
    w.begin(config={}, provenance={}, layout=fake_layout())
    w.on_read(1, np.arange(2), np.ones(2, np.float32), "readback")
    with pytest.raises(RunLogError, match="3 addresses but 2 values"):
        w.on_read(1, np.arange(3), np.ones(2), "readback")
    with pytest.raises(RunLogError, match="not a number"):
        w.on_step_metrics(1, {"loss": "high"})
    with pytest.raises(RunLogError, match="goes back"):
        w.on_read(0, np.arange(2), np.ones(2), "readback")
    with pytest.raises(RunLogError, match="3 conductances, the layout has 78"):
        w.on_snapshot(1, np.zeros(3), {})
    with pytest.raises(RunLogError, match="addresses must be integers"):
        w.before_program(1, np.array([0.5]), np.ones(1), DEFAULT_SET, "update")
    w.on_step_metrics(1, {"loss": 1.0})
    w.finish("completed")
    with pytest.raises(RunLogError, match="after finish"):
        w.on_read(2, np.arange(2), np.ones(2), "readback")
    with RunLog(path) as r:
        assert r.counts["read_events"] == 2 and r.step_metrics()["loss"].tolist() == [1.0]
        assert r.status.status == "completed"
    with pytest.raises(RunLogError, match="refusing to overwrite"):
        RunLogWriter(path, small_cfg())
    with pytest.raises(RunLogError, match="does not exist"):
        RunLogWriter(str(tmp_path / "nope" / "x.h5"), small_cfg())
    with pytest.raises(RunLogError, match="flush_every_steps"):
        RunLogWriter(str(tmp_path / "y.h5"), small_cfg(flush_every=0))


def test_context_manager_marks_failure(tmp_path):
    path = str(tmp_path / "cm.h5")
    with pytest.raises(ZeroDivisionError):
        with RunLogWriter(path, small_cfg()) as w:
            w.begin(config={}, provenance={}, layout=fake_layout())
            w.on_step_metrics(1, {"loss": 1.0})
            1 / 0
    with RunLog(path) as r:
        assert r.status.status == "failed" and "ZeroDivisionError" in r.status.reason
        assert r.step_metrics()["loss"].tolist() == [1.0]


def test_writer_killed_before_begin(tmp_path):
    """A writer that dies between creating the file and begin() (the trainer loads its
    data in between) leaves a file that gets one clear error, not an HDF5 traceback."""
    path = str(tmp_path / "early.h5")
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {TESTS!r})
        from run_log_fakes import small_cfg
        from hil.run_log import RunLogWriter
        w = RunLogWriter({path!r}, small_cfg())
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], check=False)
    with pytest.raises(RunLogError, match="stopped before logging began"):
        RunLog(path)
    w = RunLogWriter(str(tmp_path / "early2.h5"), small_cfg())
    w.finish("failed", "ConfigError: no MNIST")   # before begin(): still says why
    with pytest.raises(RunLogError, match="never started.*no MNIST"):
        RunLog(str(tmp_path / "early2.h5"))


def test_monitor_readings(tmp_path):
    path = str(tmp_path / "mon.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    w.on_monitor(0, {"smu.current_a": 1e-3, "temp_c": 25.0})
    w.on_monitor(5, {"smu.current_a": 2e-3, "temp_c": 25.5})
    w.on_monitor(5, {"smu.current_a": 2e-3, "temp_c": 25.5, "dmm.v": 1.2})
    w.finish("completed")
    with RunLog(path) as r:
        m = r.monitor_readings()
        assert m["step"].tolist() == [0, 5, 5] and m["temp_c"].tolist() == [25.0, 25.5, 25.5]
        assert np.isnan(m["dmm.v"][:2]).all() and m["dmm.v"][2] == 1.2


def test_bad_layout_is_refused_before_anything_is_written(tmp_path):
    path = str(tmp_path / "lay.h5")
    w = RunLogWriter(path, small_cfg())
    lay = fake_layout()
    lay["layer1.minus"] = lay["layer1.minus"].copy()
    lay["layer1.minus"][0, 0] = 3
    with pytest.raises(RunLogError, match="layout names device 3 twice"):
        w.begin(config={}, provenance={}, layout=lay)
    w.finish("failed", "RunLogError: bad layout")
    with pytest.raises(RunLogError, match="never started.*bad layout"):
        RunLog(path)


# --- crash tolerance -------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from run_log_fakes import fake_run, small_cfg
    from hil.run_log import RunLogWriter
    w = RunLogWriter({path!r}, small_cfg(flush_every=5))
    commits = [0]
    def report(step):
        if w.commits != commits[0]:
            commits[0] = w.commits
            print("committed", w.complete_step, flush=True)
    fake_run(w, steps=100000, snapshot_every=50, per_step=report, width=4)
""")


def _expected(steps: int) -> Capture:
    cap = Capture()
    fake_run(cap, steps=steps, snapshot_every=50, finish=False, width=4)
    return cap


def test_sigkill_at_any_moment_leaves_a_readable_log(tmp_path):
    """Kill a real writer process with SIGKILL at random moments; every step up to the last
    commit it reported must come back, exactly."""
    rng = np.random.default_rng(7)
    results = []
    for trial in range(4):
        path = str(tmp_path / f"kill{trial}.h5")
        proc = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=TESTS, path=path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        committed = -1
        deadline = time.monotonic() + 30
        wait_commits = int(rng.integers(3, 12))
        seen = 0
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed = int(line.split()[1])
            seen += 1
            if seen >= wait_commits:
                break
        time.sleep(float(rng.uniform(0, 0.05)))   # land anywhere, also inside a commit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert seen >= wait_commits, proc.stderr.read()
        with RunLog(path) as r:
            assert r.status.status == "running"
            assert r.complete_step >= committed
            last = r.complete_step
            cap = _expected(last + 30)
            sm = r.step_metrics()
            got_steps = sm["step"][sm["step"] <= last]
            exp_m = [(s, m) for s, m in cap.step_metrics if s <= last]
            assert np.array_equal(got_steps, [s for s, _ in exp_m])
            assert np.array_equal(sm["loss"][:got_steps.size], [m["loss"] for _, m in exp_m])
            rb = r.read_batches()
            keep = rb["step"] <= last
            exp_reads = [x for x in cap.reads if x[0] <= last]
            assert int(keep.sum()) == len(exp_reads)
            ev = r.read_events(stop_step=last + 1)
            assert np.array_equal(ev["value"], np.concatenate([x[2] for x in exp_reads]))
            pb = list(r.iter_pulse_batches(stop_step=last + 1))
            exp_p = [x for x in cap.programs if x[0] <= last]
            assert len(pb) == len(exp_p)
            assert all(np.array_equal(b.n_pulses, p[2]) for b, p in zip(pb, exp_p))
            assert np.array_equal(r.conductance(last), host_view(cap, last, N_DEVICES),
                                  equal_nan=True)
            # The write-ahead journal holds every batch sent after the last commit.
            tail = r.journal()
            nb = r.counts["pulse_batches"]
            assert [b.batch_id for b in tail.batches] == \
                list(range(nb, nb + len(tail.batches)))
            for b in tail.batches:
                step, a, n_p, pulse, purpose = cap.programs[b.batch_id]
                assert (b.step, b.purpose, b.pulse) == (step, purpose, pulse)
                assert np.array_equal(b.addresses, a) and np.array_equal(b.n_pulses, n_p)
            assert all(b.status == "acked" for b in tail.batches[:-1])
            from hil.replay.summary import format_summary, summarize
            text = format_summary(summarize(r))
            assert "running - not finished" in text
            assert summarize(r)["state_digest"] is None     # only a completed run has one
            assert ("journal" in text) == bool(tail.batches)
            results.append((last, len(tail.batches)))
        assert not os.path.exists(path + ".journal") or tail.commit >= 1
    assert len(results) == 4, results
    assert any(n for _, n in results), results   # some kills landed after a batch was sent


@pytest.mark.parametrize("status, reason", [("running", "still going"), ("done", None),
                                            (RunState.RUNNING, None)])
def test_a_status_a_run_cannot_end_in_is_recorded_as_failed(tmp_path, status, reason):
    """finish() takes a final RunState (or its string); `running` or an unknown name would
    leave a run that never ends, so it is recorded as failed and the reason names it."""
    path = str(tmp_path / "st.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    w.finish(status, reason)
    with RunLog(path) as r:
        st = r.status
        assert st.status is RunState.FAILED
        assert st.reason.startswith(f"finish() with unknown status {str(status)!r}")
        assert (reason or "") in st.reason


@pytest.mark.parametrize("final", [RunState.COMPLETED, "aborted", RunState.FAILED])
def test_every_final_state_is_recorded_as_given(tmp_path, final):
    path = str(tmp_path / "st.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    commits = w.commits
    w.on_step_metrics(3, {"loss": 1.0})
    w.flush()
    assert w.commits == commits + 1 and w.complete_step == 2
    w.finish(final, "why")
    with RunLog(path) as r:
        assert r.status.status == final and r.status.reason == "why"
        assert r.status.status.final and r.complete_step == 3
