"""The live view's Bokeh document: one per browser session, fed by a `LogFollower`.

Every figure draws from a named `ColumnDataSource` (`status`, `epochs`, `windows`,
`epoch_marks`, `hist:<layer>`, `chipmap`, `blocks`, `bad`, `monitor:<label>`, `events`), so
that what the page shows can be read back from the browser and compared with the log. A
session polls the follower's model every `UPDATE_MS` and, when a new commit was loaded,
replaces the sources' data; figures for layers or monitors that appear later are added then.

The page is three tabs (`TAB_TITLES`): what an operator watches live (the run's curves and
pulses) on the first, the conductance histograms and chip map, and the monitors and events,
on the others. BokehJS builds and lays out the views of every tab, shown or not, and that is
most of a page load's cost, so the other tabs' figures (and their sources) are built on the
server only when a browser first selects the tab; from then on they follow the log too.

The page is read-only. The one exception, on a `pcm-hil train --watch` run, is the Stop
button: it shows a confirming button for `ARM_S`, whose click calls `on_stop`, which asks
the run to stop as Ctrl-C does.
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import time
from typing import Callable, Dict, List, Optional

import numpy as np
from bokeh.core.validation import silence
from bokeh.core.validation.warnings import EMPTY_LAYOUT, MISSING_RENDERERS
from bokeh.document import Document
from bokeh.layouts import column, gridplot, row
from bokeh.models import (BoxAnnotation, Button, ColorBar, ColumnDataSource, CustomJS,
                          DataTable, Div, GlyphRenderer, HoverTool, LayoutDOM,
                          LinearColorMapper, NumeralTickFormatter, Span, TableColumn,
                          TabPanel, Tabs)
from bokeh.palettes import Category10_10, Category20_20, Viridis256
from bokeh.plotting import figure
from tornado.ioloop import IOLoop

from hil.watch import model as m
from hil.watch.follower import LogFollower, PageModel

UPDATE_MS = 250
#: A log committing faster than this is redrawn at this pace (with its latest commit).
MIN_REDRAW_S = 0.5
#: A browser says when it has drawn a commit (ACK_JS); the next one is sent only then, so a
#: slow browser gets fewer, newer commits rather than a growing backlog. A browser that
#: does not answer (a hidden tab draws no frames) is sent the newest after this long.
ACK_TIMEOUT_S = 10.0
ACK_JS = """
const d = cb_obj.data;
const v = (d instanceof Map ? d.get('version') : d.version)[0];
requestAnimationFrame(() => setTimeout(() => { cb_obj.tags = [v]; }, 0));
"""
#: A new spare page is built this long after a session took the last one: after its
#: browser has pulled the document, so that the build does not delay that page.
SPARE_DELAY_S = 1.0
ARM_S = 10.0
ARM_JS = ("confirm.visible = true; "
          f"setTimeout(() => {{ confirm.visible = false }}, {ARM_S * 1000:.0f});")
FIG_W, FIG_H = 520, 260
#: Few tools per figure: every tool is a model the server builds for each session.
TOOLS = "pan,wheel_zoom,reset"
STATUS_COLORS = {"running": "#1a7f37", "paused": "#b7791f", "completed": "#1f4e9c",
                 "aborted": "#b42318", "failed": "#b42318", "waiting": "#666666"}
SERIES_COLORS = Category10_10
TAB_TITLES = ("Run", "Conductance and chip", "Monitors and events")
#: The tag of a tab's stand-in until its figures are built (`HeadlessBrowser.wait_tab_drawn`
#: waits for the real child).
PENDING_TAG = "pending"

StopHandler = Callable[[str], None]
WINDOW_COLUMNS = ("start", "stop", "mid", "steps", "loss", "train_accuracy", "set_pulses",
                  "resets", "refreshes", "start_edge", "stop_edge", "train_pct")
# Figures and rows that fill up as the log does (the accuracy series, the monitors) start
# empty: not a mistake worth a warning in the server's output.
silence(MISSING_RENDERERS, True)
silence(EMPTY_LAYOUT, True)


def _f(x: Optional[float], fmt: str = "{:,.0f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def status_row(model: Optional[PageModel], waiting: Optional[str]) -> Dict[str, list]:
    """The `status` source: one row with the header's fields (what the status line says)."""
    if model is None:
        return {"status": ["waiting"], "reason": [waiting or ""], "step": [0], "epoch": [0],
                "epochs": [0], "examples": [0], "examples_per_s": [float("nan")],
                "eta_s": [float("nan")], "commits": [0], "segment": [1],
                "commit_time_unix": [float("nan")], "version": [0]}
    h = model.header
    nan = float("nan")
    return {"status": [h.status], "reason": [h.reason or ""], "step": [h.step],
            "epoch": [h.epoch or 0], "epochs": [h.epochs or 0], "examples": [h.examples],
            "examples_per_s": [nan if h.examples_per_s is None else float(h.examples_per_s)],
            "eta_s": [nan if h.eta_s is None else float(h.eta_s)], "commits": [h.commits],
            "segment": [h.segment],
            "commit_time_unix": [nan if h.commit_time_unix is None else h.commit_time_unix],
            "version": [model.version]}


