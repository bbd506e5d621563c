"""`pcm-hil replay --verify`: re-run a logged experiment against its own log, bit for bit.

The re-run talks to the replay backend (hil.replay.backend), which serves every logged read
and MATVEC and checks every command; VerifyRecorder checks every metric and snapshot (the
trainer's whole state record, where the log holds one) the re-run reports against the logged
ones; at the end the summaries are compared. Only wall-clock figures are exempt
(hil.run_log.is_wall_clock).

A re-run need not start at step 0: `verify_segment` restarts the trainer from the state
record of one snapshot and checks the run up to a later one (or to the end), which is how
`--workers N` checks a log's segments side by side (hil.replay.parallel).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from drivers.backend import Capability
from drivers.errors import HilError
from hil.recorder import Recorder
from hil.replay.backend import ReplayBackend
from hil.replay.divergence import LogEnded, ReplayDivergence, first_difference
from hil.run_control import raise_if_interrupted
from hil.run_log import RunLog, RunLogError, arithmetic_mismatch, is_wall_clock
from hil.run_state import RunState
from hil.trainer_state import StateLayout, TrainerState

#: Summary keys that legitimately differ between a live run and its replay: the chip's URL,
#: and the energy estimate (the run's counts priced by an energy table the lab may replace).
SUMMARY_IGNORED = frozenset({"backend", "energy"})


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class SegmentEnd(Exception):
    """The re-run took, and matched, the snapshot its segment ends at: the segment is done
    (raised by VerifyRecorder to stop the trainer there)."""


class VerifyRecorder(Recorder):
    """Compares what a re-run reports with what the log recorded, exactly.

    `start`, `stop`: snapshot indices of a segment (the re-run restarted from snapshot
    `start`'s state, None: from step 0) and the snapshot it ends at (None: the log's end);
    only the rows logged between them are read and expected. After matching snapshot
    `stop` it raises SegmentEnd."""

    def __init__(self, log: RunLog, start: Optional[int] = None,
                 stop: Optional[int] = None) -> None:
        self.log = log
        a = log.snapshot_position(start) if start is not None else None
        b = log.snapshot_position(stop) if stop is not None else None
        self.step_metrics = log.step_metrics(a.step_metric_row if a else 0,
                                             b.step_metric_row if b else None)
        self.epoch_metrics = log.epoch_metrics(a.epoch_metric_row if a else 0,
                                               b.epoch_metric_row if b else None)
        self.snaps = log.snapshots()
        self.n_step = self.step_metrics["step"].size
        self.n_epoch = self.epoch_metrics["epoch"].size
        self.first_snapshot = 0 if start is None else start + 1
        self.stop = stop
        #: one past the last snapshot the re-run must take
        self.n_snap = self.snaps["step"].size if stop is None else stop + 1
        self.si = self.ei = 0
        self.ki = self.first_snapshot
        #: whether snapshots are compared with the log's state records (the log has them,
        #: of the layout the re-run's trainer declares)
        self.compare_state = False
        self.state_note: Optional[str] = None
        self.finished: Optional[tuple] = None

    @property
    def snapshots_checked(self) -> int:
        return self.ki - self.first_snapshot

    def begin(self, *, config: Mapping[str, Any], provenance: Mapping[str, Any],
              layout: Mapping[str, np.ndarray],
              state_layout: Optional[StateLayout] = None) -> None:
        logged = self.log.layout
        if list(layout) != list(logged):
            raise ReplayDivergence(f"layout keys {list(layout)}, the log has {list(logged)}")
        for k, a in layout.items():
            if not np.array_equal(np.asarray(a), logged[k]):
                raise ReplayDivergence(f"layout[{k!r}] differs from the logged layout")
        own = self.log.state_layout
        diff = None if own is None or state_layout is None else state_layout.difference(own)
        self.compare_state = own is not None and state_layout is not None and diff is None
        if own is not None and diff is not None:
            self.state_note = (f"the log's trainer state records are not this trainer's "
                               f"({diff}): snapshots were compared on conductances and chi")

    def _compare(self, kind: str, table: Dict[str, np.ndarray], i: int, n: int, key: str,
                 value: int, metrics: Mapping[str, float]) -> None:
        if i >= n:
            raise LogEnded(f"the run reported {kind} metrics for {key} {value}, the log has "
                           f"only {n} rows", step=value if key == "step" else None)
        logged_key = int(table[key][i])
        where = {"step": value} if key == "step" else {}
        if logged_key != value:
            raise ReplayDivergence(f"{kind} metrics row {i} is for {key} {value}, the log's "
                                   f"is for {key} {logged_key}", **where)
        names = set()
        for name, v in metrics.items():
            if is_wall_clock(name):
                continue
            names.add(name)
            if name not in table:
                raise ReplayDivergence(f"{kind} metric {name!r} at {key} {value} is not in the "
                                       "log", **where)
            fv, lv = float(v), float(table[name][i])
            if not _same(fv, lv):
                raise ReplayDivergence(f"{kind} metric {name!r} at {key} {value}: run {fv!r}, "
                                       f"log {lv!r}", **where)
        for name, col in table.items():
            if name != key and name not in names and not is_wall_clock(name) \
                    and not math.isnan(float(col[i])):
                raise ReplayDivergence(f"{kind} metric {name!r} at {key} {value} is in the log "
                                       "but the run did not report it", **where)

    def on_step_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        raise_if_interrupted()   # a Ctrl-C that Python dropped: stop at this step after all
        self._compare("step", self.step_metrics, self.si, self.n_step, "step", int(step),
                      metrics)
        self.si += 1

    def on_epoch_metrics(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._compare("epoch", self.epoch_metrics, self.ei, self.n_epoch, "epoch", int(epoch),
                      metrics)
        self.ei += 1

    def on_snapshot(self, step: int, g_us: np.ndarray, chi: Mapping[str, np.ndarray]) -> None:
        self._check_snapshot(int(step), g_us, chi, None)

    def on_state_snapshot(self, state: TrainerState) -> None:
        self._check_snapshot(state.step, state.g_us, state.chi, state)

    def _check_snapshot(self, step: int, g_us: np.ndarray, chi: Mapping[str, np.ndarray],
                        state: Optional[TrainerState]) -> None:
        i = self.ki
        if i >= self.n_snap:
            if self.stop is not None:
                raise ReplayDivergence(f"the run took a snapshot after the log's snapshot "
                                       f"{self.stop}, where its segment ends", step=int(step))
            raise LogEnded(f"the run took snapshot {i}, the log has {self.n_snap}",
                           step=int(step))
        ls = int(self.snaps["step"][i])
        if ls != step:
            raise ReplayDivergence(f"snapshot {i} taken at step {step}, the log's at "
                                   f"step {ls}", step=step)
        g = np.asarray(g_us, dtype=np.float32).ravel()
        lg = self.log.snapshot_g(i)
        if g.size != lg.size or not np.array_equal(g, lg, equal_nan=True):
            j = first_difference(g.view(np.uint32), lg.view(np.uint32))
            dev = int(self.log.addresses[j]) if j < self.log.addresses.size else None
            raise ReplayDivergence(f"snapshot {i}: conductance {_atf(g, j)}, log "
                                   f"{_atf(lg, j)}", step=step, device=dev)
        lchi = self.log.snapshot_chi(i)
        for name, arr in lchi.items():
            c = np.asarray(chi.get(name, np.zeros(0)), dtype=np.float32).ravel()
            if c.size != arr.size or not np.array_equal(c, arr.ravel(), equal_nan=True):
                raise ReplayDivergence(f"snapshot {i}: chi[{name!r}] differs from the log",
                                       step=step)
        if self.compare_state and self.log.snapshot_has_state(i):
            if state is None:
                raise ReplayDivergence(f"snapshot {i}: the log holds the trainer's state "
                                       "record, the run gave none", step=step)
            diffs = state.differences(self.log.snapshot_state(i), limit=1)
            if diffs:
                raise ReplayDivergence(f"snapshot {i}: trainer state {diffs[0]} (run "
                                       "against log)", step=step)
        self.ki += 1
        if i == self.stop:
            raise SegmentEnd(i)

    def finish(self, status: str, reason: Optional[str] = None,
               summary: Optional[Dict[str, Any]] = None) -> None:
        self.finished = (status, reason, summary)


@dataclass
class VerifyReport:
    """Outcome of `verify_run` (or of one segment, `verify_segment`)."""

    ok: bool
    message: str
    divergence: Optional[BaseException] = None
    batches_checked: int = 0
    reads_served: int = 0
    matvecs_served: int = 0
    step_metrics_checked: int = 0
    epoch_metrics_checked: int = 0
    snapshots_checked: int = 0
    seconds: float = 0.0
    logged_seconds: Optional[float] = None
    summary_differences: List[str] = field(default_factory=list)
    segments: int = 1                 # segments checked (1: the whole run in one re-run)
    workers: int = 1                  # processes they were checked on
    note: Optional[str] = None        # what the operator should know (a serial fallback)
    #: where the time went, seconds: "setup" (opening, seeking, restoring), "run"; a
    #: parallel verification adds "plan", "workers_start", "segments", "merge"
    timings: Dict[str, float] = field(default_factory=dict)
    parts: List["VerifyReport"] = field(default_factory=list)   # each segment's, in order


def _atf(a: np.ndarray, j: int) -> str:
    return repr(float(a[j])) if j < a.size else "(none)"


def compare_summaries(logged: Mapping[str, Any], new: Mapping[str, Any],
                      exact_read_logged: bool) -> List[str]:
    """Keys whose values differ, ignoring wall-clock fields (and state_digest when the
    logged chip computed it from an exact read the log does not hold)."""
    diffs = []
    for k, v in logged.items():
        if is_wall_clock(k) or k in SUMMARY_IGNORED or k == "examples_per_s":
            continue
        if k == "state_digest" and exact_read_logged:
            continue
        if k not in new:
            diffs.append(f"{k}: missing from the re-run")
            continue
        if not _summary_equal(v, new[k]):
            diffs.append(f"{k}: run {new[k]!r}, log {v!r}")
    return diffs


def _summary_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in a if not is_wall_clock(k)} | {k for k in b if not is_wall_clock(k)}
        return all(_summary_equal(a.get(k), b.get(k)) for k in keys)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_summary_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return _same(float(a), float(b))
    return a == b


def check_verifiable(log: RunLog, cfg: Any) -> None:
    """RunLogError when the log cannot serve a re-run of its config at all."""
    from hil.config import MatvecMode
    why = arithmetic_mismatch(log.provenance, "verified")
    if why is not None:
        raise RunLogError(why, path=log.path)
    if cfg.training.matvec is MatvecMode.CHIP and not log.has_matvec:
        raise RunLogError(f"the run used training.matvec: chip, and its log (schema "
                          f"{log.schema_version}) has no MATVEC results, so it cannot be "
                          "verified (schema 1.1 logs them)", path=log.path)


def verify_segment(log: RunLog, start: Optional[int] = None, stop: Optional[int] = None, *,
                   progress: bool = False, data: Any = None) -> VerifyReport:
    """Re-run the logged experiment from snapshot `start` (its state record; None: from step
    0) to snapshot `stop` (None: to the end, the summary compared too) against the log; ok
    only if every command, metric and snapshot between them matches exactly. Reads only the
    rows between the two snapshots' positions."""
    from hil.training import run_experiment

    t0 = time.perf_counter()
    cfg = log.experiment_config()
    check_verifiable(log, cfg)
    backend = ReplayBackend(log, start=log.snapshot_position(start) if start is not None
                            else None,
                            stop=log.snapshot_position(stop) if stop is not None else None)
    rec = VerifyRecorder(log, start, stop)
    state = log.snapshot_state(start) if start is not None else None
    logged_status = log.status
    logged_summary = logged_status.summary or {}
    report = VerifyReport(False, "", logged_seconds=logged_summary.get("train_seconds"))
    t1 = time.perf_counter()
    summary = None
    completed = logged_status.status == RunState.COMPLETED
    ended: Optional[LogEnded] = None
    try:
        summary = run_experiment(cfg, backend, rec, progress=progress, data=data, start=state)
    except SegmentEnd:
        pass
    except LogEnded as e:
        if completed:
            report.divergence, report.message = e, str(e)
        else:
            ended = e   # an aborted, failed or killed run's record stops here
    except (ReplayDivergence, HilError) as e:
        report.divergence = e
        report.message = str(e)
    t2 = time.perf_counter()
    report.seconds = t2 - t0
    report.timings.update(setup=t1 - t0, run=t2 - t1)
    report.batches_checked = backend.batches_checked
    report.reads_served = backend.reads_served
    report.matvecs_served = backend.matvecs_served
    report.step_metrics_checked = rec.si
    report.epoch_metrics_checked = rec.ei
    report.snapshots_checked = rec.snapshots_checked
    report.note = rec.state_note
    if report.divergence is not None:
        return report
    if ended is not None:
        report.ok = True
        report.message = (f"the logged run did not complete (status {logged_status.status}: "
                          f"{logged_status.reason}); everything it logged matches, through "
                          f"step {log.complete_step}: " + describe_checked(report, None))
        return report
    left = []
    if backend.remaining():
        left.append(f"{backend.remaining()} logged commands were never sent")
    if rec.si != rec.n_step:
        left.append(f"{rec.n_step - rec.si} logged step-metric rows were never reported")
    if rec.ei != rec.n_epoch:
        left.append(f"{rec.n_epoch - rec.ei} logged epoch-metric rows were never reported")
    if rec.ki != rec.n_snap:
        left.append(f"{rec.n_snap - rec.ki} logged snapshots were never taken")
    if left:
        report.message = "replay diverged at the end of the run: " + "; ".join(left)
        return report
    if stop is None:
        if logged_status.status != RunState.COMPLETED:
            report.message = (f"the logged run did not complete (status "
                              f"{logged_status.status}: {logged_status.reason}); the replay "
                              "reproduced everything it logged")
            return report
        exact = Capability.EXACT_READ.value in backend.logged_capabilities
        report.summary_differences = compare_summaries(logged_summary, summary or {}, exact)
        if report.summary_differences:
            report.message = ("replay diverged in the run summary: "
                              + "; ".join(report.summary_differences))
            return report
    report.ok = True
    report.message = "replay matches the log: " + describe_checked(
        report, "the summary" if stop is None else None)
    return report


