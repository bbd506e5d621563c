"""The `replay://RUN.h5` backend: a logged run served back as if it were the chip.

Each read returns the values the log recorded, and each program command is checked against
the logged batch. A training loop re-run on it with the logged config must issue exactly the
logged commands; the first command that differs raises ReplayDivergence naming the step, the
command index and the device. This is how invariant 5 (a replay reproduces the recorded
metrics exactly) is checked, long after the chip is gone (hil.replay.verify), and how a
resumed run fast-forwards to where its log ends (hil.replay.resume).

Everything is read through RunLog's public API: the small per-command tables once, the long
event tables in large sequential windows.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, Optional, Sequence, Tuple

import numpy as np

from drivers.backend import Capability, ChipBackend, ChipInfo, matvec_operands
from drivers.errors import ChipFaultError, NotSupportedError
from drivers.pulse import PulseKind, PulseSpec
from hil.replay.divergence import ReplayDivergence, first_difference
from hil.run_log import BATCH_ACKED, RunLog, RunLogError

REPLAY_SCHEME = "replay://"


class EventWindow:
    """Sequential access to a long event table of a log, read in large blocks."""

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
        """Rows offset..offset+count-1 of the window's columns."""
        end = offset + count
        if offset < self._lo or end > self._hi:
            hi = min(self._n, max(end, offset + self._block))
            self._data = self._log.event_rows(self._table, offset, hi, self._columns)
            self._lo, self._hi = offset, hi
        a = offset - self._lo
        return {c: v[a:a + count] for c, v in self._data.items()}


@dataclass(frozen=True)
class LoggedCommand:
    """The next logged read or program command, as a re-run must send it."""

    kind: str                  # "read" or "program"
    index: int                 # the command's index in the run (reads and programs together)
    step: int
    purpose: str
    batch_id: int = -1         # programs: the batch's row in /pulses/batches
    acknowledged: bool = True  # programs: the chip acknowledged it (logged, or journaled late)


def _at(a: np.ndarray, j: int) -> str:
    return str(int(a[j])) if j < a.size else "(none)"


def _device_mismatch(got: np.ndarray, logged: np.ndarray) -> Optional[Tuple[str, int]]:
    """None when a command names the logged devices, else what differs and the device."""
    if got.size == logged.size and np.array_equal(got, logged):
        return None
    j = first_difference(got, logged)
    size = "" if got.size == logged.size else f"{got.size} devices, the log has {logged.size}; "
    return (f"{size}device list differs at position {j}: run {_at(got, j)}, "
            f"log {_at(logged, j)}", int(got[j]) if j < got.size else int(logged[j]))


