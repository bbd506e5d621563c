"""The `replay://RUN.h5` backend and `pcm-hil replay --verify`.

ReplayBackend plays a logged run back as if it were the chip: each read returns the values
the log recorded, and each program command is checked against the logged batch. A training
loop re-run on it with the logged config must issue exactly the logged commands; the first
command that differs raises ReplayDivergence naming the step, the command index and the
device. This is how invariant 5 (a replay reproduces the recorded metrics exactly) is
checked, long after the chip is gone.
"""
from __future__ import annotations

import dataclasses
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from drivers.backend import Capability, ChipBackend, ChipInfo, matvec_operands
from drivers.errors import ChipFaultError, HilError, NotSupportedError
from drivers.pulse import PulseKind, PulseSpec
from hil.recorder import Recorder
from hil.run_log import BATCH_ACKED, RunLog, RunLogError, is_wall_clock

REPLAY_SCHEME = "replay://"


class ReplayDivergence(HilError):
    """A re-run that differs from its log: the first difference, with where it happened."""

    def __init__(self, message: str, *, step: Optional[int] = None,
                 command_index: Optional[int] = None, device: Optional[int] = None,
                 command: Optional[str] = None) -> None:
        self.step = step
        self.command_index = command_index
        self.device = device
        self.command = command
        self.detail = message
        where = []
        if step is not None:
            where.append(f"step {step}")
        if command_index is not None:
            where.append(f"command #{command_index}" + (f" ({command})" if command else ""))
        if device is not None:
            where.append(f"device {device}")
        super().__init__(f"replay diverged at {', '.join(where) or 'the start'}: {message}")


class _Window:
    """Sequential access to a long event table, read from the file in large blocks."""

    def __init__(self, log: RunLog, table: str, columns: Sequence[str],
                 block: int = 1 << 20) -> None:
        self._log = log
        self._table = table
        self._columns = tuple(columns)
        self._n = log.event_count(table)
        self._block = block
        self._lo = 0
        self._hi = 0
        self._data: Dict[str, np.ndarray] = {c: np.zeros(0) for c in columns}

    def get(self, offset: int, count: int) -> Dict[str, np.ndarray]:
        end = offset + count
        if offset < self._lo or end > self._hi:
            hi = min(self._n, max(end, offset + self._block))
            self._data = self._log.event_rows(self._table, offset, hi, self._columns)
            self._lo, self._hi = offset, hi
        a = offset - self._lo
        return {c: v[a:a + count] for c, v in self._data.items()}


def _describe(got: np.ndarray, want: np.ndarray, j: int) -> str:
    size = "" if got.size == want.size else \
        f"{got.size} devices, the log has {want.size}; "
    return (f"{size}device list differs at position {j}: run {_at(got, j)}, "
            f"log {_at(want, j)}")


def _device_mismatch(got: np.ndarray, logged: np.ndarray) -> Optional[Tuple[str, int]]:
    """None when a command names the logged devices, else what differs and the device."""
    if got.size == logged.size and np.array_equal(got, logged):
        return None
    j = _first_difference(got, logged)
    return _describe(got, logged, j), int(got[j]) if j < got.size else int(logged[j])


def _first_difference(got: np.ndarray, want: np.ndarray) -> int:
    n = min(got.size, want.size)
    neq = np.flatnonzero(got[:n] != want[:n])
    return int(neq[0]) if neq.size else n


