"""`pcm-hil replay --verify --workers N`: a log's segments checked side by side.

A log of schema 1.3 holds the trainer's full state in every snapshot, and where each
snapshot sits in every table (docs/run-log.md). So the run can be split at its snapshots
and each part re-run on its own:

1. **Plan** (here, serially): open the log, read its snapshot table (one row per snapshot)
   and cut the run into segments at snapshots, balanced by steps; nothing else is read.
2. **Segments** (worker processes, or Ray tasks on a cluster): each opens the log itself and
   reads only its own rows - commands, read values, pulses, MATVEC currents, step and epoch
   metrics - from the positions its two snapshots recorded, never by scanning. Segment 0
   starts at step 0 (checking the initial programming too); every other one restores the
   trainer from the state record of the snapshot it starts at. Each re-runs to the
   snapshot it ends at, checks it bit for bit (conductances, χ, the whole state record) and
   stops there; the last one runs to the end and compares the run summary.
3. **Merge** (here): the first failing segment in the order of the log names the divergence
   (step, command, device), as a serial `--verify` would.

Why this proves what a serial re-run proves: segment k checks that, started from the state
logged at its first snapshot, the code produces exactly the logged commands and metrics and
the state logged at its last snapshot - which segment k + 1 starts from. Chained from step
0, that is the whole run. The state record is complete (tests/test_trainer_state.py fails
otherwise), so a restarted segment is the same computation as the uninterrupted one.

What stays serial does not grow with the log's length: the plan reads one ~100-byte row per
snapshot, each worker's set-up (opening the log, seeking, restoring a state) costs the same
wherever its segment lies, and the merge handles one small report per segment
(`scripts/bench_verify` measures all three).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from drivers.errors import HilError
from hil.cluster import (Cluster, ClusterOptions, LocalProcesses, Task, TaskResult,
                         TaskRunner)
from hil.replay.backend import ReplayBackend
from hil.replay.divergence import ReplayDivergence
from hil.replay.verify import (VerifyReport, check_verifiable, describe_checked, verify_run,
                               verify_segment)
from hil.run_log import RunLog

#: Segments per worker the plan aims at: more than one, so that a worker that finishes
#: early takes another part instead of idling while the slowest segment runs.
SEGMENTS_PER_WORKER = 2


@dataclass(frozen=True)
class Segment:
    """A part of the run: from snapshot `start` (None: step 0) to snapshot `stop` (None: the
    end of the log), steps `first_step` to `last_step`."""

    index: int
    start: Optional[int]
    stop: Optional[int]
    first_step: int
    last_step: int

    def describe(self) -> str:
        return f"segment {self.index} (steps {self.first_step} to {self.last_step})"


def plan_segments(steps: Sequence[int], has_state: Sequence[bool],
                  segments: int) -> List[Segment]:
    """At most `segments` segments of about equal steps, cut at snapshots (step `steps[k]`
    of snapshot k) that hold a state record; never at step 0 or at the last snapshot's step,
    where a segment would have no steps to re-run."""
    steps = np.asarray(steps, dtype=np.int64)
    if steps.size == 0:
        return [Segment(0, None, None, 0, 0)]
    total = int(steps[-1])
    cuts = [k for k in range(steps.size) if has_state[k] and 0 < steps[k] < total]
    chosen: List[int] = []
    for j in range(1, max(1, segments)):
        target = j * total / segments
        best = min((k for k in cuts if not chosen or k > chosen[-1]),
                   key=lambda k: abs(int(steps[k]) - target), default=None)
        if best is not None and (not chosen or best > chosen[-1]):
            chosen.append(best)
    # The same snapshot step twice (say at an epoch's end) would make an empty segment.
    chosen = [k for i, k in enumerate(chosen) if i == 0 or steps[k] > steps[chosen[i - 1]]]
    bounds: List[Optional[int]] = [None, *chosen, None]
    out = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        out.append(Segment(i, a, b, 0 if a is None else int(steps[a]),
                           total if b is None else int(steps[b])))
    return out


# --- in a worker ---------------------------------------------------------------------------
_DATA: Dict[Tuple[Any, ...], Any] = {}


def _dataset(cfg: Any) -> Any:
    """The run's data set, loaded once per worker process (MNIST takes seconds to load)."""
    from hil.training import load_dataset
    key = (cfg.data.source, cfg.data.train_examples, cfg.data.test_examples)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_dataset(cfg)
    return _DATA[key]


def verify_segment_task(path: str, segment: Segment) -> VerifyReport:
    """One segment, in a worker: opens the log, re-runs the segment, returns its report
    (its divergence made picklable)."""
    t0 = time.perf_counter()
    with RunLog(path) as log:
        data = _dataset(log.experiment_config())
        t_data = time.perf_counter() - t0
        report = verify_segment(log, segment.start, segment.stop, data=data)
    report.timings["data"] = t_data
    e = report.divergence
    if e is not None and not isinstance(e, ReplayDivergence):
        report.divergence = HilError(f"{type(e).__name__}: {e}")
    return report


