"""Follow a run log as it grows, and keep the page's data current.

`LogFollower` re-opens the log (read-only, through `RunLog`: SWMR-read when a writer is
live) each time the file changes, i.e. at each of the writer's commits, and turns what the
commit added into a new `PageModel`. What it reads per commit:

- the per-step, per-epoch and monitor metrics and the status history (one row per step,
  epoch, poll or status change: the small tables);
- the RESET rows of the pulse *batch* table (which `RunLog` holds in memory once open);
- the read *events* of the steps committed since the last refresh, and only those: the
  conductance of every device is kept here and brought up to date with them, so the event
  tables are never read whole (the first refresh starts from `RunLog.conductance`, i.e. the
  last snapshot plus the reads after it).

Nothing is ever written to the log. A `PageModel` is immutable; the server's sessions read
the latest one (an attribute swap, safe across threads) and redraw when its version moves.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from hil.run_log import RunLog, RunLogError
from hil.watch import model as m
from hil.watch.conductance import (Blocks, Geometry2D, LayerGroup, LayerHistogram, MapGrid,
                                   bad_marks, layer_groups, layer_histograms, layout_blocks,
                                   map_grid, region_means)

log = logging.getLogger("pcm_hil.watch")

#: How often the file is checked for a new commit (a stat call: cheap).
POLL_S = 0.25


@dataclass(frozen=True)
class PageModel:
    """Everything the page draws, at one commit of the log."""

    version: int
    header: m.RunHeader
    windows: m.StepWindows
    epochs: m.EpochSeries
    histograms: List[LayerHistogram]
    grid: MapGrid
    region_g: np.ndarray
    blocks: Blocks
    bad: Dict[str, np.ndarray]
    monitors: List[m.MonitorTrace]
    events: List[m.Event]
    segments: List[m.Segment]
    refresh_s: float            # what reading this commit cost the follower


@dataclass
class _Static:
    """What does not change while a log grows: read at the first open."""

    identity: Tuple[str, int]
    name: str
    config: Dict[str, Any]
    provenance: Dict[str, Any]
    addresses: np.ndarray
    lut: np.ndarray                      # address -> layout position (-1: not mapped)
    groups: List[LayerGroup]
    grid: MapGrid
    region_lut: np.ndarray
    blocks: Blocks
    bad: Dict[str, np.ndarray]
    bands: Dict[str, m.Band]
    segments: List[m.Segment]
    g_range: Tuple[float, float]
    notes: Tuple[str, ...]
    total_examples: Optional[int]
    epochs: Optional[int]


def _geometry(log: RunLog, config: Dict[str, Any]) -> Geometry2D:
    info = log.chip_info()
    if info is not None:
        g = info.geometry
        return Geometry2D(int(g.arrays), int(g.rows), int(g.cols))
    chip = config.get("chip") or {}
    try:
        return Geometry2D(int(chip["arrays"]), int(chip["rows"]), int(chip["cols"]))
    except (KeyError, TypeError, ValueError):
        n = int(log.addresses.max(initial=0)) + 1
        cols = 2048 if n > 2048 else n
        return Geometry2D(1, -(-n // cols), cols)


def _bad_devices(config: Dict[str, Any]) -> Tuple[np.ndarray, Tuple[str, ...]]:
    """The config's mapping.bad_devices, plus its bad_devices_file when that is readable
    here (the log records the file's name, not its content)."""
    from drivers.errors import ConfigError
    from hil.device_pairs import load_bad_devices
    mp = config.get("mapping") or {}
    listed = [int(a) for a in (mp.get("bad_devices") or ())]
    path = mp.get("bad_devices_file")
    if path:
        try:
            return load_bad_devices(listed, path), ()
        except ConfigError as e:
            return np.asarray(listed, np.int64), (f"bad devices from {path} not shown: {e}",)
    return np.asarray(listed, np.int64), ()


def _static(log: RunLog) -> _Static:
    config = log.config
    prov = log.provenance
    addr = np.asarray(log.addresses, dtype=np.int64)
    lut = np.full(int(addr.max(initial=-1)) + 1, -1, dtype=np.int64)
    lut[addr] = np.arange(addr.size)
    geo = _geometry(log, config)
    grid = map_grid(geo)
    bad, notes = _bad_devices(config)
    info = log.chip_info()
    g_range = (float(info.g_min_us), float(info.g_max_us)) if info is not None else (0.0, 25.0)
    try:
        epochs = int(config["training"]["epochs"])
    except (KeyError, TypeError, ValueError):
        epochs = None
    return _Static((log.created_utc, int(addr.size)), log.name or str(config.get("name", "")),
                   config, prov, addr, lut, layer_groups(log.layout), grid,
                   grid.region_of(addr), layout_blocks(log.layout, grid), bad_marks(bad, grid),
                   m.monitor_bands(prov), m.resume_segments(prov), g_range, notes,
                   m.configured_examples(config), epochs)


class LogFollower:
    """Keeps a `PageModel` of one run log current (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self.model: Optional[PageModel] = None
        #: Why the log cannot be shown yet (e.g. the run has not begun), or None.
        self.waiting: Optional[str] = "opening the run log"
        self._static: Optional[_Static] = None
        self._g: Optional[np.ndarray] = None
        self._applied_step = -1          # conductances include every read up to this step
        self._commits = -1
        self._sig: Optional[Tuple[int, int]] = None
        self._rate = m.RateMeter()
        self._version = 0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.changed = threading.Condition()

    # --- one refresh ---------------------------------------------------------------------
    def _signature(self) -> Optional[Tuple[int, int]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def refresh(self, force: bool = False) -> bool:
        """Read the log if it changed since the last refresh; True if a new commit was
        loaded. Never raises for a log that cannot be read yet: `waiting` says why."""
        sig = self._signature()
        if sig is None:
            self.waiting = "no such file (yet)"
            return False
        if sig == self._sig and not force:
            return False
        t0 = time.perf_counter()
        try:
            with RunLog(self.path) as lg:
                loaded = self._load(lg, t0)
        except RunLogError as e:
            if self.model is None:
                self.waiting = str(e)
            else:
                log.debug("refresh of %s failed (kept the last commit): %s", self.path, e)
            return False
        self._sig = sig
        if loaded:
            self.waiting = None
            with self.changed:
                self.changed.notify_all()
        return loaded

    def _load(self, lg: RunLog, t0: float) -> bool:
        commits = int(lg.counts.get("commits", 0))
        st = self._static
        if st is None or st.identity != (lg.created_utc, lg.n_devices):
            st = self._static = _static(lg)
            self._g, self._applied_step, self._commits = None, -1, -1
            self._rate = m.RateMeter()
        elif commits == self._commits:
            return False
        self._commits = commits
        done = lg.complete_step
        if self._g is None:
            self._g = np.asarray(lg.conductance(done), dtype=np.float32).copy()
        elif done > self._applied_step:
            ev = lg.read_events(self._applied_step + 1, done + 1, columns=("address", "value"))
            self._apply_reads(ev["address"], ev["value"])
        self._applied_step = done
        sm = lg.step_metrics()
        em = lg.epoch_metrics()
        mon = lg.monitor_readings()
        history = lg.status_history()
        rs, rc = m.reset_rows(lg.pulse_batches())
        extra: List[m.Event] = []
        if hasattr(RunLog, "events"):    # schema 1.2: pauses, resumed segments, ...
            extra = m.logged_events(lg.events())
        header = self._header(lg, st, sm, mon, history, extra)
        events = m.merge_events(m.status_events(history), m.segment_events(st.segments),
                                m.monitor_events(mon, st.bands), extra)
        g = self._g
        self._version += 1
        self.model = PageModel(
            self._version, header, m.step_windows(sm, rs, rc, max(done, lg.last_step)),
            m.epoch_series(em, sm), layer_histograms(g, st.groups, *st.g_range), st.grid,
            region_means(st.grid, st.addresses, g, st.region_lut), st.blocks, st.bad,
            m.monitor_traces(mon, st.bands), events, st.segments, time.perf_counter() - t0)
        return True

    def _apply_reads(self, address: np.ndarray, value: np.ndarray) -> None:
        """Last read wins: the conductance of a device is the last value read from it."""
        if not address.size:
            return
        a = address.astype(np.int64)
        lut = self._static.lut
        inside = a < lut.size
        pos = np.full(a.size, -1, np.int64)
        pos[inside] = lut[a[inside]]
        ok = pos >= 0
        pos, val = pos[ok], value[ok]
        # the last occurrence of each device: unique over the reversed rows
        uniq, first_rev = np.unique(pos[::-1], return_index=True)
        self._g[uniq] = val[::-1][first_rev]

    def _header(self, lg: RunLog, st: _Static, sm: Dict[str, np.ndarray],
                mon: Dict[str, np.ndarray], history: List[Any],
                extra: List[m.Event]) -> m.RunHeader:
        status = lg.status
        state, reason = status.status, status.reason
        batch = int(((st.config.get("optimizer") or {}).get("batch_size")) or 1)
        done = m.examples_done(sm, batch)
        commit_t = lg.counts.get("time_us", 0) / 1e6 or None
        if commit_t:
            self._rate.add(commit_t, done)
        if state == "running":
            why = m.paused_now(mon, st.bands) or _paused_by_events(extra)
            if why:
                state, reason = "paused", why
        if state == "completed" and status.summary:
            rate = status.summary.get("examples_per_s")
        else:
            rate = self._rate.rate(history[0].time_unix if history else None)
        eta = m.eta_seconds(done, st.total_examples, rate) if state in ("running",
                                                                          "paused") else None
        ep = sm.get("epoch")
        epoch = int(ep[-1]) + 1 if ep is not None and len(ep) and np.isfinite(ep[-1]) else None
        seg = int((st.provenance.get("resume") or {}).get("segment", 1))
        return m.RunHeader(st.name, self.path, state, reason, lg.last_step, epoch,
                           st.epochs, done, st.total_examples, rate, eta, commit_t,
                           int(lg.counts.get("commits", 0)), seg, st.notes)

    # --- the polling thread -----------------------------------------------------------------
    def start(self, poll_s: float = POLL_S) -> "LogFollower":
        """Refresh in a background thread until `stop()`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, args=(poll_s,),
                                            name="pcm-hil-watch-follower", daemon=True)
            self._thread.start()
        return self

    def _loop(self, poll_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep following; the page shows the last commit
                log.exception("reading %s failed", self.path)
            self._stop.wait(poll_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop following, after the refresh under way, if any: a thread left inside h5py
        while the interpreter exits can hold h5py's lock against the exit's own clean-up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def wait_for(self, predicate: Callable[[Optional[PageModel]], bool],
                 timeout_s: float) -> Optional[PageModel]:
        """Block until `predicate(model)` holds for a loaded commit (or the timeout
        passes); returns the model then."""
        with self.changed:
            self.changed.wait_for(lambda: predicate(self.model), timeout_s)
        return self.model

    def wait_for_model(self, timeout_s: float) -> Optional[PageModel]:
        """Block until a first commit is loaded (or the timeout passes)."""
        return self.wait_for(lambda model: model is not None, timeout_s)


def _paused_by_events(events: List[m.Event]) -> Optional[str]:
    """A logged pause not followed by a logged resume (schema 1.2 events)."""
    for e in reversed(events):
        k = e.kind.lower()
        if "resume" in k or "continue" in k:
            return None
        if "pause" in k:
            return e.text or f"paused at step {e.step}"
    return None


__all__ = ["LogFollower", "PageModel", "POLL_S"]
