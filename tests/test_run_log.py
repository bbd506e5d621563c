"""Run log (hil.run_log): writing, reading, reconstruction, bad files, crash tolerance.

`fake_run` is a small hand-driven training-like loop on a SimulatedChip through ChipIO, so
these tests exercise the real code paths and real HDF5 files without the trainer.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, Dict, List, Optional

import h5py
import numpy as np
import pytest

from drivers.geometry import Geometry
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil.chip_io import ChipIO
from hil.config import ExperimentConfig, LogConfig, replace
from hil.recorder import Recorder
from hil.run_log import (COMMIT_FIELDS, PURPOSES, RunLog, RunLogError, RunLogWriter)
from sim_backend.pcm_model import PcmModel
from sim_backend.sim_chip import SimulatedChip

TESTS = os.path.dirname(os.path.abspath(__file__))
GEOMETRY = Geometry(1, 64, 64)
SHAPES = [(6, 4), (5, 3)]


def small_cfg(flush_every: int = 25, snapshot_every: int = 40) -> ExperimentConfig:
    cfg = ExperimentConfig(name="fake")
    return replace(cfg, log=LogConfig(snapshot_every_steps=snapshot_every,
                                      flush_every_steps=flush_every))


def fake_layout() -> Dict[str, np.ndarray]:
    out, pos = {}, 0
    for i, (a, b) in enumerate(SHAPES):
        for sign in ("plus", "minus"):
            out[f"layer{i}.{sign}"] = np.arange(pos, pos + a * b, dtype=np.uint32).reshape(a, b)
            pos += a * b
    return out


class Capture(Recorder):
    """Keeps everything in memory: the expected content of a log."""

    def __init__(self) -> None:
        self.reads: List[tuple] = []
        self.programs: List[tuple] = []
        self.snapshots: List[tuple] = []
        self.step_metrics: List[tuple] = []
        self.epoch_metrics: List[tuple] = []

    def on_read(self, step, addresses, values, purpose):
        self.reads.append((step, addresses.copy(), values.copy(), purpose))

    def on_program(self, step, addresses, n_pulses, pulse, purpose):
        self.programs.append((step, addresses.copy(), np.asarray(n_pulses).copy(), pulse,
                              purpose))

    def on_snapshot(self, step, g_us, chi):
        self.snapshots.append((step, g_us.copy(), {k: v.copy() for k, v in chi.items()}))

    def on_step_metrics(self, step, metrics):
        self.step_metrics.append((step, dict(metrics)))

    def on_epoch_metrics(self, epoch, metrics):
        self.epoch_metrics.append((epoch, dict(metrics)))


class Tee(Recorder):
    """Forwards every hook to several recorders."""

    def __init__(self, *recs: Recorder) -> None:
        self.recs = recs

    def _all(self, name: str, *a: Any, **k: Any) -> None:
        for r in self.recs:
            getattr(r, name)(*a, **k)

    def begin(self, **k):
        self._all("begin", **k)

    def on_read(self, *a):
        self._all("on_read", *a)

    def before_program(self, *a):
        self._all("before_program", *a)

    def on_program(self, *a):
        self._all("on_program", *a)

    def on_snapshot(self, *a):
        self._all("on_snapshot", *a)

    def on_step_metrics(self, *a):
        self._all("on_step_metrics", *a)

    def on_epoch_metrics(self, *a):
        self._all("on_epoch_metrics", *a)

    def finish(self, *a):
        self._all("finish", *a)


def fake_run(recorder: Recorder, steps: int = 120, seed: int = 0, snapshot_every: int = 40,
             backend: Any = None, finish: bool = True, per_step: Optional[callable] = None,
             width: int = 1) -> Dict[str, Any]:
    """A training-like loop: init, per step an update batch + read-back, periodic refresh,
    periodic snapshots, epoch metrics. Decisions depend on the values read, so a replay that
    served wrong values would diverge. `width` scales the number of devices per step."""
    chip = backend or SimulatedChip(PcmModel.preset("jap"), GEOMETRY, seed=seed)
    io = ChipIO(chip, recorder)
    layout = fake_layout()
    addr = np.concatenate([a.ravel() for a in layout.values()])
    n = addr.size
    recorder.begin(config=small_cfg().to_dict(),
                   provenance={"chip": chip.info().to_dict(), "seed": seed},
                   layout=layout)
    io.step = 0
    io.program(addr, np.ones(n, np.int64), DEFAULT_RESET, "init_reset")
    cache = io.read(addr, "full_read").astype(np.float32)
    chi_sizes = [a * b for a, b in SHAPES]
    chi = np.zeros(sum(chi_sizes), np.float32)

    def chi_dict():
        return {"layer0": chi[:chi_sizes[0]].reshape(SHAPES[0]),
                "layer1": chi[chi_sizes[0]:].reshape(SHAPES[1])}

    def pair(w):
        # weight w → (plus address, minus address) in the layout
        lay = 0 if w < chi_sizes[0] else 1
        base = 0 if lay == 0 else 2 * chi_sizes[0]
        k = w - (0 if lay == 0 else chi_sizes[0])
        return base + k, base + chi_sizes[lay] + k

    plus_pos = np.array([pair(w)[0] for w in range(chi.size)])
    minus_pos = np.array([pair(w)[1] for w in range(chi.size)])
    recorder.on_snapshot(0, cache.copy(), chi_dict())
    rng = np.random.default_rng(seed)
    total_set = 0
    for step in range(1, steps + 1):
        io.step = step
        chi += rng.normal(0, 0.6 * width, chi.size).astype(np.float32)
        hit = np.flatnonzero(np.abs(chi) >= 1.0)
        n_p = np.minimum(np.floor(np.abs(chi[hit])), 3).astype(np.int64)
        pos = np.where(chi[hit] > 0, plus_pos[hit], minus_pos[hit])
        chi[hit] -= np.sign(chi[hit]) * n_p
        refreshed = 0
        if hit.size:
            io.program(addr[pos], n_p, DEFAULT_SET, "update")
            cache[pos] = io.read(addr[pos], "readback")
            total_set += int(n_p.sum())
        if step % 15 == 0:
            sat = np.flatnonzero(np.maximum(cache[plus_pos], cache[minus_pos]) > 6.0)
            if sat.size:
                both = np.concatenate([plus_pos[sat], minus_pos[sat]])
                io.program(addr[both], np.ones(both.size, np.int64), DEFAULT_RESET,
                           "refresh_reset")
                cache[both] = io.read(addr[both], "refresh_readback")
                refreshed = int(sat.size)
        recorder.on_step_metrics(step, {"loss": float(np.mean(np.abs(chi))),
                                        "set_pulses": int(n_p.sum()),
                                        "refreshes": refreshed})
        if snapshot_every and step % snapshot_every == 0:
            recorder.on_snapshot(step, cache.copy(), chi_dict())
        if per_step:
            per_step(step)
    cache = io.read(addr, "full_read")
    recorder.on_epoch_metrics(0, {"train_accuracy": 0.5, "test_accuracy": float(cache.mean()),
                                  "seconds": 1.23})
    recorder.on_snapshot(steps, cache.copy(), chi_dict())
    summary = {"name": "fake", "set_pulses": total_set, "steps": steps}
    if finish:
        recorder.finish("completed", None, summary)
    return summary


@pytest.fixture
def logged(tmp_path):
    """A finished fake run: (path, Capture with the expected content)."""
    path = str(tmp_path / "run.h5")
    cap = Capture()
    w = RunLogWriter(path, small_cfg())
    fake_run(Tee(w, cap))
    return path, cap


# --- writing and reading ---------------------------------------------------------------------
def test_round_trip(logged):
    path, cap = logged
    assert not os.path.exists(path + ".journal")   # removed when the log is closed
    with RunLog(path) as r:
        assert r.journal().batches == []
        assert r.schema_version == "1.1"
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


def host_view(cap: Capture, step: int, n: int) -> np.ndarray:
    """Reference: replay every read up to `step` one by one (slow, obviously right)."""
    g = np.full(n, np.nan, np.float32)
    for s, a, v, _ in cap.reads:
        if s > step:
            break
        g[a] = v
    return g


def test_conductance_at_any_step_matches_the_host_view(logged):
    path, cap = logged
    n = sum(a.size for a in fake_layout().values())
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


# --- bad files -------------------------------------------------------------------------------
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


def test_live_file_caught_mid_commit_opens_and_a_cut_file_does_not(tmp_path):
    """A reader can catch a live writer mid-commit, between allocating file space and
    writing it: HDF5 then calls the file truncated. RunLog retries while the file changes
    (a monitoring loop hit this mid-run), and still rejects a file that stays cut short."""
    import threading
    path = str(tmp_path / "live.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    a = np.arange(4, dtype=np.uint32)
    for step in range(1, 31):
        w.before_program(step, a, np.ones(4), DEFAULT_SET, "update")
        w.on_program(step, a, np.ones(4), DEFAULT_SET, "update")
    w.flush()
    data = open(path, "rb").read()
    seen = tmp_path / "seen.h5"
    seen.write_bytes(data[:-4096])    # the commit's last writes not on disk yet
    with pytest.raises(OSError, match="truncated"):
        h5py.File(str(seen), "r")

    def commit_ends() -> None:
        time.sleep(0.1)
        with open(seen, "ab") as f:
            f.write(data[-4096:])
    t = threading.Thread(target=commit_ends)
    t.start()
    with RunLog(str(seen)) as r:      # opened once the writer's flush has landed
        assert r.status.status == "running"
        assert len(r.pulse_batches()["step"]) == 30
    t.join()
    seen.write_bytes(data[:-4096])    # and a file that stays cut short is refused
    t0 = time.monotonic()
    with pytest.raises(RunLogError, match="truncated file"):
        RunLog(str(seen))
    assert time.monotonic() - t0 < 3.0
    w.finish("completed", None, {})
    with RunLog(path) as r:
        assert r.status.status == "completed"


def test_schema_doc_lists_every_dataset(logged):
    """docs/run-log.md documents every dataset and attribute the writer creates."""
    path, _ = logged
    doc = open(os.path.join(TESTS, "..", "docs", "run-log.md"), encoding="utf-8").read()
    names = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
        names += [f"@{a}" for a in f.attrs]
        names += [f"@{a}" for a in f["commit"].attrs] + [f"@{a}" for a in f["layout"].attrs]
        names += [f"@{a}" for a in f["snapshots/chi"].attrs]
    for n in names:
        if n.startswith("layout/"):
            continue   # one dataset per layout key
        if n.startswith("@"):
            assert f"`{n[1:]}`" in doc, n
            continue
        parent, _, leaf = n.rpartition("/")
        assert f"/{n}" in doc or f"`{n}`" in doc or (f"`/{parent}" in doc and
                                                     f"| `{leaf}` |" in doc), n
    for field in COMMIT_FIELDS:
        assert f"`{field}`" in doc, field


# --- crash tolerance -------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_run_log import fake_run, small_cfg
    from hil.run_log import RunLogWriter
    w = RunLogWriter({path!r}, small_cfg(flush_every=5))
    commits = [0]
    def report(step):
        if w._commits != commits[0]:
            commits[0] = w._commits
            print("committed", w._complete_step, flush=True)
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
            n = sum(a.size for a in fake_layout().values())
            assert np.array_equal(r.conductance(last), host_view(cap, last, n),
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
            from hil.commands.replay import format_summary, summarize
            text = format_summary(summarize(r))
            assert "running - not finished" in text
            assert ("journal" in text) == bool(tail.batches)
            results.append((last, len(tail.batches)))
        assert not os.path.exists(path + ".journal") or tail.commit >= 1
    assert len(results) == 4, results
    assert any(n for _, n in results), results   # some kills landed after a batch was sent


def test_journal_records_batches_before_they_are_sent(tmp_path):
    from hil.run_log import read_journal
    path = str(tmp_path / "j.h5")
    w = RunLogWriter(path, small_cfg(flush_every=1000))
    w.begin(config={}, provenance={}, layout=fake_layout())
    a = np.arange(5, dtype=np.uint32)
    w.before_program(1, a, np.full(5, 2), DEFAULT_SET, "update")
    w.on_program(1, a, np.full(5, 2), DEFAULT_SET, "update")
    w.before_program(2, a[:3], np.ones(3), DEFAULT_RESET, "refresh_reset")
    data = open(w.journal_path, "rb").read()    # what a SIGKILL here would leave
    tail = read_journal(w.journal_path)
    assert [(b.step, b.status) for b in tail.batches] == [(1, "acked"), (2, "sent")]
    assert tail.batches[1].pulse == DEFAULT_RESET and tail.batches[1].purpose == "purpose#5"
    assert np.array_equal(tail.batches[0].n_pulses, [2] * 5)
    cut = tmp_path / "cut.journal"
    cut.write_bytes(data[:-3])                  # killed in the middle of the last write
    assert [b.step for b in read_journal(str(cut)).batches] == [1]
    bad = tmp_path / "bad.journal"
    bad.write_bytes(b"XXXX" + data[4:])
    with pytest.raises(RunLogError, match="not a pcm-hil run-log journal"):
        read_journal(str(bad))
    w.flush()                                   # committed: the journal starts afresh
    assert read_journal(w.journal_path).batches == []
    w.finish("completed")
    assert not os.path.exists(w.journal_path)


def test_writer_killed_before_begin(tmp_path):
    """A writer that dies between creating the file and begin() (the trainer loads its
    data in between) leaves a file that gets one clear error, not an HDF5 traceback."""
    path = str(tmp_path / "early.h5")
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {TESTS!r})
        from test_run_log import small_cfg
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