class ReplayBackend(ChipBackend):
    """A logged run served back as a chip (see module docstring)."""

    #: Abilities a log cannot serve: they are not offered, so a re-run takes the same path
    #: it would on a chip without them.
    UNSERVED = frozenset({Capability.EXACT_READ.value, Capability.STATE_FILE.value,
                          Capability.SIM_CLOCK.value, Capability.HISTORY.value})
    #: MATVEC currents are read from the file in windows of about this many values.
    MATVEC_WINDOW_VALUES = 1 << 20

    def __init__(self, log: RunLog | str) -> None:
        self._own = not isinstance(log, RunLog)
        self.log = RunLog(log) if self._own else log
        try:
            self._setup()
        except BaseException:
            if self._own:
                self.log.close()
            raise
        self._closed = False

    def _setup(self) -> None:
        self._rb = self.log.read_batches()
        self._pb = self.log.pulse_batches()
        self._reads = _Window(self.log, "reads", ("address", "value"))
        self._pulses = _Window(self.log, "pulses", ("address", "n_pulses"))
        self._ri = 0
        self._pi = 0
        self._mb = self.log.matvec_batches()
        self._n_mb = self._mb["step"].size
        self._mi = 0
        self._matvecs = (_Window(self.log, "matvec", ("value",),
                                 block=self.MATVEC_WINDOW_VALUES)
                         if self.log.has_matvec else None)
        self._n_rb = self._rb["seq"].size
        self._n_pb = self._pb["seq"].size
        info = self.log.chip_info()
        if info is None:
            raise RunLogError("the log has no chip info (provenance['chip']); cannot replay",
                              path=self.log.path)
        self._info = dataclasses.replace(
            info, capabilities=frozenset(info.capabilities) - self.UNSERVED)
        self.logged_capabilities = frozenset(info.capabilities)

    # --- progress ----------------------------------------------------------------------------
    @property
    def commands_served(self) -> int:
        return self._ri + self._pi

    @property
    def commands_logged(self) -> int:
        return self._n_rb + self._n_pb

    @property
    def reads_served(self) -> int:
        return self._ri

    @property
    def batches_checked(self) -> int:
        return self._pi

    @property
    def matvecs_served(self) -> int:
        return self._mi

    def remaining(self) -> int:
        """Logged commands (MATVECs included) the re-run has not sent yet."""
        return self.commands_logged - self.commands_served + self._n_mb - self._mi

    def _last_step(self) -> Optional[int]:
        steps = [int(t["step"][-1]) for t in (self._rb, self._pb) if t["step"].size]
        return max(steps) if steps else None

    def _next(self, want: str, describe: str) -> int:
        """Index of the next logged command, which must be of kind `want`."""
        r_seq = int(self._rb["seq"][self._ri]) if self._ri < self._n_rb else None
        p_seq = int(self._pb["seq"][self._pi]) if self._pi < self._n_pb else None
        if r_seq is None and p_seq is None:
            raise ReplayDivergence(
                f"the run sent {describe}, but the log ends after {self.commands_logged} "
                f"commands (status {self.log.status.status})", step=self._last_step(),
                command_index=self.commands_logged)
        nxt = "read" if p_seq is None or (r_seq is not None and r_seq < p_seq) else "program"
        if nxt != want:
            if nxt == "read":
                i = self._ri
                logged = (f"READ of {int(self._rb['count'][i])} devices "
                          f"({self.log.purpose_name(self._rb['purpose'][i])})")
                step, seq = int(self._rb["step"][i]), int(self._rb["seq"][i])
            else:
                i = self._pi
                logged = (f"PROGRAM_{PulseKind(int(self._pb['kind'][i])).name} of "
                          f"{int(self._pb['count'][i])} devices "
                          f"({self.log.purpose_name(self._pb['purpose'][i])})")
                step, seq = int(self._pb["step"][i]), int(self._pb["seq"][i])
            raise ReplayDivergence(f"the run sent {describe}, the log has {logged} next",
                                   step=step, command_index=seq)
        return self._ri if want == "read" else self._pi

    # --- contract ------------------------------------------------------------------------------
    def info(self) -> ChipInfo:
        return self._info

    def read(self, addresses: np.ndarray) -> np.ndarray:
        self._check_open("READ")
        a = np.asarray(addresses).ravel()
        i = self._next("read", f"READ of {a.size} devices")
        rb = self._rb
        step, seq = int(rb["step"][i]), int(rb["seq"][i])
        off, cnt = int(rb["offset"][i]), int(rb["count"][i])
        ev = self._reads.get(off, cnt)
        bad = _device_mismatch(a, ev["address"])
        if bad is not None:
            raise ReplayDivergence(
                f"READ: {bad[0]}", step=step, command_index=seq, device=bad[1],
                command=f"READ {self.log.purpose_name(rb['purpose'][i])}")
        self._ri += 1
        return ev["value"].astype(np.float32, copy=True)

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        cmd = "PROGRAM_" + PulseKind(pulse.kind).name
        self._check_open(cmd)
        a = np.asarray(addresses).ravel()
        n = np.asarray(n_pulses).ravel()
        i = self._next("program", f"{cmd} of {a.size} devices")
        pb = self._pb
        step, seq = int(pb["step"][i]), int(pb["seq"][i])
        purpose = self.log.purpose_name(pb["purpose"][i])
        kind = PulseKind(int(pb["kind"][i]))
        logged_cmd = f"PROGRAM_{kind.name}"

        def diverge(msg: str, device: Optional[int] = None) -> ReplayDivergence:
            return ReplayDivergence(msg, step=step, command_index=seq, device=device,
                                    command=f"{logged_cmd} {purpose}")

        if PulseKind(pulse.kind) is not kind:
            raise diverge(f"the run sent {cmd}, the log has {logged_cmd}")
        amp, width = float(pb["amplitude_v"][i]), float(pb["width_ns"][i])
        if pulse.amplitude_v != amp or pulse.width_ns != width:
            raise diverge(f"pulse {pulse.amplitude_v} V / {pulse.width_ns} ns, the log has "
                          f"{amp} V / {width} ns")
        off, cnt = int(pb["offset"][i]), int(pb["count"][i])
        ev = self._pulses.get(off, cnt)
        bad = _device_mismatch(a, ev["address"])
        if bad is not None:
            raise diverge(*bad)
        if n.size != cnt or not np.array_equal(n, ev["n_pulses"]):
            j = _first_difference(n, ev["n_pulses"])
            raise diverge(f"{_at(n, j)} pulses on the device, the log has "
                          f"{_at(ev['n_pulses'], j)}", int(a[j]) if j < a.size else None)
        self._pi += 1
        if int(pb["status"][i]) != BATCH_ACKED:
            raise ChipFaultError("the logged run never got an acknowledgement for this batch "
                                 f"(step {step}, command #{seq}); replay stops here",
                                 command=cmd)

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The logged currents of the next MATVEC, if the run sent the same one (same block
        shape and corners, same inputs to the bit)."""
        self._check_open("MATVEC")
        if not self.log.has_matvec:
            raise NotSupportedError(
                f"a replayed run cannot serve MATVEC: this log has schema "
                f"{self.log.schema_version}, whose analog sums are not logged (1.1 logs them); "
                "replay needs training.matvec: host", command="MATVEC")
        block, xv = matvec_operands(addresses, x)
        i, mb = self._mi, self._mb
        if i >= self._n_mb:
            raise ReplayDivergence(f"the run sent MATVEC #{i}, but the log ends after "
                                   f"{self._n_mb} (status {self.log.status.status})",
                                   step=self._last_step(), command="MATVEC")
        step = int(mb["step"][i])
        k = 0 if xv.ndim == 1 else xv.shape[1]
        got = (block.shape[0], block.shape[1], k,
               int(block[0, 0]) if block.size else 0, int(block[-1, -1]) if block.size else 0,
               zlib.crc32(np.ascontiguousarray(xv, "<f8").tobytes()))
        want = tuple(int(mb[c][i]) for c in ("rows", "cols", "k", "first_address",
                                             "last_address", "x_crc32"))
        if got != want:
            what = ("rows", "cols", "k", "first address", "last address", "input CRC-32")
            j = next(n for n in range(len(got)) if got[n] != want[n])
            raise ReplayDivergence(f"MATVEC #{i}: {what[j]} {got[j]}, the log has {want[j]}",
                                   step=step, command="MATVEC")
        assert self._matvecs is not None   # has_matvec
        v = self._matvecs.get(int(mb["offset"][i]), int(mb["count"][i]))["value"]
        self._mi = i + 1
        return v.reshape((block.shape[0],) if k == 0 else (block.shape[0], k)).copy()

    def read_exact(self, addresses: np.ndarray) -> np.ndarray:
        raise NotSupportedError("a replayed run has no exact (noise-free) read",
                                command="READ_EXACT")

    def safe_state(self) -> None:
        """Nothing to idle."""

    def close(self) -> None:
        if not self._closed and self._own:
            self.log.close()
        self._closed = True

    def _check_open(self, cmd: str) -> None:
        if self._closed:
            raise NotSupportedError("the replay backend is closed", command=cmd)


def _at(a: np.ndarray, j: int) -> str:
    return str(int(a[j])) if j < a.size else "(none)"


def open_replay(url: str) -> ReplayBackend:
    """`replay://RUN.h5` → ReplayBackend (called by hil.backend_url)."""
    path = url[len(REPLAY_SCHEME):] if url.startswith(REPLAY_SCHEME) else url
    path = path.split("?", 1)[0]
    if not path:
        raise RunLogError(f"{url!r} names no run log; use replay://RUN.h5")
    return ReplayBackend(path)


# --- verification ------------------------------------------------------------------------------
#: Summary keys that legitimately differ between a live run and its replay.
SUMMARY_IGNORED = frozenset({"backend"})


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
            j = _first_difference(g.view(np.uint32), lg.view(np.uint32))
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
        if logged_status.status != "completed":
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


__all__ = ["ReplayBackend", "ReplayDivergence", "VerifyRecorder", "VerifyReport",
           "compare_summaries", "is_wall_clock", "open_replay", "verify_run"]
