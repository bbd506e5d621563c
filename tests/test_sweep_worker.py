"""One sweep point on a worker: an ordinary run, idempotent across attempts."""
from __future__ import annotations

import json
import os

import pytest

from hil.backend_url import open_backend
from hil.run_log import RunLog
from hil.sweep.points import expand
from hil.sweep.spec import load_sweep
from hil.sweep.store import AttemptOutcome, PointState, SweepStore, begin_attempt
from hil.sweep.worker import PointJob, run_point
from hil.training import run_experiment
from sweep_files import write_sweep


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker")
    sweep = load_sweep(write_sweep(tmp, grid={"optimizer.epsilon_us": [1.5]},
                                   variants=[{"chip.cols": 256}, {"chip.rows": 8}]))
    points = expand(sweep)
    store = SweepStore(sweep.output)
    store.prepare(sweep, points, resume=False)
    return store, points


def _job(store, point) -> PointJob:
    return PointJob(point.id, store.point_dir(point.id), point.config)


@pytest.fixture(scope="module")
def finished(sweep_folder):
    """The good point, run after a killed attempt left a half-written log behind."""
    store, points = sweep_folder
    p = points[0]
    d = store.point_dir(p.id)
    begin_attempt(d, p.id)
    for name in ("run.partial.h5", "run.partial.h5.journal"):
        with open(os.path.join(d, name), "wb") as f:
            f.write(b"\x89HDF half a file")
    return store, p, run_point(_job(store, p))


def test_a_point_leaves_its_run_log_summary_and_status(finished):
    store, p, summary = finished
    d = store.point_dir(p.id)
    assert store.state(p.id) is PointState.FINISHED
    assert json.load(open(os.path.join(d, "summary.json"), encoding="utf-8")) == json.loads(
        json.dumps(summary))
    with RunLog(os.path.join(d, "run.h5")) as log:
        assert log.status.status == "completed"
        assert log.summary["state_digest"] == summary["state_digest"]
    s = store.status(p.id)
    assert s.attempts[-1].outcome is AttemptOutcome.FINISHED
    assert s.attempts[-1].run_seconds <= s.attempts[-1].seconds


def test_a_killed_attempts_partial_log_is_replaced_never_used(finished):
    store, p, _ = finished
    d = store.point_dir(p.id)
    assert sorted(n for n in os.listdir(d) if n.startswith("run.")) == ["run.h5"]
    assert [a.outcome for a in store.status(p.id).attempts] == [AttemptOutcome.CUT_OFF,
                                                                AttemptOutcome.FINISHED]


def test_a_point_gives_the_digest_of_the_same_config_run_alone(finished):
    _, p, summary = finished
    cfg = p.experiment()
    with open_backend(cfg.chip.backend, cfg.sim_chip_spec()) as chip:
        alone = run_experiment(cfg, chip)
    assert alone["state_digest"] == summary["state_digest"]
    assert alone["test_accuracy"] == summary["test_accuracy"]


def test_a_failing_point_records_its_error(sweep_folder):
    store, points = sweep_folder
    p = points[1]                                     # 8 rows: the network does not fit
    with pytest.raises(Exception) as e:
        run_point(_job(store, p))
    s = store.status(p.id)
    assert store.state(p.id) is PointState.FAILED
    assert s.error == f"{type(e.value).__name__}: {e.value}"
    assert "Traceback" in s.traceback
    assert not os.path.exists(os.path.join(store.point_dir(p.id), "summary.json"))
