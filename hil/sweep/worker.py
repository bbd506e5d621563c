"""What runs one sweep point on a worker: one ordinary run, as `pcm-hil train` makes it.

The point's config goes through the same library calls as a run started alone (config
validation, `open_backend` with the config's sim:// defaults, a RunLogWriter, run_experiment),
so a point gives the same state digest as its config.yaml run by `pcm-hil train`.

An attempt may be re-run (Ray retries a task whose worker died), so it is idempotent: it
first removes whatever an earlier attempt left, writes its run log under a temporary name,
renames it when the run has ended, and writes the summary last (atomically): the point is
finished exactly when the summary exists.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict

from hil.backend_url import SimDefaults, open_backend
from hil.config import ExperimentConfig, config_from_dict
from hil.sweep.store import (PARTIAL_LOG, RUN_LOG, SUMMARY, AttemptOutcome, begin_attempt,
                             end_attempt, write_json_atomic)
from hil.training import run_experiment


@dataclass(frozen=True)
class PointJob:
    """Everything a worker needs to run one point (picklable, no open files)."""

    point: str
    folder: str                   # absolute: the point's folder
    config: Dict[str, Any]        # the point's experiment config, validated by the driver
    run_log: bool = True


def sim_defaults(cfg: ExperimentConfig) -> SimDefaults:
    """What a bare sim:// means for this config (as `pcm-hil train` opens it)."""
    c = cfg.chip
    return SimDefaults(model=c.model, seed=cfg.chip_seed, arrays=c.arrays, rows=c.rows,
                       cols=c.cols)


def run_point(job: PointJob) -> Dict[str, Any]:
    """Run the point; returns its summary. Raises what the run raised (after recording it)."""
    t0 = time.perf_counter()
    os.makedirs(job.folder, exist_ok=True)      # a node that does not share the driver's disk
    status = begin_attempt(job.folder, job.point)
    run_seconds = None
    partial = os.path.join(job.folder, PARTIAL_LOG)
    try:
        cfg = config_from_dict(job.config, source=f"sweep point {job.point}")
        backend = open_backend(cfg.chip.backend, sim_defaults(cfg))
        recorder = None
        if job.run_log:
            from hil.run_log import RunLogWriter
            recorder = RunLogWriter(partial, cfg)
        t1 = time.perf_counter()
        try:
            summary = run_experiment(cfg, backend, recorder)
        finally:
            run_seconds = time.perf_counter() - t1
            if recorder is not None and os.path.exists(partial):
                # The run has ended and closed its log (with its final status, if it got
                # as far as starting): a whole record, under its final name.
                os.replace(partial, os.path.join(job.folder, RUN_LOG))
        write_json_atomic(os.path.join(job.folder, SUMMARY), summary)
    except Exception as e:
        import traceback
        end_attempt(job.folder, status, AttemptOutcome.FAILED, time.perf_counter() - t0,
                    run_seconds, f"{type(e).__name__}: {e}", traceback.format_exc())
        raise
    end_attempt(job.folder, status, AttemptOutcome.FINISHED, time.perf_counter() - t0,
                run_seconds)
    return summary


__all__ = ["PointJob", "run_point", "sim_defaults"]
