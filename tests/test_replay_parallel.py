"""`pcm-hil replay --verify --workers N` (hil.replay.parallel): a log split at its snapshots,
the segments checked side by side in real worker processes (and on a real local Ray
cluster), give the serial verdict - its counts when the log matches, its first divergence
when it does not."""
from __future__ import annotations

import os
import shutil
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_log_fakes import as_schema_1_2, tamper_one_pulse  # noqa: E402

from conftest import small_config  # noqa: E402
from hil.backend_url import open_backend  # noqa: E402
from hil.cli import main as cli_main  # noqa: E402
from hil.cluster import Cluster, ClusterOptions, ray_available  # noqa: E402
from hil.replay import ReplayDivergence, verify_run  # noqa: E402
from hil.replay.parallel import plan_segments, verify_parallel  # noqa: E402
from hil.run_log import RunLog, RunLogWriter  # noqa: E402
from hil.training import run_experiment  # noqa: E402

COUNTS = ("batches_checked", "reads_served", "matvecs_served", "step_metrics_checked",
          "epoch_metrics_checked", "snapshots_checked")


def test_segments_are_cut_at_snapshots_with_a_state_about_equal_in_steps():
    steps = [0, 50, 100, 150, 200, 250, 300, 300]
    plan = plan_segments(steps, [True] * 8, 3)
    assert [(s.start, s.stop, s.first_step, s.last_step) for s in plan] == [
        (None, 2, 0, 100), (2, 4, 100, 200), (4, None, 200, 300)]
    # never at step 0 or at the last step; a snapshot without a state record is no cut
    plan = plan_segments(steps, [True, True, False, True, True, True, True, True], 3)
    assert [(s.first_step, s.last_step) for s in plan] == [(0, 50), (50, 200), (200, 300)]
    assert len(plan_segments(steps, [True] * 8, 50)) == 6     # one per stretch of 50 steps
    assert len(plan_segments([0, 300], [True, True], 4)) == 1


def _copy(src: str, folder, name: str) -> str:
    dst = str(folder / name)
    shutil.copyfile(src, dst)
    return dst


@pytest.fixture(scope="module")
def run_log(small_data, tmp_path_factory):
    """Two epochs of 300 steps with the fp32 baseline; a snapshot every 50 steps."""
    cfg = small_config(seed=11, data={"train_examples": 300, "test_examples": 100},
                       training={"epochs": 2, "baseline": True},
                       optimizer={"refresh": {"period_steps": 40}},
                       log={"snapshot_every_steps": 50, "flush_every_steps": 60})
    path = str(tmp_path_factory.mktemp("parallel") / "run.h5")
    run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()), RunLogWriter(path, cfg),
                   data=small_data)
    return path


@pytest.fixture(scope="module")
def serial(run_log, small_data):
    report = verify_run(run_log, data=small_data)
    assert report.ok, report.message
    return report


def test_a_split_verification_checks_exactly_what_the_serial_one_does(run_log, serial):
    report = verify_parallel(run_log, workers=2, segments=4)
    assert report.ok, report.message
    assert report.segments == 4 and report.workers == 2 and len(report.parts) == 4
    assert {k: getattr(report, k) for k in COUNTS} == {k: getattr(serial, k) for k in COUNTS}
    assert report.message.endswith(", in 4 segments")
    assert report.message.startswith(serial.message.rsplit(" and the summary", 1)[0])
    # each segment read only its own part of the log
    assert sum(p.batches_checked for p in report.parts) == serial.batches_checked
    assert all(p.batches_checked < serial.batches_checked for p in report.parts)


def _update_batch_in(log: RunLog, first_step: int, last_step: int) -> int:
    """An update batch in the middle of the steps (first_step, last_step]."""
    pb = log.pulse_batches()
    mid = (first_step + last_step) // 2
    ok = np.flatnonzero((pb["purpose"] == log.purpose_code("update")) & (pb["step"] > mid)
                        & (pb["step"] <= last_step))
    return int(ok[0])


def _same_verdict(parallel, serial) -> None:
    assert not parallel.ok and not serial.ok
    assert isinstance(serial.divergence, ReplayDivergence)
    p, s = parallel.divergence, serial.divergence
    assert (type(p), str(p), p.step, p.command_index, p.device) == \
        (type(s), str(s), s.step, s.command_index, s.device)
    assert parallel.message.startswith(serial.message)


