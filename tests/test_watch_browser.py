"""The live view in a real browser (headless Chromium): it loads with no console errors,
shows what the log holds (the other tabs' figures once their tab is selected), follows a
real training run, and Stop ends a --watch run safely.

Skipped, saying why, where Chromium, chromedriver or selenium cannot be had (.ci/run
installs Debian's chromium and chromium-driver)."""
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bokeh")

from hil.run_log import RunLog  # noqa: E402
from hil.watch import model as m  # noqa: E402
from hil.watch.browser import BrowserMissing, HeadlessBrowser, find_chromium  # noqa: E402
from hil.watch.conductance import Geometry2D, map_grid  # noqa: E402
from hil.watch.follower import LogFollower  # noqa: E402
from hil.watch.page import ARM_S, TAB_TITLES  # noqa: E402
from hil.watch.server import WatchServer  # noqa: E402
from watch_logs import STATION, LogBuilder, config, mlp_layout, torch_layout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def browser():
    try:
        find_chromium()
    except BrowserMissing as e:
        pytest.skip(f"no headless browser here: {e}")
    with HeadlessBrowser() as b:
        yield b


def arr(values):
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _rich_log(path, layout):
    """A finished run with everything the page can show: two epochs (validation accuracy
    in the second), monitors with an excursion and a pause, a resumed segment, bad devices."""
    prov = {"station": STATION, "resume": {"segment": 2, "segments": [
        {"log": "earlier.h5", "status": "aborted", "reason": "Ctrl-C", "complete_step": 40}]}}
    b = LogBuilder(path, layout, cfg=config(bad=[5000, 6001]), provenance=prov)
    ok = {"vdd.current_a": 0.1, "socket.temperature_c": 25.0}
    b.steps(60, monitor=ok)
    b.end_epoch()
    b.steps(1, monitor={"vdd.current_a": 0.1, "socket.temperature_c": 33.0})
    b.poll({"vdd.current_a": 0.1, "socket.temperature_c": 29.0})
    b.steps(59, monitor=ok)
    b.end_epoch(validation_accuracy=0.66)
    b.finish()
    return path


def _serve(path, **kw):
    f = LogFollower(path)
    f.refresh()
    f.start(poll_s=0.1)
    return f, WatchServer(f, port=0, **kw).start_in_thread()


def select_every_tab(browser):
    """Click each tab after the first, as a reader would, until it is drawn; then every
    figure's source is on the page."""
    for title in TAB_TITLES[1:]:
        browser.click_tab(title)
        browser.wait_tab_drawn(title, 120)
    return browser.sources()


