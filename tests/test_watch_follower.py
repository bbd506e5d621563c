"""LogFollower keeps the page's data equal to the log at every commit, reading only what
each commit added, and never writes to the log."""
import hashlib
import os

import numpy as np

from hil.run_log import RunLog, RunLogWriter
from hil.watch import model as m
from hil.watch.conductance import layer_histograms, layer_groups, region_means
from hil.watch.follower import LogFollower
from watch_logs import STATION, LogBuilder, config, finished_log, mlp_layout, torch_layout


def _expected(path):
    """What a fresh reader of the log computes, independently of the follower."""
    with RunLog(path) as lg:
        g = lg.conductance(lg.complete_step)
        return {"g": g, "step": lg.last_step, "layout": lg.layout,
                "windows": m.step_windows(lg.step_metrics(), *m.reset_rows(lg.pulse_batches()),
                                          lg.last_step),
                "addresses": lg.addresses}


def test_following_a_live_log_commit_by_commit_equals_reading_it_fresh(tmp_path):
    path = str(tmp_path / "live.h5")
    b = LogBuilder(path, torch_layout())
    f = LogFollower(path)
    assert f.refresh() and f.model.version == 1
    assert not f.refresh()                          # nothing new committed
    for k in range(4):
        b.steps(40)
        if k == 1:
            b.end_epoch()
        b.commit()
        assert f.refresh(), k
        want = _expected(path)
        md = f.model
        assert md.version == k + 2 and md.header.step == want["step"]
        for h, w in zip(md.histograms,
                        layer_histograms(want["g"], layer_groups(want["layout"]), 0.1, 20.0)):
            assert h.name == w.name and np.array_equal(h.plus, w.plus) \
                and np.array_equal(h.minus, w.minus)
        assert np.allclose(md.region_g, region_means(md.grid, want["addresses"], want["g"]),
                           equal_nan=True)
        for name in ("set_pulses", "resets", "refreshes", "loss"):
            assert np.allclose(getattr(md.windows, name), getattr(want["windows"], name),
                               equal_nan=True), name
    b.finish()
    assert f.refresh() and f.model.header.status == "completed"


def test_a_log_whose_run_has_not_begun_is_waited_for(tmp_path):
    path = str(tmp_path / "early.h5")
    w = RunLogWriter(path, config(), journal=False)
    f = LogFollower(path)
    assert not f.refresh() and f.model is None
    assert "never started" in f.waiting or "before logging began" in f.waiting
    layout = mlp_layout()
    w.begin(config=config().to_dict(), provenance={}, layout=layout)
    assert f.refresh() and f.model is not None and f.waiting is None
    w.finish("failed", "RuntimeError: link lost")
    w.close()
    assert f.refresh()
    assert (f.model.header.status, f.model.header.reason) == ("failed",
                                                              "RuntimeError: link lost")
    assert not LogFollower(str(tmp_path / "missing.h5")).refresh()


def test_following_never_writes_to_the_log(tmp_path):
    path = finished_log(str(tmp_path / "done.h5"))
    before = (hashlib.sha256(open(path, "rb").read()).hexdigest(), os.stat(path).st_mtime_ns)
    f = LogFollower(path)
    f.refresh()
    f.refresh(force=True)
    after = (hashlib.sha256(open(path, "rb").read()).hexdigest(), os.stat(path).st_mtime_ns)
    assert before == after


def test_the_header_says_where_the_run_is_and_when_it_will_end(tmp_path):
    path = str(tmp_path / "r.h5")
    b = LogBuilder(path, mlp_layout(), cfg=config(train_examples=100, epochs=2),
                   provenance={"station": STATION,
                               "resume": {"segment": 2, "segments": [
                                   {"log": "r0.h5", "status": "aborted", "reason": "Ctrl-C",
                                    "complete_step": 60}]}})
    b.steps(100, monitor={"vdd.current_a": 0.1, "socket.temperature_c": 25.0})
    b.end_epoch()
    b.steps(30, monitor={"vdd.current_a": 0.1, "socket.temperature_c": 25.0})
    b.commit()
    f = LogFollower(path)
    f.refresh()
    h = f.model.header
    assert (h.status, h.step, h.epoch, h.epochs, h.examples, h.examples_total, h.segment) == \
        ("running", 130, 2, 2, 130, 200, 2)
    assert h.examples_per_s > 0 and h.eta_s == (200 - 130) / h.examples_per_s
    kinds = [e.kind for e in f.model.events]
    assert kinds == ["status", "resume"]
    b.poll({"vdd.current_a": 0.1, "socket.temperature_c": 35.0})
    b.poll({"vdd.current_a": 0.1, "socket.temperature_c": 35.5})
    b.commit()
    f.refresh()
    h = f.model.header
    assert h.status == "paused" and "socket.temperature_c = 35.5" in h.reason
    assert [e.kind for e in f.model.events][-2:] == ["monitor", "pause"]
    b.finish("aborted", "stopped from the live view after step 130")
    f.refresh()
    assert (f.model.header.status, f.model.header.eta_s) == ("aborted", None)


def test_bad_devices_come_from_the_config_and_its_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("300\n301\n")
    cfg = config(bad=[7, 8])
    d = cfg.to_dict()
    d["mapping"]["bad_devices_file"] = str(bad)
    from hil.config import config_from_dict
    path = finished_log(str(tmp_path / "r.h5"), mlp_layout(start=10),
                        cfg=config_from_dict(d))
    f = LogFollower(path)
    f.refresh()
    assert f.model.bad["address"].tolist() == [7, 8, 300, 301] and f.model.header.notes == ()
    bad.unlink()
    f2 = LogFollower(path)
    f2.refresh()
    assert f2.model.bad["address"].tolist() == [7, 8]
    assert "bad devices from" in f2.model.header.notes[0]


def test_the_thread_follows_until_stopped(tmp_path):
    path = str(tmp_path / "r.h5")
    b = LogBuilder(path, mlp_layout())
    f = LogFollower(path).start(poll_s=0.02)
    try:
        assert f.wait_for_model(10).header.step == 0
        b.steps(25)
        b.commit()
        with f.changed:
            f.changed.wait_for(lambda: f.model.header.step == 25, timeout=10)
        assert f.model.header.step == 25
    finally:
        f.stop()
        b.finish()