class ReplayBackend(ChipBackend):
    """A logged run served back as a chip (see module docstring).

    `acknowledged_late`: pulse batches logged as sent but acknowledged after the log's last
    commit (the write-ahead journal says so; a resume passes them), served as acknowledged.
    """

    #: Abilities a log cannot serve: they are not offered, so a re-run takes the same path
    #: it would on a chip without them.
    UNSERVED = frozenset({Capability.EXACT_READ.value, Capability.STATE_FILE.value,
                          Capability.SIM_CLOCK.value, Capability.HISTORY.value})
    #: MATVEC currents are read from the file in windows of about this many values.
    MATVEC_WINDOW_VALUES = 1 << 20

    def __init__(self, log: RunLog | str, *, acknowledged_late: Iterable[int] = ()) -> None:
        self._own = not isinstance(log, RunLog)
        self.log = RunLog(log) if self._own else log
        self.acknowledged_late: FrozenSet[int] = frozenset(int(b) for b in acknowledged_late)
        try:
            self._setup()
        except BaseException:
            if self._own:
                self.log.close()
            raise
        self._closed = False

    def _setup(self) -> None:
        log = self.log
        self._read_batches = log.read_batches()
        self._pulse_batches = log.pulse_batches()
        self._matvec_batches = log.matvec_batches()
        self._read_events = EventWindow(log, "reads", ("address", "value"))
        self._pulse_events = EventWindow(log, "pulses", ("address", "n_pulses"))
        self._matvec_events = (EventWindow(log, "matvec", ("value",),
                                           block=self.MATVEC_WINDOW_VALUES)
                               if log.has_matvec else None)
        self._n_reads = self._read_batches["seq"].size
        self._n_programs = self._pulse_batches["seq"].size
        self._n_matvecs = self._matvec_batches["step"].size
        self._next_read = 0       # index into the read batches of the next read served
        self._next_program = 0    # index into the pulse batches of the next program checked
        self._next_matvec = 0
        info = log.chip_info()
        if info is None:
            raise RunLogError("the log has no chip info (provenance['chip']); cannot replay",
                              path=log.path)
        self._info = dataclasses.replace(
            info, capabilities=frozenset(info.capabilities) - self.UNSERVED)
        self.logged_capabilities = frozenset(info.capabilities)

    # --- progress ----------------------------------------------------------------------------
    @property
    def commands_served(self) -> int:
        return self._next_read + self._next_program

    @property
    def commands_logged(self) -> int:
        return self._n_reads + self._n_programs

    @property
    def reads_served(self) -> int:
        return self._next_read

    @property
    def batches_checked(self) -> int:
        return self._next_program

    @property
    def matvecs_served(self) -> int:
        return self._next_matvec

    def remaining(self) -> int:
        """Logged commands (MATVECs included) the re-run has not sent yet."""
        return (self.commands_logged - self.commands_served
                + self._n_matvecs - self._next_matvec)

    def next_command(self) -> Optional[LoggedCommand]:
        """The logged read or program command a re-run must send next (None: the log ends)."""
        rb, pb = self._read_batches, self._pulse_batches
        i, j = self._next_read, self._next_program
        r_seq = int(rb["seq"][i]) if i < self._n_reads else None
        p_seq = int(pb["seq"][j]) if j < self._n_programs else None
        if r_seq is None and p_seq is None:
            return None
        if p_seq is None or (r_seq is not None and r_seq < p_seq):
            return LoggedCommand("read", r_seq, int(rb["step"][i]),
                                 self.log.purpose_name(rb["purpose"][i]))
        bid = int(pb["batch_id"][j])
        return LoggedCommand("program", p_seq, int(pb["step"][j]),
                             self.log.purpose_name(pb["purpose"][j]), bid,
                             int(pb["status"][j]) == BATCH_ACKED
                             or bid in self.acknowledged_late)

    def _last_step(self) -> Optional[int]:
        steps = [int(t["step"][-1]) for t in (self._read_batches, self._pulse_batches)
                 if t["step"].size]
        return max(steps) if steps else None

    def _expect(self, want: str, describe: str) -> LoggedCommand:
        """The next logged command, which must be of kind `want`."""
        nxt = self.next_command()
        if nxt is None:
            raise ReplayDivergence(
                f"the run sent {describe}, but the log ends after {self.commands_logged} "
                f"commands (status {self.log.status.status})", step=self._last_step(),
                command_index=self.commands_logged)
        if nxt.kind != want:
            if nxt.kind == "read":
                logged = (f"READ of {int(self._read_batches['count'][self._next_read])} "
                          f"devices ({nxt.purpose})")
            else:
                j = self._next_program
                logged = (f"PROGRAM_{PulseKind(int(self._pulse_batches['kind'][j])).name} of "
                          f"{int(self._pulse_batches['count'][j])} devices ({nxt.purpose})")
            raise ReplayDivergence(f"the run sent {describe}, the log has {logged} next",
                                   step=nxt.step, command_index=nxt.index)
        return nxt

    # --- contract ------------------------------------------------------------------------------
    def info(self) -> ChipInfo:
        return self._info

    def read(self, addresses: np.ndarray) -> np.ndarray:
        self._check_open("READ")
        a = np.asarray(addresses).ravel()
        cmd = self._expect("read", f"READ of {a.size} devices")
        i = self._next_read
        rb = self._read_batches
        ev = self._read_events.get(int(rb["offset"][i]), int(rb["count"][i]))
        bad = _device_mismatch(a, ev["address"])
        if bad is not None:
            raise ReplayDivergence(f"READ: {bad[0]}", step=cmd.step, command_index=cmd.index,
                                   device=bad[1], command=f"READ {cmd.purpose}")
        self._next_read += 1
        return ev["value"].astype(np.float32, copy=True)

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        sent = "PROGRAM_" + PulseKind(pulse.kind).name
        self._check_open(sent)
        a = np.asarray(addresses).ravel()
        n = np.asarray(n_pulses).ravel()
        cmd = self._expect("program", f"{sent} of {a.size} devices")
        j = self._next_program
        pb = self._pulse_batches
        kind = PulseKind(int(pb["kind"][j]))
        logged = f"PROGRAM_{kind.name}"

        def diverge(msg: str, device: Optional[int] = None) -> ReplayDivergence:
            return ReplayDivergence(msg, step=cmd.step, command_index=cmd.index, device=device,
                                    command=f"{logged} {cmd.purpose}")

        if PulseKind(pulse.kind) is not kind:
            raise diverge(f"the run sent {sent}, the log has {logged}")
        amp, width = float(pb["amplitude_v"][j]), float(pb["width_ns"][j])
        if pulse.amplitude_v != amp or pulse.width_ns != width:
            raise diverge(f"pulse {pulse.amplitude_v} V / {pulse.width_ns} ns, the log has "
                          f"{amp} V / {width} ns")
        cnt = int(pb["count"][j])
        ev = self._pulse_events.get(int(pb["offset"][j]), cnt)
        bad = _device_mismatch(a, ev["address"])
        if bad is not None:
            raise diverge(*bad)
        if n.size != cnt or not np.array_equal(n, ev["n_pulses"]):
            k = first_difference(n, ev["n_pulses"])
            raise diverge(f"{_at(n, k)} pulses on the device, the log has "
                          f"{_at(ev['n_pulses'], k)}", int(a[k]) if k < a.size else None)
        self._next_program += 1
        if not cmd.acknowledged:
            raise ChipFaultError("the logged run never got an acknowledgement for this batch "
                                 f"(step {cmd.step}, command #{cmd.index}); replay stops here",
                                 command=sent)

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The logged currents of the next MATVEC, if the run sent the same one (same block
        shape and corners, same inputs to the bit)."""
        self._check_open("MATVEC")
        if self._matvec_events is None:
            raise NotSupportedError(
                f"a replayed run cannot serve MATVEC: this log has schema "
                f"{self.log.schema_version}, whose analog sums are not logged (1.1 logs them); "
                "replay needs training.matvec: host", command="MATVEC")
        block, xv = matvec_operands(addresses, x)
        i, mb = self._next_matvec, self._matvec_batches
        if i >= self._n_matvecs:
            raise ReplayDivergence(f"the run sent MATVEC #{i}, but the log ends after "
                                   f"{self._n_matvecs} (status {self.log.status.status})",
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
        v = self._matvec_events.get(int(mb["offset"][i]), int(mb["count"][i]))["value"]
        self._next_matvec = i + 1
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


def open_replay(url: str) -> ReplayBackend:
    """`replay://RUN.h5` → ReplayBackend (called by hil.backend_url)."""
    path = url[len(REPLAY_SCHEME):] if url.startswith(REPLAY_SCHEME) else url
    path = path.split("?", 1)[0]
    if not path:
        raise RunLogError(f"{url!r} names no run log; use replay://RUN.h5")
    return ReplayBackend(path)


__all__ = ["EventWindow", "LoggedCommand", "REPLAY_SCHEME", "ReplayBackend", "open_replay"]
