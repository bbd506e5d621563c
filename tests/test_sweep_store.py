"""A sweep's output folder: a point is finished exactly when its summary exists, and every
attempt starts from a clean folder."""
from __future__ import annotations

import json
import os

import pytest

from drivers.errors import ConfigError
from hil.config import load_config
from hil.sweep.points import expand
from hil.sweep.spec import load_sweep
from hil.sweep.store import (AttemptOutcome, PointState, SweepStore, begin_attempt,
                             end_attempt, read_status, write_json_atomic)
from sweep_files import write_sweep


@pytest.fixture
def prepared(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, grid={"optimizer.epsilon_us": [1.0, 2.0]}))
    points = expand(sweep)
    store = SweepStore(sweep.output)
    store.prepare(sweep, points, resume=False)
    return sweep, points, store


def test_prepare_writes_the_manifest_and_each_points_config(prepared):
    sweep, points, store = prepared
    manifest = store.manifest()
    assert manifest["name"] == "sweep" and [p["id"] for p in manifest["points"]] == [
        p.id for p in points]
    assert os.path.isfile(os.path.join(store.root, "sweep.yaml"))
    d = store.point_dir(points[1].id)
    assert load_config(os.path.join(d, "config.yaml")).to_dict() == points[1].config
    record = json.load(open(os.path.join(d, "point.json"), encoding="utf-8"))
    assert record["overrides"] == {"optimizer.epsilon_us": 2.0} and "config" not in record


def test_an_existing_sweep_is_continued_only_with_resume(prepared, tmp_path):
    sweep, points, store = prepared
    with pytest.raises(ConfigError, match="--resume: .* already holds a sweep; continue it"):
        store.prepare(sweep, points, resume=False)
    store.prepare(sweep, points, resume=True)
    with pytest.raises(ConfigError, match="--resume: .* holds no sweep to resume"):
        SweepStore(str(tmp_path / "empty")).prepare(sweep, points, resume=True)


def test_a_point_is_finished_exactly_when_its_summary_exists(prepared):
    _, points, store = prepared
    pid = points[0].id
    d = store.point_dir(pid)
    assert store.state(pid) is PointState.PENDING
    status = begin_attempt(d, pid)
    assert store.state(pid) is PointState.PENDING            # running is not finished
    write_json_atomic(os.path.join(d, "summary.json"), {"test_accuracy": 0.5})
    assert store.state(pid) is PointState.FINISHED           # even before the status says so
    end_attempt(d, status, AttemptOutcome.FINISHED, 1.0, 0.5)
    assert store.state(pid) is PointState.FINISHED
    assert store.summary(pid) == {"test_accuracy": 0.5}


def test_a_failed_point_is_recorded_with_its_error(prepared):
    _, points, store = prepared
    pid = points[0].id
    d = store.point_dir(pid)
    status = begin_attempt(d, pid)
    end_attempt(d, status, AttemptOutcome.FAILED, 2.0, None, "MappingError: too big", "tb")
    assert store.state(pid) is PointState.FAILED
    s = store.status(pid)
    assert (s.error, s.traceback, s.attempts[0].outcome) == ("MappingError: too big", "tb",
                                                             AttemptOutcome.FAILED)


def test_a_new_attempt_marks_the_cut_off_one_and_clears_what_it_left(prepared):
    _, points, store = prepared
    pid = points[0].id
    d = store.point_dir(pid)
    begin_attempt(d, pid)                                    # then the process dies
    leftovers = ["run.partial.h5", "run.partial.h5.journal", "run.h5", "summary.json",
                 "status.json.tmp-123"]
    for name in leftovers:
        with open(os.path.join(d, name), "wb") as f:
            f.write(b"half")
    status = begin_attempt(d, pid)
    assert [a.outcome for a in status.attempts] == [AttemptOutcome.CUT_OFF,
                                                    AttemptOutcome.RUNNING]
    assert [a.number for a in status.attempts] == [1, 2]
    assert status.attempts[1].pid == os.getpid()
    assert not any(os.path.exists(os.path.join(d, n)) for n in leftovers)
    assert read_status(d, pid).attempts[1].outcome is AttemptOutcome.RUNNING
    assert os.path.exists(os.path.join(d, "config.yaml"))    # the driver's files stay


def test_a_lost_point_is_recorded_failed_with_its_attempt_cut_off(prepared):
    _, points, store = prepared
    pid = points[1].id
    begin_attempt(store.point_dir(pid), pid)
    store.record_failure(pid, "WorkerCrashedError: worker lost after 3 retries", lost=True)
    s = store.status(pid)
    assert s.state is PointState.FAILED and s.error.startswith("WorkerCrashedError")
    assert s.attempts[0].outcome is AttemptOutcome.CUT_OFF and s.attempts[0].ended_utc


def test_a_write_that_fails_half_way_leaves_the_old_file_whole(tmp_path):
    path = str(tmp_path / "summary.json")
    write_json_atomic(path, {"a": 1})

    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot")

    with pytest.raises(RuntimeError):
        write_json_atomic(path, {"a": 2, "b": Unprintable()})
    assert json.load(open(path, encoding="utf-8")) == {"a": 1}
