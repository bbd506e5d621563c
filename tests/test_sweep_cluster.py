"""Sweeps on a real local Ray cluster (two worker CPUs): tasks and their failures, a sweep's
table, a worker killed mid-point, a driver killed mid-sweep and resumed.

One cluster serves the whole file (starting Ray takes seconds); the points are tiny runs.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from hil.cluster import Cluster, ClusterOptions, Task, ray_available
from hil.run_log import RunLog
from hil.sweep.points import expand
from hil.sweep.runner import run_sweep
from hil.sweep.spec import load_sweep
from hil.sweep.store import AttemptOutcome, SweepStore, read_json
from sweep_files import write_sweep

pytestmark = pytest.mark.skipif(
    not ray_available(), reason="Ray is not installed (pip install 'pcm-hil[cluster]'); "
                                "these tests need a real local Ray cluster")

GRID = {"optimizer.refresh.high_us": [9.5, 10.0]}   # at or above the table top (9.38 µS)


def _quiet(_msg: str) -> None:
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster():
    with Cluster(ClusterOptions(cpus=2, object_store_mb=100)) as c:
        yield c


def test_the_embedded_cluster_is_this_machines_only(cluster):
    assert cluster.embedded and cluster.cpus == 2.0
    assert cluster.address.startswith("127.0.0.1:")


def test_a_tasks_own_error_is_its_result_and_the_others_go_on(cluster):
    results = {r.key: r for r in cluster.run([Task("bad", math.sqrt, (-1.0,)),
                                              Task("good", math.sqrt, (4.0,))])}
    assert results["good"].ok and results["good"].value == 2.0
    bad = results["bad"]
    assert not bad.ok and not bad.lost
    assert bad.error == "ValueError: math domain error" and "Traceback" in bad.traceback


def test_a_task_whose_worker_keeps_dying_is_lost_after_its_retries(cluster):
    with Cluster(ClusterOptions(max_retries=1)) as joined:   # the same connection
        (r,) = joined.run([Task("dies", os._exit, (3,))])
    assert not r.ok and r.lost and "worker lost after 1 retries" in r.error


# --- a four-point sweep during which one point's worker is SIGKILLed ------------------------
@pytest.fixture(scope="module")
def killed_sweep(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("killed")
    sweep = load_sweep(write_sweep(tmp, name="killed", grid=GRID, seeds=[0, 1]))
    points = expand(sweep)
    store = SweepStore(sweep.output)
    killed = {}
    stop = threading.Event()

    def kill_a_running_point() -> None:
        while not stop.is_set():
            for p in points:
                d = store.point_dir(p.id)
                st = read_json(os.path.join(d, "status.json")) if os.path.isdir(d) else None
                if st and st["state"] == "running" and os.path.exists(
                        os.path.join(d, "run.partial.h5")):
                    pid = st["attempts"][-1]["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed[p.id] = pid
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_running_point)
    killer.start()
    try:
        report = run_sweep(sweep, points, ClusterOptions(), progress=False, say=_quiet)
    finally:
        stop.set()
        killer.join()
    return store, points, report, killed


def test_a_four_point_sweep_completes_and_its_table_holds_every_summary(killed_sweep):
    store, points, report, _ = killed_sweep
    assert (report.points, report.finished, report.failed, report.pending) == (4, 4, 0, 0)
    with open(os.path.join(store.root, "results.csv"), newline="", encoding="utf-8") as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert set(rows) == {p.id for p in points}
    for p in points:
        row, summary = rows[p.id], store.summary(p.id)
        assert row["status"] == "finished"
        assert float(row["set.optimizer.refresh.high_us"]) == p.overrides[
            "optimizer.refresh.high_us"]
        for k, v in summary.items():
            if isinstance(v, bool) or v is None or isinstance(v, (dict, list)):
                continue
            assert (float(row[k]) if isinstance(v, (int, float)) else row[k]) == v, k
        assert float(row["io.largest_batch"]) == summary["io"]["largest_batch"]
        assert float(row["per_epoch.set_pulses.max"]) == max(
            e["set_pulses"] for e in summary["per_epoch"])
    for name in ("per_epoch.csv", "settings.csv", "pareto.png", "seeds.png"):
        assert os.path.getsize(os.path.join(store.root, name)) > 0


def test_a_worker_killed_mid_point_loses_no_point(killed_sweep):
    store, _, _, killed = killed_sweep
    assert len(killed) == 1
    (point, pid), = killed.items()
    assert not _alive(pid)
    status = store.status(point)
    assert [a.outcome for a in status.attempts] == [AttemptOutcome.CUT_OFF,
                                                    AttemptOutcome.FINISHED]
    assert status.attempts[1].pid != pid
    d = store.point_dir(point)
    assert sorted(n for n in os.listdir(d) if n.startswith("run.")) == ["run.h5"]
    with RunLog(os.path.join(d, "run.h5")) as log:
        assert log.status.status == "completed"
        assert log.summary["state_digest"] == store.summary(point)["state_digest"]


def test_a_point_gives_the_digest_of_its_config_run_alone(killed_sweep, tmp_path):
    from hil.cli import main

    store, _, _, killed = killed_sweep
    (point, _), = killed.items()
    out = tmp_path / "alone.json"
    assert main(["train", "--config", os.path.join(store.point_dir(point), "config.yaml"),
                 "--no-log", "--no-progress", "--summary-json", str(out)]) == 0
    alone = json.loads(out.read_text(encoding="utf-8"))
    assert alone["state_digest"] == store.summary(point)["state_digest"]


# --- failures and resumption ---------------------------------------------------------------
def test_a_failed_point_is_recorded_and_retried_only_when_asked(cluster, tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, name="failing",
                                   variants=[{"chip.cols": 256}, {"chip.rows": 8}]))
    points = expand(sweep)
    good, bad = points
    store = SweepStore(sweep.output)
    first = run_sweep(sweep, points, ClusterOptions(), progress=False, say=_quiet)
    assert (first.finished, first.failed) == (1, 1)
    with open(os.path.join(store.root, "results.csv"), newline="", encoding="utf-8") as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert rows[bad.id]["status"] == "failed"
    assert rows[bad.id]["error"] == store.status(bad.id).error != ""
    assert rows[good.id]["status"] == "finished" and rows[good.id]["error"] == ""
    again = run_sweep(sweep, points, ClusterOptions(), resume=True, progress=False,
                      say=_quiet)
    assert again.ran == 0 and len(store.status(bad.id).attempts) == 1
    retried = run_sweep(sweep, points, ClusterOptions(), resume=True, retry_failed=True,
                        progress=False, say=_quiet)
    assert retried.ran == 1 and retried.failed == 1
    assert len(store.status(bad.id).attempts) == 2
    assert len(store.status(good.id).attempts) == 1


def test_a_killed_driver_is_resumed_running_only_what_was_missing(cluster, tmp_path):
    path = write_sweep(tmp_path, name="driver", grid={"optimizer.epsilon_us": [2.0]},
                       seeds=[0, 1, 2])
    sweep = load_sweep(path)
    points = expand(sweep)
    store = SweepStore(sweep.output)
    driver = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "sweep", str(path), "--address", cluster.address,
         "--max-parallel", "1", "--no-progress"], cwd=str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: any(store.summary(p.id) for p in points) or driver.poll() is not None,
              120, "the first point to finish")
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    assert driver.returncode == -signal.SIGKILL

    def running_pids():
        return [a.pid for p in points for a in store.status(p.id).attempts
                if a.outcome is AttemptOutcome.RUNNING]

    # The dead driver's points die with it: nothing writes into the folder any more.
    _wait(lambda: not any(_alive(pid) for pid in running_pids()), 30,
          "the killed driver's workers to end")
    finished = {p.id: os.stat(os.path.join(store.point_dir(p.id), "summary.json")).st_mtime_ns
                for p in points if store.summary(p.id)}
    assert 0 < len(finished) < len(points)
    resumed_at = time.time()
    report = run_sweep(sweep, points, ClusterOptions(), resume=True, progress=False,
                       say=_quiet)
    assert report.ran == len(points) - len(finished)
    assert report.finished == len(points)
    for p in points:
        attempts = store.status(p.id).attempts
        if p.id in finished:
            assert len(attempts) == 1
            assert os.stat(os.path.join(store.point_dir(p.id), "summary.json")
                           ).st_mtime_ns == finished[p.id]
        else:
            assert attempts[-1].outcome is AttemptOutcome.FINISHED
            started = attempts[-1].started_utc
            assert time.mktime(time.strptime(started[:19], "%Y-%m-%dT%H:%M:%S")) \
                - time.timezone >= int(resumed_at) - 1