# --- the driver ----------------------------------------------------------------------------
def why_serial(log: RunLog, cfg: Any) -> Optional[str]:
    """Why the log cannot be split into segments (None: it can)."""
    from hil.training import MixedPrecisionTrainer
    if not log.has_positions:
        return (f"its schema ({log.schema_version}) keeps no trainer state in its snapshots "
                "(1.3 logs do)")
    if not log.has_state:
        return "its trainer declared no state record"
    end = log.end_position()
    # A trainer over an empty stretch of the log, only to ask it for its state layout.
    own = MixedPrecisionTrainer(cfg, ReplayBackend(log, start=end, stop=end)).state_layout()
    diff = own.difference(log.state_layout)
    if diff is not None:
        return f"its snapshots hold another trainer's state record ({diff})"
    return None


def verify_parallel(path: str, *, workers: int = 1, ray: bool = False,
                    address: Optional[str] = None, segments: Optional[int] = None,
                    progress: bool = False, data: Any = None,
                    runner: Optional[TaskRunner] = None) -> VerifyReport:
    """Check the log's segments side by side on `workers` local processes, on a Ray cluster
    of `workers` CPUs started here (`ray`), or on the Ray cluster at `address` (at most
    `workers` at once, when given above 1); `segments`
    defaults to SEGMENTS_PER_WORKER per worker. `runner`: an open TaskRunner to use instead.
    A log that cannot be split is verified serially (`data` is for that case), with a note
    saying why."""
    t0 = time.perf_counter()
    path = os.path.abspath(path)
    with RunLog(path) as log:
        cfg = log.experiment_config()
        check_verifiable(log, cfg)
        note = why_serial(log, cfg)
        snaps = log.snapshots()
        has_state = [log.snapshot_has_state(k) for k in range(snaps["step"].size)] \
            if note is None else []
    parallel = max(1, workers)
    plan = [] if note is not None else plan_segments(
        snaps["step"], has_state, segments or SEGMENTS_PER_WORKER * parallel)
    if note is None and len(plan) < 2:
        note = (f"its {snaps['step'].size} snapshots leave a single segment "
                "(log.snapshot_every_steps sets how many a run takes)")
    if note is not None:
        report = verify_run(path, progress=progress, data=data)
        report.note = "verified in one re-run: " + note
        return report
    t_plan = time.perf_counter() - t0
    tasks = [Task(seg.describe(), verify_segment_task, (path, seg)) for seg in plan]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), desc="segments", unit="seg", leave=False)

    def tick(_: TaskResult) -> None:
        if bar is not None:
            bar.update(1)

    t1 = time.perf_counter()
    try:
        if runner is not None:
            t2 = time.perf_counter()
            results = runner.run(tasks, tick)
        else:
            own: Any = (Cluster(ClusterOptions(address=address, max_retries=1,
                                               max_parallel=parallel if workers > 1 else None))
                        if address is not None else
                        Cluster(ClusterOptions(cpus=parallel, max_retries=1)) if ray else
                        LocalProcesses(parallel))
            with own:
                t2 = time.perf_counter()
                results = own.run(tasks, tick)
    finally:
        if bar is not None:
            bar.close()
    t3 = time.perf_counter()
    report = merge(plan, results)
    report.workers = parallel
    t4 = time.perf_counter()
    report.seconds = t4 - t0
    report.timings.update(plan=t_plan, workers_start=t2 - t1, segments=t3 - t2, merge=t4 - t3)
    return report


def merge(plan: Sequence[Segment], results: Sequence[TaskResult]) -> VerifyReport:
    """One report from the segments' (in any order): the first failure in the order of the
    log, or the sums of what they checked."""
    by_key = {r.key: r for r in results}

    def failed(seg: Segment) -> bool:
        r = by_key.get(seg.describe())
        return r is None or not r.ok or not r.value.ok

    parts: List[VerifyReport] = []
    for i, seg in enumerate(plan):
        if not failed(seg):
            part: VerifyReport = by_key[seg.describe()].value
            part.timings["task"] = by_key[seg.describe()].seconds
            parts.append(part)
            continue
        later = sum(failed(s) for s in plan[i + 1:])
        also = f"; {later} later segment(s) failed too" if later else ""
        r = by_key.get(seg.describe())
        if r is None or not r.ok:
            msg = f"{seg.describe()} could not be checked: " + \
                ("it never ran" if r is None else str(r.error))
            return VerifyReport(False, msg + also, divergence=HilError(msg),
                                segments=len(plan))
        return replace(r.value, message=f"{r.value.message} ({seg.describe()}{also})",
                       segments=len(plan))
    total = VerifyReport(True, "", segments=len(plan), parts=parts)
    for name in ("batches_checked", "reads_served", "matvecs_served", "step_metrics_checked",
                 "epoch_metrics_checked", "snapshots_checked"):
        setattr(total, name, sum(getattr(p, name) for p in parts))
    total.logged_seconds = parts[-1].logged_seconds
    total.note = next((p.note for p in parts if p.note), None)
    for key in ("setup", "data", "run"):
        total.timings[f"segment_{key}_max"] = max(p.timings.get(key, 0.0) for p in parts)
    total.message = (f"replay matches the log: {describe_checked(total, 'the summary')}, in "
                     f"{len(plan)} segments")
    return total


__all__ = ["SEGMENTS_PER_WORKER", "Segment", "merge", "plan_segments", "verify_parallel",
           "verify_segment_task", "why_serial"]
