"""Running a sweep: the points still to run go to the cluster, one task each; the results
table and plots are rebuilt from what the output folder holds.

The driver keeps no state of its own: what is finished is read from the output folder
(hil.sweep.store), so a driver killed at any moment loses nothing but the points in flight,
and `--resume` runs exactly the points without a summary.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from hil.cluster import Cluster, ClusterOptions, Task, TaskResult
from hil.sweep.plots import accuracy_key, plot_pareto, plot_seeds
from hil.sweep.points import Point
from hil.sweep.results import (parquet_available, point_rows, record_rows, setting_rows,
                               settings_text, write_csv, write_parquet)
from hil.sweep.spec import Sweep
from hil.sweep.store import PointState, SweepStore
from hil.sweep.worker import PointJob, run_point

RESULTS = "results"
SETTINGS = "settings"
PARETO_PLOT = "pareto.png"
SEEDS_PLOT = "seeds.png"


@dataclass
class SweepReport:
    points: int
    finished: int = 0
    failed: int = 0
    pending: int = 0
    ran: int = 0                          # points tried by this invocation
    cluster_seconds: Optional[float] = None   # starting or joining the cluster
    cluster_cpus: Optional[float] = None
    run_seconds: Optional[float] = None       # from the first submission to the last result
    interrupted: bool = False
    files: List[str] = field(default_factory=list)
    table: str = ""                       # the settings as a Markdown table


def _count(store: SweepStore, points: Sequence[Point]) -> Dict[PointState, int]:
    counts = {s: 0 for s in PointState}
    for p in points:
        counts[store.state(p.id)] += 1
    return counts


def to_run(store: SweepStore, points: Sequence[Point], retry_failed: bool) -> List[Point]:
    """The points without a summary; failed ones only if asked."""
    out = []
    for p in points:
        s = store.state(p.id)
        if s is PointState.PENDING or (retry_failed and s is PointState.FAILED):
            out.append(p)
    return out


def run_sweep(sweep: Sweep, points: Sequence[Point], options: ClusterOptions, *,
              resume: bool = False, retry_failed: bool = False, progress: bool = True,
              say: Callable[[str], None] = print) -> SweepReport:
    """Run what is missing of the sweep, then write its results."""
    store = SweepStore(sweep.output)
    old = store.manifest() if resume else None
    store.prepare(sweep, points, resume=resume)
    if old:
        gone = set(p["id"] for p in old.get("points", [])) - {p.id for p in points}
        if gone:
            say(f"{len(gone)} point(s) of the earlier sweep file are no longer in it: their "
                "folders stay, the results leave them out")
    counts = _count(store, points)
    todo = to_run(store, points, retry_failed)
    failed_note = ""
    if counts[PointState.FAILED]:
        failed_note = " (retried)" if retry_failed else " (not retried; --retry-failed)"
    say(f"sweep {sweep.name}: {len(points)} points, {counts[PointState.FINISHED]} finished, "
        f"{counts[PointState.FAILED]} failed{failed_note}, {len(todo)} to run; "
        f"output {store.root}")
    report = SweepReport(len(points), ran=len(todo))
    if todo:
        (report.cluster_seconds, report.cluster_cpus, report.run_seconds,
         report.interrupted) = _run_points(sweep, store, todo, options,
                                           counts[PointState.FINISHED], len(points),
                                           progress, say)
    return _finish(sweep, store, points, report)


def _run_points(sweep: Sweep, store: SweepStore, todo: Sequence[Point],
                options: ClusterOptions, finished: int, total: int, progress: bool,
                say: Callable[[str], None]):
    from tqdm import tqdm

    tasks = [Task(p.id, run_point, (PointJob(p.id, store.point_dir(p.id), p.config,
                                             sweep.file.run_logs),)) for p in todo]
    failed = [0]
    warned = [False]
    bar = None

    def on_result(r: TaskResult) -> None:
        if r.ok:
            if store.summary(r.key) is None:
                # The worker wrote to a disk this machine does not see.
                store.write_summary(r.key, r.value)
                if not warned[0]:
                    say("note: the workers' output folder is not this machine's; summaries "
                        "are collected here, run logs stay on the workers' nodes (use a "
                        "shared folder, see docs/sweeps.md)")
                    warned[0] = True
        else:
            failed[0] += 1
            store.record_failure(r.key, r.error or "failed", r.traceback, lost=r.lost)
            msg = f"point {r.key} failed: {r.error}"
            (bar.write if progress else say)(msg)
        if bar is not None:
            bar.set_postfix(failed=failed[0])
            bar.update(1)

    interrupted = False
    t0 = time.perf_counter()
    with Cluster(options) as cluster:
        kind = "embedded" if cluster.embedded else f"at {options.address}"
        say(f"cluster {kind}: {cluster.cpus:g} CPUs, ready in "
            f"{time.perf_counter() - t0:.1f} s; {options.cpus_per_task:g} CPU(s) per point"
            + (f", at most {options.max_parallel} at once" if options.max_parallel else ""))
        started, cpus = cluster.started_seconds, cluster.cpus
        bar = tqdm(total=total, initial=finished, unit="point", desc=sweep.name,
                   disable=not progress, dynamic_ncols=True)
        t1 = time.perf_counter()
        try:
            cluster.run(tasks, on_result)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        ran = time.perf_counter() - t1
    return started, cpus, ran, interrupted


def write_results(sweep: Sweep, store: SweepStore, points: Sequence[Point]):
    """results.csv/.parquet, one table per list of records, settings.csv and the plots, from
    the output folder as it is. Returns (files written, the settings as Markdown)."""
    rows = point_rows(store, points)
    files = []

    def table(name: str, table_rows) -> None:
        if not table_rows:
            return
        path = os.path.join(store.root, f"{name}.csv")
        write_csv(path, table_rows)
        files.append(path)
        if parquet_available():
            path = os.path.join(store.root, f"{name}.parquet")
            write_parquet(path, table_rows)
            files.append(path)

    table(RESULTS, rows)
    for name, records in record_rows(store, points).items():
        table(name, records)
    settings = setting_rows(rows)
    table(SETTINGS, settings)
    acc = accuracy_key(rows, sweep.file.plot.accuracy)
    pulses = sweep.file.plot.pulses
    text = ""
    if acc:
        for name, plot in ((PARETO_PLOT, plot_pareto), (SEEDS_PLOT, plot_seeds)):
            path = os.path.join(store.root, name)
            if plot(rows, acc, pulses, path, title=f"sweep {sweep.name}: {acc} against "
                    f"{pulses}" if plot is plot_pareto else ""):
                files.append(path)
        if settings:
            text = settings_text(settings, acc, pulses)
    return files, text


def _finish(sweep: Sweep, store: SweepStore, points: Sequence[Point],
            report: SweepReport) -> SweepReport:
    counts = _count(store, points)
    report.finished = counts[PointState.FINISHED]
    report.failed = counts[PointState.FAILED]
    report.pending = counts[PointState.PENDING]
    report.files, report.table = write_results(sweep, store, points)
    return report


def report_only(sweep: Sweep, points: Sequence[Point]) -> SweepReport:
    """The results of what the output folder holds, running nothing."""
    from drivers.errors import ConfigError

    store = SweepStore(sweep.output)
    if not store.exists():
        raise ConfigError(f"{store.root} holds no sweep", key="--report")
    return _finish(sweep, store, points, SweepReport(len(points)))


__all__ = ["SweepReport", "report_only", "run_sweep", "to_run", "write_results"]
