"""A sweep's output folder and its bookkeeping: which points are finished, failed or still to
run, so that a sweep killed at any moment continues where it stopped.

    OUTPUT/sweep.json                 the manifest: the sweep file and its points
    OUTPUT/sweep.yaml                 a copy of the sweep file as last run
    OUTPUT/points/<id>/config.yaml    the point's experiment config (`pcm-hil train --config`)
    OUTPUT/points/<id>/point.json     the point: its keys, seed, setting
    OUTPUT/points/<id>/status.json    attempts, state, the error of a failed point
    OUTPUT/points/<id>/run.h5         its run log (run.partial.h5 while it runs)
    OUTPUT/points/<id>/summary.json   its run summary: present only when the point finished

A point is finished exactly when its summary.json exists: it is written last, through a
temporary file and an atomic rename, so a half-written summary never exists. Every other file
of the point is rewritten by its next attempt, so nothing a killed attempt left is ever read
as a result. A failed point (its run raised, or its worker kept dying) is recorded in
status.json with its error and not run again unless asked (`--retry-failed`).
"""
from __future__ import annotations

import datetime as _dt
import enum
import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from drivers.errors import ConfigError
from drivers.typed_yaml import dataclass_to_dict
from hil.sweep.points import Point
from hil.sweep.spec import Sweep

MANIFEST = "sweep.json"
SWEEP_COPY = "sweep.yaml"
POINTS = "points"
CONFIG = "config.yaml"
POINT = "point.json"
STATUS = "status.json"
SUMMARY = "summary.json"
RUN_LOG = "run.h5"
PARTIAL_LOG = "run.partial.h5"


class PointState(str, enum.Enum):
    PENDING = "pending"      # never run, or its last attempt was cut off
    RUNNING = "running"      # an attempt is in progress (or was cut off and not yet seen)
    FINISHED = "finished"    # summary.json exists
    FAILED = "failed"        # the run raised, or its worker kept dying


