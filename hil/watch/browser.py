"""Headless Chromium for checking the live view as a browser shows it.

Used by the tests, `scripts/bench_watch` (page load time) and the screenshots in
docs/live-view.md. It drives Debian's `chromium` through `chromedriver` (selenium), started
with the flags a closed-network machine needs (no background networking, no component
updates: without them Chromium spends seconds trying to reach its servers), and reads what
the page shows from BokehJS itself: every named ColumnDataSource of `Bokeh.documents[0]`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)

#: JavaScript returning every named data source of the page's document as
#: {name: {column: [values]}} (NaN as null), or null before BokehJS has the document.
READ_SOURCES_JS = """
const docs = (window.Bokeh && Bokeh.documents) || [];
if (!docs.length) return null;
const doc = docs[0];
const models = doc._all_models ? Array.from(doc._all_models.values())
                               : Array.from(doc.all_models || []);
const out = {};
const plain = (v) => {
  if (v == null) return v;
  if (typeof v === 'number') return Number.isFinite(v) ? v : null;
  if (ArrayBuffer.isView(v) || Array.isArray(v)) return Array.from(v, plain);
  if (v.array !== undefined && v.shape !== undefined) return Array.from(v.array, plain);
  return v;
};
for (const mdl of models) {
  if (!mdl.name || mdl.data === undefined) continue;
  const d = mdl.data, cols = {};
  const keys = d instanceof Map ? Array.from(d.keys()) : Object.keys(d);
  for (const k of keys) cols[k] = plain(d instanceof Map ? d.get(k) : d[k]);
  out[mdl.name] = cols;
}
return out;
"""


class BrowserMissing(RuntimeError):
    """No Chromium / chromedriver / selenium on this machine."""


def find_chromium() -> Tuple[str, str]:
    """Paths of chromium and chromedriver, or BrowserMissing saying what is missing."""
    if importlib.util.find_spec("selenium") is None:
        raise BrowserMissing("selenium is not installed (pip install 'pcm-hil[test]')")
    browser = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    driver = next((p for p in map(shutil.which, DRIVER_NAMES) if p), None)
    missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p]
    if missing:
        raise BrowserMissing(f"{' and '.join(missing)} not found (Debian: apt-get install "
                             "chromium chromium-driver)")
    return browser, driver  # type: ignore[return-value]


class HeadlessBrowser:
    """One headless Chromium with a fresh profile; use as a context manager."""

    def __init__(self, width: int = 1100, height: int = 2400) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        browser, driver = find_chromium()
        self._profile = tempfile.mkdtemp(prefix="pcm-hil-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self._profile}")
        opts.add_argument(f"--window-size={width},{height}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(service=Service(executable_path=driver),
                                           options=opts)
        except Exception:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(60)

    def __enter__(self) -> "HeadlessBrowser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def cpu_seconds(self) -> Optional[float]:
        """CPU time (user + system) this browser's processes have used so far, from /proc
        (None where there is none): what a page cost the browser, less dependent than
        wall-clock time on what else the machine is doing."""
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        mark = f"--user-data-dir={self._profile}".encode()
        total, found = 0.0, False
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return None
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if mark not in fh.read():
                        continue
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
        return total if found else None

    def navigation_ms(self) -> Dict[str, float]:
        """The page's navigation timing (ms from the navigation's start): when the request
        went out, its answer began and ended, and the document was loaded."""
        js = ("const n = performance.getEntriesByType('navigation')[0];"
              "return n ? {request: n.requestStart, response: n.responseStart,"
              " response_end: n.responseEnd, dom_loaded: n.domContentLoadedEventEnd} : {};")
        return self.driver.execute_script(js) or {}

    def sources(self, name: Optional[str] = None) -> Optional[Dict[str, Dict[str, List[Any]]]]:
        """Every named source of the page (or only `name`: a light poll)."""
        js = READ_SOURCES_JS if name is None else READ_SOURCES_JS.replace(
            "if (!mdl.name || mdl.data === undefined) continue;",
            "if (mdl.name !== arguments[0] || mdl.data === undefined) continue;")
        return self.driver.execute_script(js, name)

    def wait_for(self, predicate: Any, timeout_s: float = 30.0,
                 what: str = "the page") -> Dict[str, Dict[str, List[Any]]]:
        """Poll the page's sources until `predicate(sources)` is true; return them."""
        end = time.monotonic() + timeout_s
        while True:
            src = self.sources()
            if src and predicate(src):
                return src
            if time.monotonic() > end:
                raise TimeoutError(f"{what} did not show up within {timeout_s:g} s "
                                   f"(sources: {sorted(src) if src else None})")
            time.sleep(0.05)

    def wait_loaded(self, timeout_s: float = 30.0) -> Dict[str, Dict[str, List[Any]]]:
        """Until the document is in and its status source holds a loaded commit."""
        return self.wait_for(lambda s: s.get("status", {}).get("version", [0])[0] > 0,
                             timeout_s, "the run log's first commit")

    def wait_rendered(self, timeout_s: float = 30.0) -> None:
        """Until BokehJS has drawn every view (its views report they are idle)."""
        js = ("const d = window.Bokeh && Bokeh.documents && Bokeh.documents[0];"
              "return !!(d && d.is_idle);")
        end = time.monotonic() + timeout_s
        while not self.driver.execute_script(js):
            if time.monotonic() > end:
                raise TimeoutError("the page never finished drawing")
            time.sleep(0.02)

    def click_tab(self, title: str, timeout_s: float = 30.0) -> None:
        """Click the header of the page's tab titled so, as a person would."""
        js = ("const want = arguments[0];"
              "const walk = (root) => { for (const el of root.querySelectorAll('*')) {"
              "  if (el.classList.contains('bk-tab') && el.textContent.trim() === want) {"
              "    el.click(); return true; }"
              "  if (el.shadowRoot && walk(el.shadowRoot)) return true; } return false; };"
              "return walk(document);")
        end = time.monotonic() + timeout_s
        while not self.driver.execute_script(js, title):
            if time.monotonic() > end:
                raise LookupError(f"no tab titled {title!r} on the page")
            time.sleep(0.05)

    def wait_tab_drawn(self, title: str, timeout_s: float = 30.0) -> None:
        """Until the tab titled so holds its real content (not the stand-in tagged
        `pending` that a tab holds until the server builds its figures) and BokehJS has
        drawn every view of it (the document's own idle flag is set once, at first load)."""
        js = ("const d = window.Bokeh && Bokeh.documents && Bokeh.documents[0];"
              "if (!d) return false;"
              "const all = d._all_models ? Array.from(d._all_models.values())"
              "                          : Array.from(d.all_models || []);"
              "const p = all.filter((m) =>"
              "  m.constructor.__name__ === 'Tabs').flatMap((m) => m.tabs)"
              "  .find((q) => q.title === arguments[0]);"
              "if (!p || p.child.tags.includes('pending')) return false;"
              "const v = Bokeh.index.find_one(p.child);"
              "return !!(v && v.has_finished());")
        end = time.monotonic() + timeout_s
        while not self.driver.execute_script(js, title):
            if time.monotonic() > end:
                raise TimeoutError(f"the tab {title!r} was never drawn")
            time.sleep(0.02)

    def console_errors(self) -> List[str]:
        """Messages the page logged at SEVERE level (errors) since the last call."""
        return [e["message"] for e in self.driver.get_log("browser")
                if e.get("level") == "SEVERE"]

    def click_button(self, label_prefix: str, timeout_s: float = 30.0) -> None:
        """Click the visible, enabled button whose label starts so (waiting for it to
        appear). Bokeh widgets live in shadow roots, which are searched too."""
        js = ("const want = arguments[0];"
              "const walk = (root) => { for (const el of root.querySelectorAll('*')) {"
              "  if (el.tagName === 'BUTTON' && !el.disabled && el.getClientRects().length"
              "      && el.textContent.trim().startsWith(want)) { el.click(); return true; }"
              "  if (el.shadowRoot && walk(el.shadowRoot)) return true; } return false; };"
              "return walk(document);")
        end = time.monotonic() + timeout_s
        while not self.driver.execute_script(js, label_prefix):
            if time.monotonic() > end:
                raise LookupError(f"no button labelled {label_prefix!r} on the page")
            time.sleep(0.05)

    def screenshot(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.driver.save_screenshot(path)

    def page_html(self) -> str:
        return self.driver.page_source


__all__ = ["BrowserMissing", "CHROMIUM_FLAGS", "HeadlessBrowser", "READ_SOURCES_JS",
           "find_chromium"]
