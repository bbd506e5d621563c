"""The page's data, as pure functions of what a run log holds.

Every figure of the live view is computed here from arrays a `RunLog` returns, with no
browser and no server involved, so that what the page shows can be tested against the log
directly. The functions take plain arrays and dicts (not a RunLog) where they can: the
follower (`hil.watch.follower`) decides what to read and when, these decide what it means.

Over-steps curves are sums or means over *windows* of steps, sized so that a 1.2 M-step run
still draws a few hundred points: the browser gets the shape of the run, not its raw rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: About this many windows over the steps of a run (the window is a 1-2-5 number of steps).
TARGET_WINDOWS = 400
#: Monitor traces longer than this are drawn as per-bucket minimum and maximum.
MAX_TRACE_POINTS = 4000

#: How the well-known accuracy metrics are labelled; any other `*_accuracy` keeps its name.
ACCURACY_LABELS = {
    "train_accuracy": "train",
    "validation_accuracy": "validation",
    "val_accuracy": "validation",
    "test_accuracy": "test",
    "baseline_test_accuracy": "fp32 baseline (test)",
}


# --- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepWindows:
    """Per-window sums and means over steps 1..last (step 0, initial programming, apart)."""

    width: int                 # steps per window
    start: np.ndarray          # first step of each window
    stop: np.ndarray           # last step of each window (inclusive)
    steps: np.ndarray          # logged steps in the window
    loss: np.ndarray           # mean loss (NaN: no step with a loss)
    train_accuracy: np.ndarray  # sum(correct) / sum(examples)
    set_pulses: np.ndarray     # update SET pulses (step metric set_pulses)
    resets: np.ndarray         # devices RESET (refresh_reset batches; RESET = 1 pulse each)
    refreshes: np.ndarray      # G+/G- pairs refreshed (step metric refreshes)

    def as_columns(self) -> Dict[str, np.ndarray]:
        return {"start": self.start, "stop": self.stop, "mid": (self.start + self.stop) / 2.0,
                "steps": self.steps, "loss": self.loss,
                "train_accuracy": self.train_accuracy, "set_pulses": self.set_pulses,
                "resets": self.resets, "refreshes": self.refreshes}


@dataclass(frozen=True)
class EpochSeries:
    """Per-epoch metrics: `epoch` is 1-based, as the trainer prints it; `end_step` the last
    step of each epoch (NaN when the per-step metrics do not say)."""

    epoch: np.ndarray
    end_step: np.ndarray
    accuracy: Dict[str, np.ndarray]   # metric name -> values (NaN where not logged)
    loss: Dict[str, np.ndarray]


@dataclass(frozen=True)
class Band:
    """A monitor's band and action, from the station in the log's provenance."""

    low: Optional[float]
    high: Optional[float]
    action: str

    def outside(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        out = ~np.isfinite(v)
        if self.low is not None:
            out |= v < self.low
        if self.high is not None:
            out |= v > self.high
        return out


@dataclass(frozen=True)
class MonitorTrace:
    """One instrument reading over the run, with its band (None if the log has no band)."""

    label: str
    step: np.ndarray
    value: np.ndarray
    band: Optional[Band]
    rows: int                  # readings logged (the trace may be thinned for drawing)
    out_of_band: int           # readings outside the band


@dataclass(frozen=True)
class Event:
    """One line of the events panel."""

    step: int
    time_unix: float           # NaN when the source has no time
    kind: str                  # status, resume, monitor, pause, or a logged event's kind
    text: str


@dataclass(frozen=True)
class RunHeader:
    """The status line: what the run is doing and how far it is."""

    name: str
    path: str
    status: str                # running, paused, completed, aborted, failed
    reason: Optional[str]
    step: int                  # the last step logged
    epoch: Optional[int]       # 1-based epoch of that step
    epochs: Optional[int]      # epochs configured
    examples: int
    examples_total: Optional[int]
    examples_per_s: Optional[float]
    eta_s: Optional[float]
    commit_time_unix: Optional[float]
    commits: int
    segment: int = 1           # 2, 3, ... for a resumed run
    notes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Segment:
    """An earlier log of a resumed run, as the resumed log's provenance records it."""

    index: int
    log: str
    status: str
    reason: Optional[str]
    complete_step: int


