"""The live view's figures are functions of the run log: windows over steps, per-epoch
series, monitor bands and excursions, status, resumed segments and events."""
import numpy as np
import pytest

from hil.run_log import RunLog
from hil.watch import model as m
from watch_logs import STATION, LogBuilder, finished_log, mlp_layout


@pytest.mark.parametrize("last,width", [(0, 1), (1, 1), (400, 1), (401, 2), (1000, 5),
                                        (2001, 10), (60000, 200), (1_200_000, 5000)])
def test_window_width_is_the_smallest_1_2_5_number_giving_at_most_400_windows(last, width):
    assert m.window_width(last) == width
    assert -(-last // width) <= m.TARGET_WINDOWS


def test_short_run_windows_are_the_steps_themselves(tmp_path):
    with RunLog(finished_log(str(tmp_path / "r.h5"), epochs=1, steps_per_epoch=30)) as lg:
        sm = lg.step_metrics()
        w = m.step_windows(sm, *m.reset_rows(lg.pulse_batches()))
        pb = lg.pulse_batches()
    assert w.width == 1 and w.start.tolist() == list(range(1, 31))
    assert np.array_equal(w.set_pulses, sm["set_pulses"])
    assert np.array_equal(w.refreshes, sm["refreshes"])
    assert np.allclose(w.loss, sm["loss"])
    assert np.array_equal(w.train_accuracy, sm["correct"] / sm["examples"])
    resets = np.zeros(31)
    sel = (pb["kind"] == 2) & (pb["step"] > 0)
    np.add.at(resets, pb["step"][sel], pb["count"][sel])
    assert np.array_equal(w.resets, resets[1:])   # step 0's initial RESET is not drawn


def test_long_run_windows_sum_and_average_the_steps_they_hold(tmp_path):
    with RunLog(finished_log(str(tmp_path / "r.h5"), epochs=2, steps_per_epoch=450)) as lg:
        sm = lg.step_metrics()
        w = m.step_windows(sm, *m.reset_rows(lg.pulse_batches()))
    assert w.width == 5 and w.start.size == 180 and w.stop[-1] == 900
    assert np.array_equal(w.set_pulses, sm["set_pulses"].reshape(-1, 5).sum(1))
    assert np.allclose(w.loss, sm["loss"].reshape(-1, 5).mean(1))
    assert np.allclose(w.train_accuracy, sm["correct"].reshape(-1, 5).sum(1) / 5)
    assert w.resets.sum() == 4 * (900 // 7) and np.all(w.steps == 5)


def test_epoch_series_has_every_accuracy_logged_and_the_last_step_of_each_epoch(tmp_path):
    b = LogBuilder(str(tmp_path / "r.h5"), mlp_layout())
    b.steps(20)
    b.end_epoch()                                  # no validation in epoch 1
    b.steps(20)
    b.end_epoch(validation_accuracy=0.55)
    b.finish()
    with RunLog(b.w.path) as lg:
        ep = m.epoch_series(lg.epoch_metrics(), lg.step_metrics())
    assert list(ep.accuracy) == ["train_accuracy", "validation_accuracy", "test_accuracy",
                                 "baseline_test_accuracy"]
    assert ep.epoch.tolist() == [1, 2] and ep.end_step.tolist() == [20.0, 40.0]
    assert np.isnan(ep.accuracy["validation_accuracy"][0])
    assert ep.accuracy["validation_accuracy"][1] == 0.55
    assert list(ep.loss) == ["train_loss"]
    assert m.accuracy_label("validation_accuracy") == "validation"
    assert m.accuracy_label("top5_accuracy") == "top5"


def test_bands_come_from_the_station_in_the_provenance():
    bands = m.monitor_bands({"station": STATION})
    assert bands["vdd.current_a"] == m.Band(0.0, 0.4, "abort")
    assert bands["socket.temperature_c"] == m.Band(20.0, 30.0, "pause")
    assert m.monitor_bands({}) == {}
    band = bands["socket.temperature_c"]
    assert band.outside(np.array([19.9, 20.0, 30.0, 30.1, np.nan])).tolist() == \
        [True, False, False, True, True]


def _paused_log(path, resume: bool = True):
    """Temperature leaves its band at step 30: the run pauses (3 polls at step 30)."""
    b = LogBuilder(path, mlp_layout(), provenance={"station": STATION})
    b.steps(29, monitor={"vdd.current_a": 0.1, "socket.temperature_c": 25.0})
    b.steps(1, monitor={"vdd.current_a": 0.1, "socket.temperature_c": 31.5})
    b.poll({"vdd.current_a": 0.1, "socket.temperature_c": 31.0})
    b.poll({"vdd.current_a": 0.1, "socket.temperature_c": 30.5})
    if resume:
        b.poll({"vdd.current_a": 0.1, "socket.temperature_c": 26.0})
        b.steps(5, monitor={"vdd.current_a": 0.1, "socket.temperature_c": 25.0})
    b.commit()
    return b


def test_an_excursion_is_one_event_and_repeated_polls_are_a_pause(tmp_path):
    b = _paused_log(str(tmp_path / "r.h5"))
    with RunLog(b.w.path) as lg:
        mon = lg.monitor_readings()
        bands = m.monitor_bands(lg.provenance)
    ev = m.monitor_events(mon, bands)
    assert [(e.step, e.kind) for e in ev] == [(30, "monitor"), (30, "pause")]
    assert "socket.temperature_c = 31.5 outside [20, 30] (pause); 3 reading(s)" in ev[0].text
    assert "read 4 times" in ev[1].text
    assert m.paused_now(mon, bands) is None        # back in band: running again
    traces = {t.label: t for t in m.monitor_traces(mon, bands)}
    t = traces["socket.temperature_c"]
    assert t.rows == 38 and t.out_of_band == 3
    assert np.array_equal(t.value, mon["socket.temperature_c"])


def test_a_run_still_out_of_band_at_its_last_polls_is_paused(tmp_path):
    b = _paused_log(str(tmp_path / "r.h5"), resume=False)
    with RunLog(b.w.path) as lg:
        why = m.paused_now(lg.monitor_readings(), m.monitor_bands(lg.provenance))
    assert why == "socket.temperature_c = 30.5 out of band at step 30"


def test_long_traces_are_thinned_keeping_their_extremes():
    step = np.arange(100_000)
    v = np.full(step.size, 25.0)
    v[77_777] = 99.0
    s, t = m.thin(step, v, limit=400)
    assert s.size == 400 and t.max() == 99.0 and t.min() == 25.0


def test_status_rows_and_resumed_segments_are_events():
    from hil.run_log import RunStatus
    hist = [RunStatus("running", None, None, 0, 10.0),
            RunStatus("aborted", "stopped from the live view after step 7", None, 7, 20.0)]
    ev = m.status_events(hist)
    assert [(e.step, e.text) for e in ev] == [
        (0, "run started"), (7, "aborted: stopped from the live view after step 7")]
    prov = {"resume": {"segment": 3, "base": "q", "segments": [
        {"log": "q.h5", "status": "aborted", "reason": "Ctrl-C", "complete_step": 120},
        {"log": "q-2.h5", "status": "running", "reason": None, "complete_step": 300}]}}
    segs = m.resume_segments(prov)
    assert [(s.index, s.log, s.complete_step) for s in segs] == [(1, "q.h5", 120),
                                                                 (2, "q-2.h5", 300)]
    ev = m.segment_events(segs)
    assert ev[0].step == 120 and "segment 1 (q.h5) aborted (Ctrl-C)" in ev[0].text
    assert m.merge_events(ev[::-1], m.status_events(hist))[0].step == 0


def test_logged_events_of_any_record_shape_become_events():
    from dataclasses import dataclass

    @dataclass
    class Rec:
        step: int
        time_unix: float
        kind: str
        text: str

    a = m.logged_events([Rec(5, 1.0, "pause", "temperature high")])
    b = m.logged_events({"step": np.array([5]), "time_unix": np.array([1.0]),
                         "kind": np.array([b"pause"]), "message": np.array([b"temperature high"])})
    assert a == b == [m.Event(5, 1.0, "pause", "temperature high")]


def test_rate_and_eta_from_the_commits_seen():
    r = m.RateMeter(span_s=60)
    assert r.rate(start_s=0.0) is None
    r.add(10.0, 1000)
    assert r.rate(start_s=0.0) == pytest.approx(100.0)   # since the run began
    r.add(20.0, 3000)
    assert r.rate() == pytest.approx(200.0)               # between the commits seen
    assert m.eta_seconds(3000, 5000, 200.0) == pytest.approx(10.0)
    assert m.eta_seconds(3000, None, 200.0) is None
    assert m.format_duration(3725) == "1:02:05" and m.format_duration(None) == "-"