def status_html(model: Optional[PageModel], waiting: Optional[str],
                now: Optional[float] = None) -> str:
    if model is None:
        return (f"<div class='pcm-status'><b style='color:{STATUS_COLORS['waiting']}'>"
                f"waiting</b>: {html.escape(waiting or '')}</div>")
    h = model.header
    now = time.time() if now is None else now
    color = STATUS_COLORS.get(h.status, "#333")
    reason = f" ({html.escape(h.reason)})" if h.reason else ""
    seg = f" &middot; resumed run, segment {h.segment}" if h.segment > 1 else ""
    epoch = f"epoch {h.epoch} of {h.epochs}" if h.epoch and h.epochs else \
        (f"epoch {h.epoch}" if h.epoch else "initialising")
    total = f" of {h.examples_total:,}" if h.examples_total else ""
    age = ""
    if h.commit_time_unix and h.status in ("running", "paused"):
        age = f" &middot; last commit {m.format_duration(max(0.0, now - h.commit_time_unix))} ago"
    notes = "".join(f"<div class='pcm-note'>{html.escape(n)}</div>" for n in h.notes)
    return (f"<div class='pcm-status'><span style='font-size:120%'><b>{html.escape(h.name)}"
            f"</b></span> &middot; <b style='color:{color}'>{h.status}</b>{reason}{seg}<br>"
            f"step {h.step:,} &middot; {epoch} &middot; {h.examples:,}{total} examples "
            f"&middot; {_f(h.examples_per_s)} examples/s &middot; ETA "
            f"{m.format_duration(h.eta_s)}{age}<br><span style='color:#666'>"
            f"{html.escape(h.path)} &middot; {h.commits:,} commits</span>{notes}</div>")


def _lean(fig: figure) -> figure:
    """Leave a figure's glyphs without their own non-selected and muted versions: the page
    has no selection tools and hides (does not mute) series, and BokehJS derives both from
    the glyph when they are "auto". Two models fewer per glyph for the server to build and
    send and the browser to read, on every page load."""
    for r in fig.renderers:
        if isinstance(r, GlyphRenderer):
            r.nonselection_glyph = "auto"
            r.muted_glyph = "auto"
    return fig


