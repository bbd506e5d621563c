"""`pcm-hil replay --verify`: re-run a logged experiment against its own log, bit for bit.

The re-run talks to the replay backend (hil.replay.backend), which serves every logged read
and MATVEC and checks every command; VerifyRecorder checks every metric and snapshot the
re-run reports against the logged ones; at the end the summaries are compared. Only wall-clock
figures are exempt (hil.run_log.is_wall_clock).
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
from hil.replay.divergence import ReplayDivergence, first_difference
from hil.run_log import RunLog, RunLogError, arithmetic_mismatch, is_wall_clock
from hil.run_state import RunState

#: Summary keys that legitimately differ between a live run and its replay: the chip's URL,
#: and the energy estimate (the run's counts priced by an energy table the lab may replace).
SUMMARY_IGNORED = frozenset({"backend", "energy"})


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class VerifyRecorder(Recorder):
    """Compares what a re-run reports with what the log recorded, exactly."""

    def __init__(self, log: RunLog) -> None:
        self.log = log
        self.step_metrics = log.step_metrics()
        self.epoch_metrics = log.epoch_metrics()
        self.snaps = log.snapshots()
        self.n_step = self.step_metrics["step"].size
        self.n_epoch = self.epoch_metrics["epoch"].size
        self.n_snap = self.snaps["step"].size
        self.si = self.ei = self.ki = 0
        self.finished: Optional[tuple] = None

    def begin(self, *, config: Mapping[str, Any], provenance: Mapping[str, Any],
              layout: Mapping[str, np.ndarray]) -> None:
        logged = self.log.layout
        if list(layout) != list(logged):
            raise ReplayDivergence(f"layout keys {list(layout)}, the log has {list(logged)}")
        for k, a in layout.items():
            if not np.array_equal(np.asarray(a), logged[k]):
                raise ReplayDivergence(f"layout[{k!r}] differs from the logged layout")

    def _compare(self, kind: str, table: Dict[str, np.ndarray], i: int, n: int, key: str,
                 value: int, metrics: Mapping[str, float]) -> None:
        if i >= n:
            raise ReplayDivergence(f"the run reported {kind} metrics for {key} {value}, the "
                                   f"log has only {n} rows", step=value if key == "step"
                                   else None)
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
        self._compare("step", self.step_metrics, self.si, self.n_step, "step", int(step),
                      metrics)
        self.si += 1

    def on_epoch_metrics(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._compare("epoch", self.epoch_metrics, self.ei, self.n_epoch, "epoch", int(epoch),
                      metrics)
        self.ei += 1

    def on_snapshot(self, step: int, g_us: np.ndarray, chi: Mapping[str, np.ndarray]) -> None:
        i = self.ki
        if i >= self.n_snap:
            raise ReplayDivergence(f"the run took snapshot {i}, the log has {self.n_snap}",
                                   step=int(step))
        ls = int(self.snaps["step"][i])
        if ls != int(step):
            raise ReplayDivergence(f"snapshot {i} taken at step {int(step)}, the log's at "
                                   f"step {ls}", step=int(step))
        g = np.asarray(g_us, dtype=np.float32).ravel()
        lg = self.log.snapshot_g(i)
        if g.size != lg.size or not np.array_equal(g, lg, equal_nan=True):
            j = first_difference(g.view(np.uint32), lg.view(np.uint32))
            dev = int(self.log.addresses[j]) if j < self.log.addresses.size else None
            raise ReplayDivergence(f"snapshot {i}: conductance {_atf(g, j)}, log "
                                   f"{_atf(lg, j)}", step=int(step), device=dev)
        lchi = self.log.snapshot_chi(i)
        for name, arr in lchi.items():
            c = np.asarray(chi.get(name, np.zeros(0)), dtype=np.float32).ravel()
            if c.size != arr.size or not np.array_equal(c, arr.ravel(), equal_nan=True):
                raise ReplayDivergence(f"snapshot {i}: chi[{name!r}] differs from the log",
                                       step=int(step))
        self.ki += 1

    def finish(self, status: str, reason: Optional[str] = None,
               summary: Optional[Dict[str, Any]] = None) -> None:
        self.finished = (status, reason, summary)


@dataclass
class VerifyReport:
    """Outcome of `verify_run`."""

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


def verify_run(path: str, *, progress: bool = False, data: Any = None) -> VerifyReport:
    """Re-run the logged experiment against its own log; ok only if every command, metric,
    snapshot and the summary match exactly."""
    from hil.config import MatvecMode
    from hil.training import run_experiment

    log = RunLog(path)
    try:
        why = arithmetic_mismatch(log.provenance, "verified")
        if why is not None:
            raise RunLogError(why, path=log.path)
        cfg = log.experiment_config()
        if cfg.training.matvec is MatvecMode.CHIP and not log.has_matvec:
            raise RunLogError(f"the run used training.matvec: chip, and its log (schema "
                              f"{log.schema_version}) has no MATVEC results, so it cannot be "
                              "verified (schema 1.1 logs them)", path=log.path)
        backend = ReplayBackend(log)
        rec = VerifyRecorder(log)
        logged_status = log.status
        logged_summary = logged_status.summary or {}
        report = VerifyReport(False, "", logged_seconds=logged_summary.get("train_seconds"))
        t0 = time.perf_counter()
        summary = None
        try:
            summary = run_experiment(cfg, backend, rec, progress=progress, data=data)
        except (ReplayDivergence, HilError) as e:
            report.divergence = e
            report.message = str(e)
        report.seconds = time.perf_counter() - t0
        report.batches_checked = backend.batches_checked
        report.reads_served = backend.reads_served
        report.matvecs_served = backend.matvecs_served
        report.step_metrics_checked = rec.si
        report.epoch_metrics_checked = rec.ei
        report.snapshots_checked = rec.ki
        if report.divergence is not None:
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
        mv = f"{report.matvecs_served:,} MATVECs, " if report.matvecs_served else ""
        report.message = (f"replay matches the log: {report.batches_checked:,} pulse batches, "
                          f"{report.reads_served:,} reads, {mv}{rec.si:,} step and "
                          f"{rec.ei:,} epoch metric rows, {rec.ki} snapshots and the summary")
        return report
    finally:
        log.close()


__all__ = ["SUMMARY_IGNORED", "VerifyRecorder", "VerifyReport", "compare_summaries",
           "verify_run"]
