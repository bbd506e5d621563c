"""The trainer's state record (hil.trainer_state): a named, versioned layout; a snapshot's
record restores a trainer that is, attribute by attribute, the one that re-ran to it."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import small_config
from drivers.backend import ChipBackend
from hil.backend_url import open_backend
from hil.recorder import Recorder
from hil.replay import ReplayBackend
from hil.replay.verify import SegmentEnd, VerifyRecorder
from hil.run_log import RunLog, RunLogWriter
from hil.trainer_state import (StateField, StateLayout, StateMismatch, TrainerState,
                               object_differences)
from hil.training import MixedPrecisionTrainer, run_experiment

LAYOUT = StateLayout("toy", 2, (StateField("a.count", "<i8"),
                                StateField("a.table", "<u2", (3,)),
                                StateField("a.seconds", "<f8", wall_clock=True)))


def _toy(count: int, table=(1, 2, 3), seconds: float = 0.5) -> TrainerState:
    return TrainerState.build(LAYOUT, 7, np.arange(4, dtype=np.float32),
                              {"w": np.ones((2, 2), np.float32)},
                              {"a.count": count, "a.table": np.array(table),
                               "a.seconds": seconds})


def test_a_layout_round_trips_through_json_and_names_what_differs():
    assert StateLayout.from_json(LAYOUT.to_json()) == LAYOUT
    assert LAYOUT.difference(StateLayout.from_json(LAYOUT.to_json())) is None
    other = StateLayout("toy", 2, LAYOUT.fields[:2] + (StateField("a.more", "<i8"),))
    assert LAYOUT.difference(other) == "field 'a.seconds' is only in the first"
    assert "version 2" in LAYOUT.difference(StateLayout("toy", 3, LAYOUT.fields))
    with pytest.raises(ValueError, match="'a.count' is declared twice"):
        StateLayout("toy", 1, (StateField("a.count", "<i8"),) * 2)
    with pytest.raises(ValueError, match="no '/'"):
        StateField("a/b", "<i8")


def test_a_record_takes_only_values_that_fit_its_layout():
    with pytest.raises(ValueError, match="'a.table': values do not fit <u2"):
        _toy(1, table=(1, 2, 70000))
    with pytest.raises(ValueError, match="'a.table': shape"):
        _toy(1, table=(1, 2))
    with pytest.raises(ValueError, match="'a.count' has no value"):
        TrainerState.build(LAYOUT, 0, np.zeros(1), {}, {"a.table": [0, 0, 0],
                                                        "a.seconds": 0.0})
    with pytest.raises(StateMismatch, match="no field 'b'"):
        _toy(1)["b"]


def test_records_differ_by_every_field_but_wall_clock_ones():
    assert _toy(1).differences(_toy(1, seconds=99.0)) == []
    assert _toy(1).differences(_toy(2)) == ["a.count 1 against 2"]
    assert _toy(1).differences(_toy(1, table=(1, 5, 3))) == ["a.table [1] 2 against 5"]


def test_object_differences_follows_attributes_down_and_compares_floats_bit_for_bit():
    class Part:
        def __init__(self, x):
            self.x = x
            self.train_seconds = x   # wall time: never compared

    class Whole:
        def __init__(self, x):
            self.parts = [Part(np.float32(x)), {"k": Part(x)}]

    assert object_differences(Whole(1.0), Whole(1.0)) == []
    assert object_differences(Whole(0.0), Whole(-0.0)) == [
        "trainer.parts[0].x: np.float32(0.0) against np.float32(-0.0)",
        "trainer.parts[1]['k'].x: 0.0 against -0.0"]
    b = Whole(1.0)
    b.parts[1]["k"].new_state = 3
    assert object_differences(Whole(1.0), b) == [
        "trainer.parts[1]['k'].new_state: only on the restored side"]


# --- the MLP trainer ---------------------------------------------------------------------------
def _cfg():
    """Two epochs with the fp32 baseline, refreshes, and snapshots inside both epochs."""
    return small_config(seed=5, data={"train_examples": 200, "test_examples": 100},
                        training={"epochs": 2, "baseline": True},
                        optimizer={"refresh": {"period_steps": 40}},
                        log={"snapshot_every_steps": 70, "flush_every_steps": 50})


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    cfg = _cfg()
    path = str(tmp_path_factory.mktemp("state") / "run.h5")
    run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()), RunLogWriter(path, cfg),
                   data=small_data)
    return cfg, path, small_data.head(cfg.data.train_examples, cfg.data.test_examples,
                                      cfg.data.validation_examples)


def _rerun_to(cfg, log: RunLog, snapshot: int, data) -> MixedPrecisionTrainer:
    """A trainer re-run from step 0 on the log's replay to `snapshot`, and stopped there
    (the epoch loop of run_experiment)."""
    rec = VerifyRecorder(log, None, snapshot)
    trainer = MixedPrecisionTrainer(cfg, ReplayBackend(log, stop=log.snapshot_position(
        snapshot)), rec)
    trainer.initialize()
    try:
        for epoch in range(cfg.training.epochs):
            res = trainer.train_epoch(data, epoch)
            res.set_baseline(trainer.baseline.train_epoch(data, epoch))
            trainer.finish_epoch(res)
    except SegmentEnd:
        return trainer
    raise AssertionError(f"the re-run never took snapshot {snapshot}")


@pytest.mark.parametrize("snapshot", [2, 4])   # step 140 (epoch 0), step 280 (epoch 1)
def test_restoring_a_snapshot_equals_re_running_to_it(trained, snapshot):
    """Every attribute of the trainer, down through the core, the cache, χ, the counters,
    the data position, the finished epochs and the baseline: a state kept anywhere outside
    the record shows up here."""
    cfg, path, data = trained
    with RunLog(path) as log:
        rerun = _rerun_to(cfg, log, snapshot, data)
        state = log.snapshot_state(snapshot)
        assert state.step == rerun.step == 70 * snapshot
        restored = MixedPrecisionTrainer(cfg, ReplayBackend(log, start=log.snapshot_position(
            snapshot)), VerifyRecorder(log, snapshot, None))
        restored.resume_from(state)
    assert object_differences(rerun, restored, outside=(ChipBackend, Recorder)) == []
    assert restored.capture_state().differences(state) == []
    assert len(restored.epoch_results) == (snapshot * 70) // 200   # an epoch is 200 steps


def test_a_record_of_another_layout_is_refused(trained):
    cfg, path, _ = trained
    with RunLog(path) as log:
        state = log.snapshot_state(1)
    no_baseline = small_config(seed=5, data={"train_examples": 200, "test_examples": 100},
                               training={"epochs": 2, "baseline": False})
    trainer = MixedPrecisionTrainer(no_baseline, open_backend("sim://", cfg.sim_chip_spec()))
    with pytest.raises(StateMismatch, match="field 'baseline.layer0' is only in the first"):
        trainer.restore_state(state)