def test_a_divergence_in_the_middle_of_a_later_segment_is_the_serial_one(run_log, small_data,
                                                                        tmp_path):
    with RunLog(run_log) as log:
        plan = plan_segments(log.snapshots()["step"], [True] * log.counts["snapshots"], 4)
        third = plan[2]
        batch = _update_batch_in(log, third.first_step, third.last_step)
    path = _copy(run_log, tmp_path, "late.h5")
    step, seq, dev = tamper_one_pulse(path, batch)
    serial = verify_run(path, data=small_data)
    assert (serial.divergence.step, serial.divergence.command_index,
            serial.divergence.device) == (step, seq, dev)
    parallel = verify_parallel(path, workers=2, segments=4)
    _same_verdict(parallel, serial)
    assert parallel.message.endswith(f"({third.describe()})")


def test_the_first_of_several_failing_segments_gives_the_verdict(run_log, small_data,
                                                                 tmp_path):
    """A state record changed at a cut: the segment ending there fails on it (as the serial
    re-run does), whatever the later segment restarted from it makes of it."""
    with RunLog(run_log) as log:
        plan = plan_segments(log.snapshots()["step"], [True] * log.counts["snapshots"], 4)
        cut = plan[1].stop
        late = _update_batch_in(log, plan[3].first_step, plan[3].last_step)
    path = _copy(run_log, tmp_path, "two.h5")
    tamper_one_pulse(path, late)
    with h5py.File(path, "r+") as f:
        f["snapshots/state/core.refreshes"][cut] += 1
    serial = verify_run(path, data=small_data)
    assert f"snapshot {cut}: trainer state core.refreshes" in serial.message
    parallel = verify_parallel(path, workers=2, segments=4)
    _same_verdict(parallel, serial)
    assert "later segment(s) failed too" in parallel.message


def test_an_older_log_is_verified_in_one_re_run_with_a_note(run_log, tmp_path, capsys):
    path = _copy(run_log, tmp_path, "old.h5")
    with h5py.File(path, "r+") as f:
        as_schema_1_2(f)
    with RunLog(path) as log:
        assert log.schema_version == "1.2" and not log.has_state
    capsys.readouterr()
    assert cli_main(["replay", path, "--verify", "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ("note: verified in one re-run: its schema (1.2) keeps no trainer state in its "
            "snapshots (1.3 logs do)") in out
    assert "replay matches the log" in out and "segments" not in out


def test_the_command_line_refuses_split_options_without_verify(run_log, capsys):
    """(--verify --workers 2 itself: the older log above, and the Ray test below.)"""
    capsys.readouterr()
    assert cli_main(["replay", run_log, "--workers", "2"]) == 1
    assert "--workers: only goes with --verify" in capsys.readouterr().err
    assert cli_main(["replay", run_log, "--verify", "--ray", "--address", "auto"]) == 1
    assert "--ray starts a cluster on this machine, --address joins one" in \
        capsys.readouterr().err


@pytest.mark.skipif(not ray_available(), reason="Ray is not installed "
                    "(pip install 'pcm-hil[cluster]'); needs a real local Ray cluster")
def test_on_a_local_ray_cluster_the_verdicts_are_the_serial_ones(run_log, serial, small_data,
                                                                tmp_path, capsys):
    with RunLog(run_log) as log:
        plan = plan_segments(log.snapshots()["step"], [True] * log.counts["snapshots"], 4)
        batch = _update_batch_in(log, plan[3].first_step, plan[3].last_step)
    bad = _copy(run_log, tmp_path, "bad.h5")
    tamper_one_pulse(bad, batch)
    with Cluster(ClusterOptions(cpus=2, object_store_mb=100)) as cluster:
        assert cluster.cpus == 2.0
        good = verify_parallel(run_log, workers=2, runner=cluster)
        assert good.ok, good.message
        assert {k: getattr(good, k) for k in COUNTS} == {k: getattr(serial, k) for k in COUNTS}
        capsys.readouterr()
        assert cli_main(["replay", bad, "--verify", "--workers", "2", "--address",
                         cluster.address, "--no-progress"]) == 1
    out = capsys.readouterr().out
    expected = verify_run(bad, data=small_data)
    assert str(expected.divergence) in out and plan[3].describe() in out