def _clean(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


class LivePage:
    """The figures of one session and how a new PageModel updates them."""

    def __init__(self, follower: LogFollower, on_stop: Optional[StopHandler] = None) -> None:
        """Build the figures (no document yet: see `attach`), filled with the follower's
        latest commit."""
        self.doc: Optional[Document] = None
        self.follower = follower
        self.on_stop = on_stop
        self.version = -1
        self._drawn_at = 0.0
        self._acked = -1
        model = follower.model
        self.status_src = ColumnDataSource(status_row(model, follower.waiting), name="status")
        self.status_src.js_on_change("data", CustomJS(code=ACK_JS))
        self.status_src.on_change("tags", self._ack)
        self.status_div = Div(text=status_html(model, follower.waiting), width=640)
        self.epochs_src = ColumnDataSource({"epoch": []}, name="epochs")
        self.marks_src = ColumnDataSource({"end_step": [], "train_loss": []},
                                          name="epoch_marks")
        self.windows_src = ColumnDataSource({k: [] for k in WINDOW_COLUMNS}, name="windows")
        self._model: Optional[PageModel] = None     # the commit the page shows
        # the other tabs' figures: built when the tab is first selected (`_show_tab`)
        self.hist_box: Optional[LayoutDOM] = None
        self.monitor_box: Optional[LayoutDOM] = None
        self.events_src: Optional[ColumnDataSource] = None
        self.hist_src: Dict[str, ColumnDataSource] = {}
        self.monitor_src: Dict[str, ColumnDataSource] = {}
        self._acc_series: Dict[str, str] = {}
        self.segment_spans: List[Span] = []
        #: one formatter for every step axis and count axis (a model each would cost the
        #: server and the browser one more model per axis)
        self._numeral = NumeralTickFormatter(format="0,0")
        self._build()
        self._catch_up()

    def _catch_up(self) -> None:
        """Fill the figures with the follower's newest commit, if they show an older one."""
        model = self.follower.model
        if model is None or model.version == self.version:
            return
        self.update(model)
        self._acked = model.version     # the browser gets the page with it

    def attach(self, doc: Document) -> None:
        """Make this the page of a session's document (once)."""
        # brought up to date before the document holds the figures: a change to a model in
        # a document makes it re-walk every model it references, each time
        self._catch_up()
        self.doc = doc
        model = self.follower.model
        doc.add_root(self.layout)
        doc.add_root(self.status_src)   # drawn by no glyph: a root, so the browser has it
        doc.title = f"{model.header.name if model else 'run log'} - pcm-hil live view"
        doc.add_periodic_callback(self.poll, UPDATE_MS)

    # --- building ----------------------------------------------------------------------------
    def _build(self) -> None:
        tools = TOOLS
        self.acc_epoch = figure(title="accuracy per epoch", width=FIG_W, height=FIG_H,
                                x_axis_label="epoch", y_axis_label="accuracy (%)", tools=tools)
        self.acc_steps = figure(title="accuracy over steps (train: mean per window; others: at "
                                "the end of each epoch)", width=FIG_W, height=FIG_H,
                                x_axis_label="step", y_axis_label="accuracy (%)", tools=tools)
        self.acc_steps.line("mid", "train_pct", source=self.windows_src, color="#555",
                            legend_label="train (window)")
        self.loss_fig = figure(title="loss (train: mean per window; per epoch: markers)",
                               width=FIG_W, height=FIG_H, x_axis_label="step",
                               y_axis_label="loss", tools=tools, x_range=self.acc_steps.x_range)
        self.loss_fig.line("mid", "loss", source=self.windows_src, color="#1f77b4",
                           legend_label="loss (window)")
        self.loss_fig.scatter("end_step", "train_loss", source=self.marks_src, color="#d62728",
                              size=7, legend_label="train loss (epoch)")
        self.set_fig = figure(title="SET pulses per window (updates)", width=FIG_W,
                              height=FIG_H, x_axis_label="step", y_axis_label="pulses",
                              tools=tools, x_range=self.acc_steps.x_range)
        self.set_fig.quad(left="start_edge", right="stop_edge", bottom=0, top="set_pulses",
                          source=self.windows_src, color="#2ca02c", alpha=0.7)
        self.reset_fig = figure(title="RESETs (devices) and refreshes (pairs) per window",
                                width=FIG_W, height=FIG_H, x_axis_label="step",
                                y_axis_label="count", tools=tools,
                                x_range=self.acc_steps.x_range)
        self.reset_fig.step("mid", "resets", source=self.windows_src, mode="center",
                            color="#9467bd", legend_label="RESETs")
        self.reset_fig.step("mid", "refreshes", source=self.windows_src, mode="center",
                            color="#ff7f0e", legend_label="refreshes")
        for fig in (self.acc_steps, self.loss_fig, self.reset_fig):
            fig.legend.location = "top_right"
            fig.legend.click_policy = "hide"
        for fig in (self.acc_steps, self.loss_fig, self.set_fig, self.reset_fig):
            fig.xaxis.formatter = self._numeral
        for fig in (self.set_fig, self.reset_fig):
            fig.yaxis.formatter = self._numeral
        for fig in (self.acc_steps, self.loss_fig, self.set_fig, self.reset_fig):
            _lean(fig)
        self.windows_title = Div(text="")
        header = [self.status_div]
        if self.on_stop is not None:
            # Two steps: "Stop run" shows the confirming button (in the browser, no round
            # trip), which hides itself again after ARM_S; only a click on it stops the run.
            self.stop_button = Button(label="Stop run", button_type="warning", width=140,
                                      name="stop")
            self.confirm_button = Button(label="Confirm: stop after this step",
                                         button_type="danger", width=240, visible=False,
                                         name="confirm_stop")
            self.stop_button.js_on_click(CustomJS(args={"confirm": self.confirm_button},
                                                  code=ARM_JS))
            self.confirm_button.on_click(self._stop_confirmed)
            header += [self.stop_button, self.confirm_button]
        # one toolbar for the five run figures (its tools act on each): a toolbar is many
        # DOM elements and style sheets for the browser to build and lay out
        run_figures = gridplot([[self.acc_epoch, self.acc_steps], [self.loss_fig, self.set_fig],
                                [self.reset_fig, self.windows_title]], merge_tools=True,
                               toolbar_location="right")
        self._tab_builders: Dict[int, Callable[[PageModel], LayoutDOM]] = {
            1: self._conductance_tab, 2: self._monitors_tab}
        pending = [TabPanel(title=t, child=Div(text="<i>waiting for the log</i>",
                                               tags=[PENDING_TAG])) for t in TAB_TITLES[1:]]
        self.tabs = Tabs(name="tabs",
                         tabs=[TabPanel(title=TAB_TITLES[0], child=run_figures)] + pending)
        self.tabs.on_change("active", self._tab_selected)
        # the status line and Stop stay above the tabs, whichever is shown
        self.layout = column(row(*header), self.tabs)

    def _tab_selected(self, attr: str, old: int, new: int) -> None:
        self._show_tab(new)

    def _show_tab(self, i: int) -> None:
        """Build tab `i`'s figures, filled with the commit the page shows, if not yet built
        (and a commit is shown: a page waiting for its log builds the tab when one comes)."""
        if i not in self._tab_builders or self._model is None:
            return
        # filled before it joins the document: one change for the browser, not one per
        # source; a new panel, since BokehJS redraws a Tabs for a new list of panels but not
        # for a panel's new child
        child = self._tab_builders.pop(i)(self._model)
        panels = list(self.tabs.tabs)
        panels[i] = TabPanel(title=panels[i].title, child=child)
        self.tabs.tabs = panels

    def _conductance_tab(self, model: PageModel) -> LayoutDOM:
        self.hist_box = row(children=[])
        self._build_chipmap(model)
        self._update_conductance(model)
        return column(Div(text="<h3>Conductance per layer (G+ and G-)</h3>"), self.hist_box,
                      Div(text="<h3>Chip array</h3>"), self.chip_fig)

    def _monitors_tab(self, model: PageModel) -> LayoutDOM:
        self.events_src = ColumnDataSource({"step": [], "time": [], "kind": [], "text": []},
                                           name="events")
        self.monitor_box = column(children=[Div(text="<i>no monitor readings logged</i>")])
        events_table = DataTable(
            source=self.events_src, width=1040, height=220, index_position=None,
            columns=[TableColumn(field="step", title="step", width=80),
                     TableColumn(field="time", title="time", width=150),
                     TableColumn(field="kind", title="kind", width=80),
                     TableColumn(field="text", title="event", width=730)])
        self._update_monitors_and_events(model)
        return column(Div(text="<h3>Monitors</h3>"), self.monitor_box,
                      Div(text="<h3>Events</h3>"), events_table)

    def _build_chipmap(self, model: PageModel) -> None:
        self.chip_src = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []},
                                         name="chipmap")
        self.blocks_src = ColumnDataSource({"x0": [], "x1": [], "y0": [], "y1": [], "key": [],
                                            "color": []}, name="blocks")
        self.bad_src = ColumnDataSource({"x": [], "y": [], "address": [], "count": []},
                                        name="bad")
        geo = model.grid.geometry
        width = 1040
        height = int(max(160, min(520, width * geo.total_rows / max(geo.cols, 1)))) + 60
        g0, g1 = model.histograms[0].edges[[0, -1]] if model.histograms else (0.0, 25.0)
        self.mapper = LinearColorMapper(palette=Viridis256, low=float(g0), high=float(g1),
                                        nan_color="#f2f2f2")
        fig = figure(title="mean conductance per region of "
                     f"{model.grid.rh}x{model.grid.rw} devices (µS); mapped blocks outlined; "
                     "x: bad device", width=width, height=height, x_range=(0, geo.cols),
                     y_range=(geo.total_rows, 0), x_axis_label="column",
                     y_axis_label="row (arrays stacked)", tools=TOOLS,
                     match_aspect=False)
        # the y range runs downwards (row 0 on top): image row 0 sits at y = 0
        img = fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.chip_src,
                        color_mapper=self.mapper, origin="bottom_left", anchor="bottom_left")
        fig.add_tools(HoverTool(renderers=[img], tooltips=[("mean G (µS)", "@image{0.00}")]))
        quads = fig.quad(left="x0", right="x1", top="y0", bottom="y1", source=self.blocks_src,
                         fill_color="color", fill_alpha=0.12, line_color="color",
                         line_width=1.5, legend_field="key")
        fig.add_tools(HoverTool(renderers=[quads], tooltips=[("block", "@key")]))
        fig.scatter("x", "y", source=self.bad_src, marker="x", size=8, color="#d62728",
                    line_width=2, legend_label="bad device")
        for a in range(1, geo.arrays):
            fig.add_layout(Span(location=a * geo.rows, dimension="width", line_color="black",
                                line_width=1))
        fig.add_layout(ColorBar(color_mapper=self.mapper, title="µS"), "right")
        fig.legend.location = "bottom_right"
        fig.legend.label_text_font_size = "8pt"
        self.chip_fig = _lean(fig)

    def _hist_figure(self, name: str) -> ColumnDataSource:
        src = ColumnDataSource({"left": [], "right": [], "plus": [], "minus": [],
                                "plus_top": [], "minus_top": []}, name=f"hist:{name}")
        fig = figure(title=f"{name}: G+ and G- (devices per bin)", width=340, height=240,
                     x_axis_label="G (µS)", y_axis_label="devices (log)", y_axis_type="log",
                     tools=TOOLS)
        # log axis: bars start just below 1; an empty bin (top NaN) is not drawn
        fig.quad(left="left", right="right", bottom=0.7, top="plus_top", source=src,
                 fill_color="#1f77b4", fill_alpha=0.45, line_color="#1f77b4", legend_label="G+")
        fig.quad(left="left", right="right", bottom=0.7, top="minus_top", source=src,
                 fill_color="#d62728", fill_alpha=0.45, line_color="#d62728", legend_label="G-")
        fig.legend.location = "top_right"
        self.hist_box.children.append(_lean(fig))
        self.hist_src[name] = src
        return src

    def _monitor_figure(self, trace: m.MonitorTrace) -> ColumnDataSource:
        src = ColumnDataSource({"step": [], "value": [], "outside": []},
                               name=f"monitor:{trace.label}")
        fig = figure(title=trace.label + ("" if trace.band is None else
                                          f" (band, action: {trace.band.action})"),
                     width=FIG_W, height=220, x_axis_label="step", y_axis_label=trace.label,
                     tools=TOOLS)
        fig.line("step", "value", source=src, color="#1f77b4")
        if trace.band is not None:
            fig.add_layout(BoxAnnotation(bottom=trace.band.low, top=trace.band.high,
                                         fill_color="#2ca02c", fill_alpha=0.12))
            for v in (trace.band.low, trace.band.high):
                if v is not None:
                    fig.add_layout(Span(location=v, dimension="width", line_color="#2ca02c",
                                        line_dash="dashed"))
        if not self.monitor_src:
            self.monitor_box.children = []
        if not self.monitor_box.children or len(self.monitor_box.children[-1].children) >= 2:
            self.monitor_box.children.append(row(children=[]))
        self.monitor_box.children[-1].children.append(_lean(fig))
        self.monitor_src[trace.label] = src
        return src

    def _accuracy_series(self, name: str, i: int) -> None:
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        label = m.accuracy_label(name)
        self.acc_epoch.line("epoch", f"{name}_pct", source=self.epochs_src, color=color,
                            legend_label=label)
        self.acc_epoch.scatter("epoch", f"{name}_pct", source=self.epochs_src, color=color,
                               size=7, legend_label=label)
        if name != "train_accuracy":
            self.acc_steps.scatter("end_step", f"{name}_pct", source=self.marks_src,
                                   color=color, size=8, legend_label=label)
        self.acc_epoch.legend.location = "bottom_right"
        self.acc_steps.legend.location = "bottom_right"
        _lean(self.acc_epoch)
        _lean(self.acc_steps)
        self._acc_series[name] = label

    # --- updating ----------------------------------------------------------------------------
    def poll(self) -> None:
        model = self.follower.model
        if model is None:
            self.status_div.text = status_html(None, self.follower.waiting)
            return
        since = time.monotonic() - self._drawn_at
        if model.version != self.version and (
                model.header.status != self.status_src.data["status"][0]
                or (self._acked == self.version and since >= MIN_REDRAW_S)
                or since >= ACK_TIMEOUT_S):
            self.doc.hold("combine")
            try:
                self.update(model)
            finally:
                self.doc.unhold()
        else:   # the age of the last commit moves on
            self.status_div.text = status_html(model, None)

    def _ack(self, attr: str, old: list, new: list) -> None:
        if new:
            self._acked = int(new[0])

    def update(self, model: PageModel) -> None:
        """Show `model` in every figure built so far (the tabs not yet selected have none)."""
        self.version = model.version
        self._model = model
        self._drawn_at = time.monotonic()
        self._update_curves(model)
        if self.hist_box is not None:
            self._update_conductance(model)
        if self.monitor_box is not None:
            self._update_monitors_and_events(model)
        self._show_tab(self.tabs.active)    # selected while the page waited for its log
        for seg in model.segments[len(self.segment_spans):]:
            for fig in (self.acc_steps, self.loss_fig, self.set_fig, self.reset_fig):
                span = Span(location=seg.complete_step, dimension="height",
                            line_color="#b7791f", line_dash="dotdash", line_width=2)
                fig.add_layout(span)
            self.segment_spans.append(span)
        # last: the browser applies changes in order, so a page showing this status (and
        # its version) shows every figure of the same commit
        self.status_div.text = status_html(model, None)
        self.status_src.data = status_row(model, None)

    def _update_curves(self, model: PageModel) -> None:
        ep = model.epochs
        data = {"epoch": ep.epoch.astype(np.int64)}
        marks = {"end_step": ep.end_step}
        for name, v in ep.accuracy.items():
            data[name] = v
            data[f"{name}_pct"] = 100.0 * v
            marks[f"{name}_pct"] = 100.0 * v
        for name, v in ep.loss.items():
            data[name] = v
            marks[name] = v
        for name in ep.accuracy:
            if name not in self._acc_series:
                self._accuracy_series(name, len(self._acc_series))
        for name in self._acc_series:   # a series once drawn keeps its column
            data.setdefault(f"{name}_pct", np.full(ep.epoch.size, np.nan))
            marks.setdefault(f"{name}_pct", np.full(ep.epoch.size, np.nan))
        marks.setdefault("train_loss", np.full(ep.epoch.size, np.nan))
        self.epochs_src.data = data
        self.marks_src.data = marks
        w = model.windows
        cols = w.as_columns()
        cols["start_edge"] = w.start - 0.5
        cols["stop_edge"] = w.stop + 0.5
        cols["train_pct"] = 100.0 * w.train_accuracy
        self.windows_src.data = cols
        self.windows_title.text = (f"<p style='color:#666;width:480px'>Windows of {w.width:,} "
                                   f"step(s); step 0 (initial RESET and programming of every "
                                   f"mapped device) is not drawn. Dotted lines: where a "
                                   f"resumed run's earlier segments stopped.</p>")

    def _update_conductance(self, model: PageModel) -> None:
        for h in model.histograms:
            src = self.hist_src.get(h.name) or self._hist_figure(h.name)
            src.data = {"left": h.edges[:-1], "right": h.edges[1:],
                        "plus": h.plus.astype(np.int64), "minus": h.minus.astype(np.int64),
                        "plus_top": np.where(h.plus > 0, h.plus, np.nan),
                        "minus_top": np.where(h.minus > 0, h.minus, np.nan)}
        geo = model.grid.geometry
        self.chip_src.data = {"image": [model.region_g.astype(np.float64)], "x": [0],
                              "y": [0], "dw": [geo.cols], "dh": [geo.total_rows]}
        if len(self.blocks_src.data["key"]) != len(model.blocks.key):
            keys = list(dict.fromkeys(model.blocks.key))
            pal = Category20_20 if len(keys) > 10 else Category10_10
            color = {k: pal[i % len(pal)] for i, k in enumerate(keys)}
            b = model.blocks
            self.blocks_src.data = {"x0": b.x0, "x1": b.x1, "y0": b.y0, "y1": b.y1,
                                    "key": list(b.key), "color": [color[k] for k in b.key]}
            self.bad_src.data = {k: np.asarray(v) for k, v in model.bad.items()}

    def _update_monitors_and_events(self, model: PageModel) -> None:
        for t in model.monitors:
            src = self.monitor_src.get(t.label) or self._monitor_figure(t)
            outside = t.band.outside(t.value) if t.band is not None else \
                np.zeros(t.value.size, bool)
            src.data = {"step": t.step, "value": _clean(t.value),
                        "outside": outside.astype(np.int8)}
        self.events_src.data = {
            "step": [e.step for e in model.events],
            "time": [_dt.datetime.fromtimestamp(e.time_unix).strftime("%Y-%m-%d %H:%M:%S")
                     if math.isfinite(e.time_unix) else "" for e in model.events],
            "kind": [e.kind for e in model.events], "text": [e.text for e in model.events]}

    # --- Stop --------------------------------------------------------------------------------
    def _stop_confirmed(self) -> None:
        if self.stop_button.disabled:
            return
        for b in (self.stop_button, self.confirm_button):
            b.disabled = True
        self.confirm_button.label = "Stop requested: the run stops after the current step"
        self.on_stop("stopped from the live view")


