"""A session's page is built before the browser asks for it, and shows the newest commit
all the same; the figures of a tab other than the first are built when the tab is first
selected, and follow the log from then on (what the page shows in a browser:
tests/test_watch_browser.py)."""
import asyncio

import numpy as np
import pytest

pytest.importorskip("bokeh")

from bokeh.document import Document  # noqa: E402

from hil.run_log import RunLog  # noqa: E402
from hil.watch import model as m  # noqa: E402
from hil.watch.follower import LogFollower  # noqa: E402
from hil.watch.page import SPARE_DELAY_S, TAB_TITLES, LivePage, PageFactory  # noqa: E402
from watch_logs import LogBuilder, mlp_layout  # noqa: E402


def _followed_log(tmp_path):
    """A log of 30 committed steps, its builder and a follower that has read it."""
    path = str(tmp_path / "live.h5")
    b = LogBuilder(path, mlp_layout())
    b.steps(30)
    b.commit()
    f = LogFollower(path)
    f.refresh()
    return path, b, f


def _status(doc):
    return doc.get_model_by_name("status").data


def test_a_session_takes_the_page_built_ahead_brought_up_to_the_newest_commit(tmp_path):
    path, b, f = _followed_log(tmp_path)
    pages = PageFactory(f)
    pages.prepare()
    built = pages.ready
    assert built is not None and built.version == f.model.version
    b.steps(45)                      # the log moves on after the page was built
    b.commit()
    assert f.refresh()

    async def open_pages():
        first, second = Document(), Document()
        pages(first)
        pages(second)                # no spare left: built on the spot
        assert pages.ready is None
        await asyncio.sleep(SPARE_DELAY_S + 0.5)
        return first, second

    first, second = asyncio.run(open_pages())
    assert first.get_model_by_name("status") is built.status_src
    assert second.get_model_by_name("status") is not built.status_src
    assert pages.ready is not None and pages.ready is not built   # the next one, ready
    with RunLog(path) as lg:
        last, sm = lg.last_step, lg.step_metrics()
    width = m.window_width(last)
    idx = (sm["step"][sm["step"] >= 1] - 1) // width
    want = np.bincount(idx, sm["set_pulses"][sm["step"] >= 1], -(-last // width))
    for doc in (first, second):
        assert _status(doc)["version"] == [f.model.version] and _status(doc)["step"] == [75]
        windows = doc.get_model_by_name("windows").data
        assert np.array_equal(windows["set_pulses"], want)


def test_no_page_is_built_ahead_of_a_log_that_cannot_be_shown_yet(tmp_path):
    f = LogFollower(str(tmp_path / "not-yet.h5"))
    f.refresh()
    pages = PageFactory(f)
    pages.prepare()
    assert pages.ready is None
    doc = Document()
    asyncio.run(_open(pages, doc))
    assert _status(doc)["status"] == ["waiting"]


async def _open(pages, doc):
    pages(doc)


def _histograms_of_log(path):
    """G+ and G- device counts per bin and layer, at the log's last complete step."""
    with RunLog(path) as lg:
        state, info = lg.state(lg.complete_step), lg.chip_info()
    edges = np.linspace(info.g_min_us, info.g_max_us, 61)
    return {key: np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0]
            for key, v in state.items()}


def test_a_tab_s_figures_are_built_when_first_selected_then_follow_the_log(tmp_path):
    path, b, f = _followed_log(tmp_path)
    page = LivePage(f)
    doc = Document()
    page.attach(doc)
    assert [p.title for p in page.tabs.tabs] == list(TAB_TITLES) and page.tabs.active == 0
    assert doc.get_model_by_name("windows") is not None
    for name in ("hist:layer0", "hist:layer1", "chipmap", "blocks", "events"):
        assert doc.get_model_by_name(name) is None, name   # not built, not sent
    b.steps(45)                     # the log moves on before the tab is selected
    b.commit()
    assert f.refresh()
    page.update(f.model)
    page.tabs.active = 1            # what a click on the tab's header sends
    for key, want in _histograms_of_log(path).items():
        layer, sign = key.rsplit(".", 1)
        assert doc.get_model_by_name(f"hist:{layer}").data[sign].tolist() == want.tolist()
    assert sorted(set(doc.get_model_by_name("blocks").data["key"])) == sorted(mlp_layout())
    assert doc.get_model_by_name("events") is None          # the third tab: not yet
    built = doc.get_model_by_name("hist:layer0")
    before = _histograms_of_log(path)
    b.steps(40)
    b.finish()
    assert f.refresh()
    page.update(f.model)            # a built tab follows the log
    after = _histograms_of_log(path)
    assert any(before[k].tolist() != after[k].tolist() for k in after)
    for key, want in after.items():
        layer, sign = key.rsplit(".", 1)
        assert doc.get_model_by_name(f"hist:{layer}").data[sign].tolist() == want.tolist()
    page.tabs.active = 2
    assert doc.get_model_by_name("events").data["kind"].count("status") == 2
    page.tabs.active = 1            # selected again: the figures already built stay
    assert doc.get_model_by_name("hist:layer0") is built


def test_a_tab_selected_while_the_page_waits_for_its_log_is_built_when_the_log_comes(tmp_path):
    path = str(tmp_path / "later.h5")
    f = LogFollower(path)
    f.refresh()
    page = LivePage(f)
    doc = Document()
    page.attach(doc)
    page.tabs.active = 1
    assert doc.get_model_by_name("chipmap") is None     # nothing to draw yet
    b = LogBuilder(path, mlp_layout())
    b.steps(10)
    b.commit()
    assert f.refresh()
    page.update(f.model)
    assert doc.get_model_by_name("chipmap").data["image"]
    assert doc.get_model_by_name("events") is None      # only the tab selected
