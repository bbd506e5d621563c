"""A sweep's tables: every figure of every run summary, per point, per epoch, per setting."""
from __future__ import annotations

import csv
import json
import os

import pytest

from hil.sweep.points import expand
from hil.sweep.results import (flatten, point_rows, record_rows, setting_rows,
                               settings_text, write_csv)
from hil.sweep.spec import load_sweep
from hil.sweep.store import (AttemptOutcome, SweepStore, begin_attempt, end_attempt,
                             write_json_atomic)
from sweep_files import write_sweep


def _summary(acc: float, pulses: int, seed: int) -> dict:
    """A run summary's shape, with a nested figure of the kind later summaries add."""
    return {"name": "tiny", "seed": seed, "test_accuracy": acc, "set_pulses": pulses,
            "io": {"largest_batch": 40, "most_pulses_per_device": 8},
            "energy": {"per_image_nj": 80.5 + seed, "ratio": 170.0},
            "per_epoch": [
                {"epoch": 0, "test_accuracy": acc - 0.1, "set_pulses": pulses // 3,
                 "baseline_test_accuracy": None, "phase": "warm"},
                {"epoch": 1, "test_accuracy": acc, "set_pulses": pulses - pulses // 3,
                 "baseline_test_accuracy": None, "phase": "steady"}],
            "state_digest": f"d{seed}"}


def test_flatten_keeps_every_figure_as_one_column():
    flat = flatten(_summary(0.9, 300, 1))
    assert flat["test_accuracy"] == 0.9 and flat["state_digest"] == "d1"
    assert flat["io.largest_batch"] == 40 and flat["energy.per_image_nj"] == 81.5
    assert {k: flat[f"per_epoch.set_pulses.{k}"] for k in
            ("first", "last", "min", "max", "mean")} == {
        "first": 100, "last": 200, "min": 100, "max": 200, "mean": 150.0}
    assert flat["per_epoch.test_accuracy.first"] == pytest.approx(0.8)
    assert flat["per_epoch.phase.last"] == "steady"          # not a number: its last value
    assert not any(k.startswith(("per_epoch.epoch", "per_epoch.baseline")) for k in flat)
    assert flatten({"curve": [3, 1, 2]}) == {"curve.first": 3, "curve.last": 2,
                                             "curve.min": 1, "curve.max": 3, "curve.mean": 2.0}
    assert flatten({"tags": ["a", "b"]}) == {"tags": '["a", "b"]'}


@pytest.fixture
def store_with_results(tmp_path):
    """Two settings × two seeds: three finished, one failed."""
    sweep = load_sweep(write_sweep(tmp_path, grid={"optimizer.refresh.high_us": [8.0, 9.0]},
                                   seeds=[0, 1]))
    points = expand(sweep)
    store = SweepStore(sweep.output)
    store.prepare(sweep, points, resume=False)
    figures = {0: (0.80, 300), 1: (0.84, 340), 2: (0.90, 500)}
    for i, p in enumerate(points):
        d = store.point_dir(p.id)
        status = begin_attempt(d, p.id)
        if i in figures:
            write_json_atomic(os.path.join(d, "summary.json"), _summary(*figures[i], p.seed))
            end_attempt(d, status, AttemptOutcome.FINISHED, 3.0, 2.5)
        else:
            end_attempt(d, status, AttemptOutcome.FAILED, 1.0, None, "ValueError: boom")
    return store, points


def test_one_row_per_point_with_its_keys_status_and_summary(store_with_results):
    store, points = store_with_results
    rows = point_rows(store, points)
    assert [r["point"] for r in rows] == [p.id for p in points]
    assert [r["status"] for r in rows] == ["finished", "finished", "finished", "failed"]
    assert [r["set.optimizer.refresh.high_us"] for r in rows] == [8.0, 8.0, 9.0, 9.0]
    assert rows[3]["error"] == "ValueError: boom" and "test_accuracy" not in rows[3]
    for r, p in zip(rows[:3], points):
        assert {k: r[k] for k in flatten(store.summary(p.id))} == flatten(store.summary(p.id))
        assert (r["sweep.attempts"], r["sweep.seconds"], r["sweep.run_seconds"]) == (1, 3.0,
                                                                                   2.5)


def test_the_csv_reads_back_the_summaries_exact_values(store_with_results, tmp_path):
    store, points = store_with_results
    rows = point_rows(store, points)
    path = str(tmp_path / "results.csv")
    write_csv(path, rows)
    with open(path, newline="", encoding="utf-8") as f:
        back = list(csv.DictReader(f))
    assert len(back) == 4
    s = store.summary(points[1].id)
    assert float(back[1]["test_accuracy"]) == s["test_accuracy"]
    assert float(back[1]["per_epoch.test_accuracy.first"]) == s["per_epoch"][0]["test_accuracy"]
    assert back[1]["state_digest"] == s["state_digest"]
    assert back[3]["test_accuracy"] == "" and back[3]["status"] == "failed"


def test_records_become_a_long_table(store_with_results):
    store, points = store_with_results
    tables = record_rows(store, points)
    assert list(tables) == ["per_epoch"]
    epochs = tables["per_epoch"]
    assert len(epochs) == 6                                     # 3 finished points × 2
    assert [(r["point"], r["index"]) for r in epochs[:2]] == [(points[0].id, 0),
                                                              (points[0].id, 1)]
    assert epochs[1]["set_pulses"] == 200 and epochs[1]["phase"] == "steady"


def test_settings_hold_the_mean_and_spread_over_seeds(store_with_results):
    store, points = store_with_results
    settings = setting_rows(point_rows(store, points))
    assert [(s["label"], s["n"], json.loads(s["seeds"])) for s in settings] == [
        ("high_us=8", 2, [0, 1]), ("high_us=9", 1, [0])]
    first = settings[0]
    assert first["test_accuracy.mean"] == pytest.approx(0.82)
    assert first["test_accuracy.std"] == pytest.approx(0.02 * 2 ** 0.5)   # n − 1
    assert first["set_pulses.mean"] == 320.0
    assert settings[1]["test_accuracy.std"] is None             # one seed: no spread
    assert "seed.mean" not in first and "sweep.seconds.mean" not in first
    text = settings_text(settings, "test_accuracy", "set_pulses").splitlines()
    assert text[0] == "| setting | seeds | test_accuracy (%) | set_pulses |"
    assert text[2] == "| high_us=8 | 2 | 82.00 ± 2.83 | 320 ± 28 |"
    assert text[3] == "| high_us=9 | 1 | 90.00 | 500 |"


def test_the_parquet_table_has_typed_columns(store_with_results, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    from hil.sweep.results import write_parquet

    store, points = store_with_results
    rows = point_rows(store, points)
    path = str(tmp_path / "results.parquet")
    write_parquet(path, rows)
    t = pq.read_table(path)
    assert t.column("test_accuracy").to_pylist() == [r.get("test_accuracy") for r in rows]
    assert str(t.schema.field("set_pulses").type) == "int64"
    assert str(t.schema.field("status").type) == "string"
