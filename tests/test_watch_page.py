"""A session's page is built before the browser asks for it, and shows the newest commit
all the same (what the page shows in a browser: tests/test_watch_browser.py)."""
import asyncio

import numpy as np
import pytest

pytest.importorskip("bokeh")

from bokeh.document import Document  # noqa: E402

from hil.run_log import RunLog  # noqa: E402
from hil.watch import model as m  # noqa: E402
from hil.watch.follower import LogFollower  # noqa: E402
from hil.watch.page import SPARE_DELAY_S, PageFactory  # noqa: E402
from watch_logs import LogBuilder, mlp_layout  # noqa: E402


def _status(doc):
    return doc.get_model_by_name("status").data


def test_a_session_takes_the_page_built_ahead_brought_up_to_the_newest_commit(tmp_path):
    path = str(tmp_path / "live.h5")
    b = LogBuilder(path, mlp_layout())
    b.steps(30)
    b.commit()
    f = LogFollower(path)
    f.refresh()
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