class PageFactory:
    """The Bokeh application function: a LivePage for each new session, built before the
    browser asks for it.

    Building a page's first tab (some 190 Bokeh models) is most of what the server does for a
    new session, so one page is kept ready: `prepare` builds it (at start, and
    `SPARE_DELAY_S` after each session took the last one, once that session's browser has
    had its document), and a session takes it, brought up to the newest commit, instead of
    waiting for a build. Everything runs on the server's IO loop, as Bokeh requires of a
    session's documents."""

    def __init__(self, follower: LogFollower, on_stop: Optional[StopHandler] = None) -> None:
        self.follower = follower
        self.on_stop = on_stop
        self._spare: Optional[LivePage] = None

    @property
    def ready(self) -> Optional[LivePage]:
        """The page the next session will get, if one is built."""
        return self._spare

    def prepare(self) -> None:
        """Build the spare page now (nothing if one is ready, or none can be shown yet)."""
        if self._spare is None and self.follower.model is not None:
            self._spare = LivePage(self.follower, self.on_stop)

    def __call__(self, doc: Document) -> None:
        page, self._spare = self._spare, None
        if page is None:
            page = LivePage(self.follower, self.on_stop)
        page.attach(doc)
        IOLoop.current().call_later(SPARE_DELAY_S, self.prepare)


def page_factory(follower: LogFollower, on_stop: Optional[StopHandler] = None
                 ) -> PageFactory:
    """The Bokeh application function (see `PageFactory`)."""
    return PageFactory(follower, on_stop)


__all__ = ["LivePage", "PageFactory", "TAB_TITLES", "page_factory", "status_html",
           "status_row"]