# --- windows over steps -------------------------------------------------------------------------
def window_width(last_step: int, target: int = TARGET_WINDOWS) -> int:
    """The smallest 1-2-5 number of steps that cuts 1..last_step into at most `target`
    windows (1 for short runs: every step its own point)."""
    need = max(1, math.ceil(max(0, int(last_step)) / max(1, target)))
    mag = 1
    while True:
        for m in (1, 2, 5):
            if m * mag >= need:
                return m * mag
        mag *= 10


def step_windows(sm: Mapping[str, np.ndarray], reset_steps: np.ndarray,
                 reset_counts: np.ndarray, last_step: Optional[int] = None,
                 target: int = TARGET_WINDOWS) -> StepWindows:
    """Window sums and means of the per-step metrics (`RunLog.step_metrics()`) and of the
    devices RESET per step (from the RESET rows of `RunLog.pulse_batches()`)."""
    steps = np.asarray(sm.get("step", np.zeros(0, np.int64)), dtype=np.int64)
    rs = np.asarray(reset_steps, dtype=np.int64)
    rc = np.asarray(reset_counts, dtype=np.float64)
    if last_step is None:
        last_step = int(max(steps.max(initial=0), rs.max(initial=0)))
    width = window_width(last_step, target)
    n = max(1, math.ceil(last_step / width)) if last_step > 0 else 0
    start = 1 + width * np.arange(n, dtype=np.int64)
    stop = np.minimum(start + width - 1, max(last_step, 0))

    def binner(step: np.ndarray):
        keep = (step >= 1) & (step <= last_step)
        idx = (step[keep] - 1) // width

        def binned(w: np.ndarray) -> np.ndarray:
            w = np.asarray(w, np.float64)[keep]
            finite = np.isfinite(w)
            if finite.all():
                return np.bincount(idx, w, minlength=n)[:n]
            return np.bincount(idx[finite], w[finite], minlength=n)[:n]
        return binned

    def col(name: str) -> np.ndarray:
        v = sm.get(name)
        return np.full(steps.size, np.nan) if v is None else np.asarray(v, np.float64)

    per_step = binner(steps)
    count = per_step(np.ones(steps.size))
    loss = col("loss")
    loss_n = per_step(np.isfinite(loss).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_loss = per_step(loss) / loss_n
        examples = per_step(col("examples"))
        acc = per_step(col("correct")) / examples
    return StepWindows(width, start, stop, count, np.where(loss_n > 0, mean_loss, np.nan),
                       np.where(examples > 0, acc, np.nan), per_step(col("set_pulses")),
                       binner(rs)(rc), per_step(col("refreshes")))


def reset_rows(pb: Mapping[str, np.ndarray], reset_kind: int = 2) -> Tuple[np.ndarray,
                                                                           np.ndarray]:
    """(step, devices) of every RESET batch (`RunLog.pulse_batches()`: kind 2 is RESET)."""
    sel = np.asarray(pb["kind"]) == reset_kind
    return np.asarray(pb["step"])[sel], np.asarray(pb["count"])[sel]


# --- epochs ---------------------------------------------------------------------------------
def epoch_end_steps(sm: Mapping[str, np.ndarray], epochs: np.ndarray) -> np.ndarray:
    """The last logged step of each epoch (0-based epoch numbers), NaN if not logged."""
    epochs = np.asarray(epochs, np.int64)
    out = np.full(epochs.size, np.nan)
    ep = np.asarray(sm.get("epoch", ()), np.float64)
    if not ep.size or not epochs.size:
        return out
    # epochs only grow along the steps: the last row of epoch e is where e + 1 would go
    ok = np.isfinite(ep)
    ep, st = ep[ok], np.asarray(sm["step"])[ok]
    last = np.searchsorted(ep, epochs, side="right") - 1
    hit = (last >= 0) & (ep[np.maximum(last, 0)] == epochs)
    out[hit] = st[last[hit]]
    return out


def epoch_series(em: Mapping[str, np.ndarray], sm: Mapping[str, np.ndarray]) -> EpochSeries:
    """Every `*_accuracy` and `*_loss` metric per epoch (`RunLog.epoch_metrics()`)."""
    ep = np.asarray(em.get("epoch", np.zeros(0, np.int64)), np.int64)
    acc = {k: np.asarray(v, np.float64) for k, v in em.items()
           if k.endswith("_accuracy") and np.any(np.isfinite(v))}
    loss = {k: np.asarray(v, np.float64) for k, v in em.items()
            if k.endswith("_loss") and np.any(np.isfinite(v))}
    order = sorted(acc, key=lambda k: (list(ACCURACY_LABELS).index(k)
                                       if k in ACCURACY_LABELS else 99, k))
    return EpochSeries(ep + 1, epoch_end_steps(sm, ep), {k: acc[k] for k in order},
                       dict(sorted(loss.items())))


def accuracy_label(name: str) -> str:
    return ACCURACY_LABELS.get(name, name[: -len("_accuracy")].replace("_", " "))


# --- monitors -------------------------------------------------------------------------------
def monitor_bands(provenance: Mapping[str, Any]) -> Dict[str, Band]:
    """Bands by reading label (`instrument.quantity`), from provenance['station']."""
    station = provenance.get("station") or {}
    out: Dict[str, Band] = {}
    for m in station.get("monitors") or ():
        try:
            label = f"{m['instrument']}.{m['quantity']}"
        except (KeyError, TypeError):
            continue
        lo, hi = m.get("low"), m.get("high")
        out[label] = Band(None if lo is None else float(lo), None if hi is None else float(hi),
                          str(m.get("action", "pause")))
    return out


def thin(step: np.ndarray, value: np.ndarray,
         limit: int = MAX_TRACE_POINTS) -> Tuple[np.ndarray, np.ndarray]:
    """At most `limit` points that keep every excursion: per bucket of readings, the first
    step with the bucket's minimum and its maximum."""
    n = step.size
    if n <= limit:
        return step, value
    buckets = limit // 2
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    v = np.where(np.isfinite(value), value, np.nan)
    lo = np.fmin.reduceat(v, edges[:-1])
    hi = np.fmax.reduceat(v, edges[:-1])
    s = step[edges[:-1]]
    return np.repeat(s, 2), np.column_stack([lo, hi]).ravel()


def monitor_traces(readings: Mapping[str, np.ndarray],
                   bands: Mapping[str, Band]) -> List[MonitorTrace]:
    """One trace per logged reading (`RunLog.monitor_readings()`), banded when the station
    names it."""
    step = np.asarray(readings.get("step", np.zeros(0, np.int64)))
    out = []
    for label in sorted(k for k in readings if k != "step"):
        v = np.asarray(readings[label], np.float64)
        band = bands.get(label)
        n_out = int(band.outside(v).sum()) if band is not None else 0
        s, t = thin(step, v)
        out.append(MonitorTrace(label, s, t, band, int(v.size), n_out))
    return out


def monitor_events(readings: Mapping[str, np.ndarray],
                   bands: Mapping[str, Band]) -> List[Event]:
    """Excursions out of band (one event per run of consecutive readings outside), and
    pauses: a paused run re-reads its monitors at the same step, so a step with several
    rows is a pause."""
    step = np.asarray(readings.get("step", np.zeros(0, np.int64)), np.int64)
    out: List[Event] = []
    for label, band in bands.items():
        if label not in readings:
            continue
        v = np.asarray(readings[label], np.float64)
        outside = band.outside(v)
        starts = np.flatnonzero(outside & ~np.concatenate([[False], outside[:-1]]))
        ends = np.flatnonzero(outside & ~np.concatenate([outside[1:], [False]]))
        lo = "-inf" if band.low is None else f"{band.low:g}"
        hi = "+inf" if band.high is None else f"{band.high:g}"
        for a, b in zip(starts, ends):
            seg = v[a:b + 1]
            worst = seg[np.nanargmax(np.abs(seg - np.nanmean(seg)))] if np.isfinite(seg).any() \
                else float("nan")
            what = "read failed" if not np.isfinite(worst) else f"{worst:g}"
            out.append(Event(int(step[a]), float("nan"), "monitor",
                             f"{label} = {what} outside [{lo}, {hi}] ({band.action}); "
                             f"{b - a + 1} reading(s), steps {int(step[a])}-{int(step[b])}"))
    if step.size:
        uniq, counts = np.unique(step, return_counts=True)
        for s, c in zip(uniq[counts > 1], counts[counts > 1]):
            out.append(Event(int(s), float("nan"), "pause",
                             f"paused at step {int(s)}: monitors read {int(c)} times "
                             "while out of band"))
    return out


def paused_now(readings: Mapping[str, np.ndarray], bands: Mapping[str, Band]
               ) -> Optional[str]:
    """Why the run is paused, if its last monitor readings say so: the last step was read
    more than once and a pause-action reading there is still out of band."""
    step = np.asarray(readings.get("step", np.zeros(0, np.int64)))
    if step.size < 2 or step[-1] != step[-2]:
        return None
    for label, band in bands.items():
        if label in readings and band.action == "pause" and \
                band.outside(np.asarray(readings[label][-1:]))[0]:
            return f"{label} = {float(readings[label][-1]):g} out of band at step {int(step[-1])}"
    return None


# --- status, segments, events ----------------------------------------------------------------
def resume_segments(provenance: Mapping[str, Any]) -> List[Segment]:
    """The earlier logs of a resumed run (provenance['resume']['segments'])."""
    res = provenance.get("resume") or {}
    out = []
    for i, s in enumerate(res.get("segments") or (), start=1):
        try:
            out.append(Segment(i, str(s.get("log", "")), str(s.get("status", "")),
                               s.get("reason"), int(s.get("complete_step", 0))))
        except (AttributeError, TypeError, ValueError):
            continue
    return out


def status_events(history: Sequence[Any]) -> List[Event]:
    """One event per status row (`RunLog.status_history()`)."""
    out = []
    for i, h in enumerate(history):
        text = {"running": "run started" if i == 0 else "running"}.get(h.status, h.status)
        if h.reason:
            text += f": {h.reason}"
        out.append(Event(int(h.step), float(h.time_unix), "status", text))
    return out


def segment_events(segments: Sequence[Segment]) -> List[Event]:
    out = []
    for s in segments:
        why = f" ({s.reason})" if s.reason else ""
        out.append(Event(s.complete_step, float("nan"), "resume",
                         f"segment {s.index} ({s.log}) {s.status}{why} after step "
                         f"{s.complete_step}; segment {s.index + 1} continues"))
    return out


def logged_events(records: Any) -> List[Event]:
    """Events from the log's own events table (schema 1.2), whichever record shape it has:
    a sequence of records (attributes or mappings) or a dict of columns."""
    if records is None:
        return []
    if isinstance(records, Mapping):
        n = len(next(iter(records.values()), ()))
        rows = [{k: records[k][i] for k in records} for i in range(n)]
    else:
        rows = list(records)
    out = []
    for r in rows:
        get = (r.get if isinstance(r, Mapping) else lambda k, d=None, r=r: getattr(r, k, d))
        kind = get("kind", None) or get("event", None) or "event"
        text = get("text", None) or get("message", None) or get("reason", None) or ""
        detail = get("detail", None)
        if detail and not text:
            text = str(detail)
        kind = kind.decode() if isinstance(kind, bytes) else str(getattr(kind, "value", kind))
        text = text.decode() if isinstance(text, bytes) else str(text)
        t = get("time_unix", None)
        out.append(Event(int(get("step", 0) or 0), float("nan") if t is None else float(t),
                         kind, text))
    return out


def merge_events(*groups: Sequence[Event]) -> List[Event]:
    """Every event, by step (events at one step in the order of their groups)."""
    out = [e for g in groups for e in g]
    out.sort(key=lambda e: e.step)
    return out


def examples_done(sm: Mapping[str, np.ndarray], batch_size: int = 1) -> int:
    ex = sm.get("examples")
    if ex is not None and len(ex):
        return int(np.nansum(ex))
    return int(len(sm.get("step", ()))) * int(batch_size)


def configured_examples(config: Mapping[str, Any]) -> Optional[int]:
    """Training examples the run will see in all (None when the config does not say)."""
    try:
        return int(config["data"]["train_examples"]) * int(config["training"]["epochs"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class RateMeter:
    """Examples per second from the commits the follower has seen: the rate over the last
    `span_s` seconds of commit times, or, before two commits were seen, since the run began."""

    span_s: float = 60.0
    points: List[Tuple[float, int]] = field(default_factory=list)

    def add(self, time_s: float, examples: int) -> None:
        if self.points and time_s <= self.points[-1][0]:
            return
        self.points.append((time_s, examples))
        while len(self.points) > 2 and time_s - self.points[1][0] > self.span_s:
            self.points.pop(0)

    def rate(self, start_s: Optional[float] = None) -> Optional[float]:
        if len(self.points) >= 2:
            (t0, e0), (t1, e1) = self.points[0], self.points[-1]
            if t1 > t0 and e1 > e0:
                return (e1 - e0) / (t1 - t0)
        if self.points and start_s is not None:
            t1, e1 = self.points[-1]
            if t1 > start_s and e1 > 0:
                return e1 / (t1 - start_s)
        return None


def eta_seconds(done: int, total: Optional[int], rate: Optional[float]) -> Optional[float]:
    if total is None or not rate or rate <= 0:
        return None
    return max(0.0, (total - done) / rate)


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