def check_page_equals_log(src, path):
    """Every figure's data, read back from BokehJS, against what RunLog says."""
    with RunLog(path) as lg:
        st = lg.status
        em, sm, mon = lg.epoch_metrics(), lg.step_metrics(), lg.monitor_readings()
        state = lg.state(lg.complete_step)
        g = lg.conductance(lg.complete_step)
        layout, pb, info = lg.layout, lg.pulse_batches(), lg.chip_info()
        last = lg.last_step
    s = src["status"]
    assert s["status"] == [st.status]
    assert s["step"] == [last] and s["examples"] == [int(np.nansum(sm["examples"]))]
    e = src["epochs"]
    assert e["epoch"] == (em["epoch"] + 1).tolist()
    for k in [k for k in em if k.endswith("_accuracy")]:
        assert np.allclose(arr(e[k]), em[k], equal_nan=True), k
    w = src["windows"]
    width = m.window_width(last)
    n = -(-last // width)
    sel = sm["step"] >= 1
    idx = (sm["step"][sel] - 1) // width
    assert w["set_pulses"] == np.bincount(idx, sm["set_pulses"][sel], n).tolist()
    assert w["refreshes"] == np.bincount(idx, sm["refreshes"][sel], n).tolist()
    resets = (pb["kind"] == 2) & (pb["step"] >= 1)
    assert w["resets"] == np.bincount((pb["step"][resets] - 1) // width,
                                      pb["count"][resets], n).tolist()
    for key in layout:
        layer, sign = key.rsplit(".", 1)
        h = src[f"hist:{layer}"]
        edges = np.linspace(info.g_min_us, info.g_max_us, 61)
        # devices read outside the chip's range count in the end bins
        inside = np.clip(state[key], edges[0], edges[-1])
        assert h[sign] == np.histogram(inside, edges)[0].tolist(), key
    grid = map_grid(Geometry2D(info.geometry.arrays, info.geometry.rows, info.geometry.cols))
    full = np.full(info.geometry.n_devices, np.nan)
    full[np.concatenate([a.ravel() for a in layout.values()])] = g
    rows, cols = grid.shape
    blocks = full.reshape(rows, grid.rh, cols, grid.rw).transpose(0, 2, 1, 3)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # regions with no mapped device
        want = np.nanmean(blocks.reshape(rows, cols, -1), axis=2)
    assert np.allclose(arr(src["chipmap"]["image"][0]), want.ravel(), equal_nan=True)
    assert sorted(set(src["blocks"]["key"])) == sorted(layout)
    for label in [k for k in mon if k != "step"]:
        trace = src[f"monitor:{label}"]
        assert trace["step"] == mon["step"].tolist()
        assert np.allclose(arr(trace["value"]), mon[label], equal_nan=True)


@pytest.mark.parametrize("layout", [mlp_layout(start=4000), torch_layout()],
                         ids=["mlp", "torch"])
def test_the_page_loads_without_errors_and_shows_what_the_log_holds(browser, tmp_path,
                                                                   layout):
    path = _rich_log(str(tmp_path / "run.h5"), layout)
    f, server = _serve(path)
    try:
        browser.console_errors()
        browser.open(server.url)
        first = browser.wait_loaded(120)
        browser.wait_rendered(120)
        # the first tab only: the others' figures are built when the tab is selected
        assert {"status", "epochs", "windows", "epoch_marks"} <= set(first)
        assert not [k for k in first if k.startswith(("hist:", "monitor:"))]
        assert not {"chipmap", "blocks", "bad", "events"} & set(first)
        src = select_every_tab(browser)
        assert browser.console_errors() == []
        check_page_equals_log(src, path)
        assert src["status"]["segment"] == [2]
        assert src["bad"]["address"] == [5000, 6001]
        kinds = src["events"]["kind"]
        assert kinds.count("status") == 2 and "resume" in kinds
        assert "monitor" in kinds and "pause" in kinds
        assert "validation_accuracy" in src["epochs"]
        assert "Stop run" not in browser.page_html()   # read-only: no Stop without --watch
    finally:
        server.stop()
        f.stop()


def test_a_page_without_the_token_is_refused_in_the_browser(browser, tmp_path):
    path = _rich_log(str(tmp_path / "run.h5"), mlp_layout())
    f, server = _serve(path, listen="127.0.0.1")
    try:
        browser.open(server.url.split("?")[0])
        assert "needs its token" in browser.driver.find_element("tag name", "body").text
        assert browser.sources() is None
        browser.open(server.url)                   # the URL as printed
        browser.wait_loaded(120)
        assert "token=" not in browser.driver.current_url
    finally:
        server.stop()
        f.stop()


def _small_run_config(tmp_path, epochs=30):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(
        "name: small\nseed: 4\n"
        "data: {train_examples: 1000, test_examples: 200}\n"
        "network: {layers: [784, 16, 10], init_range: [0.2, 0.3]}\n"
        "chip: {rows: 128, cols: 256}\n"
        f"training: {{epochs: {epochs}, baseline: false}}\n"
        "log: {flush_every_steps: 250, snapshot_every_steps: 0}\n")
    return str(cfg)


def _train(*args):
    return subprocess.Popen([sys.executable, "-m", "hil.cli", "train", "--no-progress", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_line(p, pattern, timeout_s=120.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        line = p.stdout.readline()
        if not line:
            break
        hit = re.search(pattern, line)
        if hit:
            return hit
    raise AssertionError(f"no line matching {pattern!r} (exit {p.poll()}: "
                         f"{p.stderr.read() if p.poll() is not None else ''})")


def test_the_page_follows_a_real_run_as_it_trains(browser, tmp_path):
    path = str(tmp_path / "live.h5")
    p = _train("--config", _small_run_config(tmp_path), "--run", path)
    try:
        _wait_line(p, r"^training ")
        f, server = _serve(path)
        browser.console_errors()                   # what earlier tests' pages logged
        browser.open(server.url)
        seen = set()
        end = time.monotonic() + 240
        while len(seen) < 4 and time.monotonic() < end:   # four commits shown, live
            src = browser.wait_loaded(120)
            if src["status"]["status"] == ["running"]:
                seen.add(src["status"]["step"][0])
            time.sleep(0.1)
        assert len(seen) >= 4, seen
        select_every_tab(browser)      # from now on, these tabs' figures follow the run too
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=120)
    assert p.returncode == 130
    try:
        src = browser.wait_for(lambda s: s["status"]["status"] == ["aborted"], 90,
                               "the aborted status")
        assert "interrupted by the operator" in src["status"]["reason"][0]
        check_page_equals_log(src, path)
        assert browser.console_errors() == []
    finally:
        server.stop()
        f.stop()


def test_stop_ends_a_watch_run_safely(browser, tmp_path):
    from drivers.geometry import Geometry
    from sim_backend import EmulatorServer, Firmware, PcmModel, SimulatedChip

    chip = SimulatedChip(PcmModel.preset("jap"), Geometry(1, 128, 256), seed=4)
    emu = EmulatorServer(Firmware(chip), listen=("127.0.0.1", 0)).start()
    path = str(tmp_path / "stopped.h5")
    try:
        p = _train("--config", _small_run_config(tmp_path), "--run", path,
                   "--backend", emu.url, "--watch", "--listen", "127.0.0.1", "--port", "0")
        try:
            url = _wait_line(p, r"^live view: (\S+)").group(1)
            assert "?token=" in url
            browser.open(url)
            browser.wait_for(lambda s: s["status"]["step"][0] > 0, 120, "training steps")
            for attempt in range(3):      # as a person would: the confirmation times out
                browser.click_button("Stop run", timeout_s=120)
                try:
                    browser.click_button("Confirm", timeout_s=ARM_S)
                    break
                except LookupError:
                    assert attempt < 2, "the confirming button never showed"
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == 130, err
        assert "stop requested from the live view" in err
        assert "aborted: stopped from the live view after step" in err
        # the view served until the page had the run's end: it does not stay at "running"
        status = browser.sources("status")["status"]
        assert status["status"] == ["aborted"], status
        assert status["reason"][0].startswith("stopped from the live view after step")
        with RunLog(path) as lg:
            assert lg.status.status == "aborted"
            assert lg.status.reason.startswith("stopped from the live view after step")
            assert 0 < lg.last_step < 30 * 1000
        assert emu.firmware.idle                     # the chip was left in its safe state
    finally:
        emu.stop()