def describe_checked(report: VerifyReport, last: Optional[str]) -> str:
    """What a verification checked, in words ("12 pulse batches, ... 3 snapshots")."""
    mv = f"{report.matvecs_served:,} MATVECs, " if report.matvecs_served else ""
    return (f"{report.batches_checked:,} pulse batches, {report.reads_served:,} reads, {mv}"
            f"{report.step_metrics_checked:,} step and {report.epoch_metrics_checked:,} "
            f"epoch metric rows, {report.snapshots_checked} snapshots"
            + (f" and {last}" if last else ""))


def verify_run(path: str, *, progress: bool = False, data: Any = None, workers: int = 1,
               ray: bool = False, address: Optional[str] = None) -> VerifyReport:
    """Re-run the logged experiment against its own log; ok only if every command, metric,
    snapshot and the summary match exactly.

    `workers` > 1 checks the log's segments side by side (hil.replay.parallel) on local
    processes, on a Ray cluster started here (`ray`) or on the one at `address`; a log whose
    snapshots hold no trainer state of this trainer's (before schema 1.3) is then checked in
    one re-run, with a note saying so."""
    if workers != 1 or ray or address is not None:
        from hil.replay.parallel import verify_parallel
        return verify_parallel(path, workers=workers, ray=ray, address=address,
                               progress=progress, data=data)
    with RunLog(path) as log:
        return verify_segment(log, progress=progress, data=data)


__all__ = ["SUMMARY_IGNORED", "SegmentEnd", "VerifyRecorder", "VerifyReport",
           "check_verifiable", "compare_summaries", "describe_checked", "verify_run",
           "verify_segment"]