class AttemptOutcome(str, enum.Enum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CUT_OFF = "cut off"      # the process running it died (killed, out of memory, node lost)


@dataclass
class Attempt:
    """One try at running a point, as the worker recorded it."""

    number: int
    started_utc: str
    host: str
    pid: int
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    ended_utc: Optional[str] = None
    seconds: Optional[float] = None        # the whole attempt, in the worker
    run_seconds: Optional[float] = None    # the run itself (run_experiment)
    error: Optional[str] = None


@dataclass
class PointStatus:
    point: str
    state: PointState = PointState.PENDING
    attempts: List[Attempt] = field(default_factory=list)
    error: Optional[str] = None
    traceback: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PointStatus":
        attempts = [Attempt(**{**a, "outcome": AttemptOutcome(a["outcome"])})
                    for a in d.get("attempts", [])]
        return cls(d["point"], PointState(d["state"]), attempts, d.get("error"),
                   d.get("traceback"))

    def to_dict(self) -> Dict[str, Any]:
        return dataclass_to_dict(self)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON so that `path` holds either its old content or all of the new."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Optional[Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# --- one point's folder (used by the worker running it and by the driver) ------------------
def read_status(folder: str, point_id: str) -> PointStatus:
    d = read_json(os.path.join(folder, STATUS))
    return PointStatus(point_id) if d is None else PointStatus.from_dict(d)


def write_status(folder: str, status: PointStatus) -> None:
    write_json_atomic(os.path.join(folder, STATUS), status.to_dict())


def begin_attempt(folder: str, point_id: str) -> PointStatus:
    """Record a new attempt; an earlier one still marked running was cut off. Removes what
    earlier attempts left (run logs, journals, a summary), so this attempt starts clean."""
    status = read_status(folder, point_id)
    for a in status.attempts:
        if a.outcome is AttemptOutcome.RUNNING:
            a.outcome = AttemptOutcome.CUT_OFF
    for name in os.listdir(folder):
        if name.startswith(("run.", SUMMARY)) or ".tmp-" in name:
            os.remove(os.path.join(folder, name))
    status.attempts.append(Attempt(len(status.attempts) + 1, utc_now(), socket.gethostname(),
                                   os.getpid()))
    status.state, status.error, status.traceback = PointState.RUNNING, None, None
    write_status(folder, status)
    return status


def end_attempt(folder: str, status: PointStatus, outcome: AttemptOutcome, seconds: float,
                run_seconds: Optional[float] = None, error: Optional[str] = None,
                traceback: Optional[str] = None) -> None:
    a = status.attempts[-1]
    a.outcome, a.ended_utc, a.seconds, a.run_seconds, a.error = (outcome, utc_now(), seconds,
                                                                 run_seconds, error)
    status.state = PointState.FINISHED if outcome is AttemptOutcome.FINISHED \
        else PointState.FAILED
    status.error, status.traceback = error, traceback
    write_status(folder, status)


# --- the whole sweep (driver) --------------------------------------------------------------
class SweepStore:
    """The output folder of one sweep."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def point_dir(self, point_id: str) -> str:
        return os.path.join(self.root, POINTS, point_id)

    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.root, MANIFEST))

    def manifest(self) -> Optional[Dict[str, Any]]:
        return read_json(os.path.join(self.root, MANIFEST))

    def prepare(self, sweep: Sweep, points: Iterable[Point], *, resume: bool) -> None:
        """Create or update the folder for `points` (nothing of a finished point changes)."""
        import yaml

        if self.exists() and not resume:
            raise ConfigError(f"{self.root} already holds a sweep; continue it with --resume, "
                              "or choose another output folder (--output)", key="--resume")
        if resume and not self.exists():
            raise ConfigError(f"{self.root} holds no sweep to resume", key="--resume")
        points = list(points)
        old = self.manifest() or {}
        os.makedirs(os.path.join(self.root, POINTS), exist_ok=True)
        for p in points:
            d = self.point_dir(p.id)
            os.makedirs(d, exist_ok=True)
            if not os.path.exists(os.path.join(d, CONFIG)):
                write_text_atomic(os.path.join(d, CONFIG),
                                  yaml.safe_dump(p.config, sort_keys=False))
                write_json_atomic(os.path.join(d, POINT), point_record(p))
        shutil.copyfile(sweep.path, os.path.join(self.root, SWEEP_COPY) + ".tmp")
        os.replace(os.path.join(self.root, SWEEP_COPY) + ".tmp",
                   os.path.join(self.root, SWEEP_COPY))
        write_json_atomic(os.path.join(self.root, MANIFEST), {
            "name": sweep.name, "sweep_file": os.path.abspath(sweep.path),
            "search": sweep.search, "created_utc": old.get("created_utc", utc_now()),
            "updated_utc": utc_now(), "points": [point_record(p) for p in points]})

    def summary(self, point_id: str) -> Optional[Dict[str, Any]]:
        return read_json(os.path.join(self.point_dir(point_id), SUMMARY))

    def status(self, point_id: str) -> PointStatus:
        return read_status(self.point_dir(point_id), point_id)

    def state(self, point_id: str) -> PointState:
        """finished ⇔ a summary; failed as recorded; anything else is still to run."""
        if os.path.exists(os.path.join(self.point_dir(point_id), SUMMARY)):
            return PointState.FINISHED
        s = self.status(point_id).state
        return PointState.FAILED if s is PointState.FAILED else PointState.PENDING

    def record_failure(self, point_id: str, error: str, traceback: Optional[str] = None,
                       *, lost: bool = False) -> None:
        """The driver's record of a failed point. A lost one's worker died more often than
        Ray retries: its attempt still marked running was cut off. (A worker sharing this
        folder has recorded its own failure already; this repeats it for one that does not.)
        """
        d = self.point_dir(point_id)
        status = read_status(d, point_id)
        for a in status.attempts:
            if a.outcome is AttemptOutcome.RUNNING and lost:
                a.outcome, a.ended_utc = AttemptOutcome.CUT_OFF, utc_now()
        status.state, status.error = PointState.FAILED, error
        status.traceback = traceback or status.traceback
        write_status(d, status)

    def write_summary(self, point_id: str, summary: Dict[str, Any]) -> None:
        """A worker whose disk is not this one's (no shared folder) still finishes the point
        here: the driver writes the summary the task returned."""
        write_json_atomic(os.path.join(self.point_dir(point_id), SUMMARY), summary)


def point_record(p: Point) -> Dict[str, Any]:
    d = asdict(p)
    d.pop("config")
    return d


__all__ = ["Attempt", "AttemptOutcome", "PointState", "PointStatus", "SweepStore",
           "begin_attempt", "end_attempt", "read_json", "read_status", "write_json_atomic",
           "write_status"]
