"""What runs one sweep point on a worker: one ordinary run, as `pcm-hil train` makes it.

The point's config goes through the same library calls as a run started alone (config
validation, the run stack of hil.run_stack, run_experiment), so a point gives the same state
digest as its config.yaml run by `pcm-hil train`.

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

from hil.config import config_from_dict
from hil.run_stack import RunRequest, open_run_stack
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


def run_point(job: PointJob) -> Dict[str, Any]:
    """Run the point; returns its summary. Raises what the run raised (after recording it)."""
    t0 = time.perf_counter()
    os.makedirs(job.folder, exist_ok=True)      # a node that does not share the driver's disk
    status = begin_attempt(job.folder, job.point)
    run_seconds = None
    partial = os.path.join(job.folder, PARTIAL_LOG)
    try:
        cfg = config_from_dict(job.config, source=f"sweep point {job.point}")
        request = RunRequest(cfg, log_path=partial if job.run_log else None)
        t1 = time.perf_counter()
        try:
            with open_run_stack(request) as stack:
                summary = run_experiment(cfg, stack.backend, stack.recorder,
                                         provenance=stack.provenance)
        finally:
            run_seconds = time.perf_counter() - t1
            if job.run_log and os.path.exists(partial):
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


__all__ = ["PointJob", "run_point"]
