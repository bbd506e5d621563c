"""`pcm-hil train --resume RUN.h5`: continue an aborted or killed run from its log.

The trainer's host state (conductance cache, χ, counters, data position) is rebuilt by
re-running the experiment from step 0 against the old log - the same machinery as
`pcm-hil replay --verify`: logged reads are served, program commands are checked against the
logged ones, nothing reaches the chip. Re-running from step 0 rather than restoring a
snapshot costs a fast-forward (about half the live run's time, see docs/run-log.md "Cost")
but needs no second code path for the trainer's state: whatever the trainer keeps (χ, pulse
counts since RESET, refresh counters, the baseline) comes back exactly, by construction.

What happened after the log's last commit is settled per backend:

* A chip behind firmware (FPGA, emulator) kept everything it executed. The write-ahead
  journal holds every command sent after the commit with its wire sequence number, and the
  result of all but the last: those are served from the journal; the last one - which may or
  may not have been executed - is re-sent under its original sequence number, so the
  firmware answers it from memory if it ran and executes it if not. Nothing is applied twice
  or lost, and the chip's read counters and clock stay exactly where an uninterrupted run
  would have them.
* The in-process simulated chip (`sim://`) dies with its process. Its state is saved to a
  chip-state file (`--chip-state FILE`, hil.chip_state) after every commit of the log, so the
  chip and the log are restored to the same command; commands after the commit never
  happened to that chip. Without a state file the run cannot be resumed (ResumeError says
  so).

`plan_resume` checks that a log can be resumed on a chip and says how (a ResumePlan);
`ResumeBackend` is the layer that carries it out between the trainer and the live chip.

The resumed run writes a new log (HDF5 refuses to reopen a killed SWMR writer's file for
writing): it records the fast-forwarded part too, so it is a complete record of the whole
run, and its summary counts the whole run.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import numpy as np

from drivers.abilities import SequencedBackend, StatefulBackend, find_ability
from drivers.backend import ChipBackend
from drivers.chip_history import HistoryPosition
from drivers.errors import ChipFaultError, HilError, NotSupportedError
from drivers.layers import BackendLayer
from drivers.pulse import PulseKind, PulseSpec
from hil.chip_io import wire_seq_of
from hil.chip_state import ChipStateKeeper
from hil.config import MatvecMode
from hil.replay.backend import ReplayBackend
from hil.replay.divergence import ReplayDivergence
from hil.run_log import BATCH_ACKED, NOT_SENT, JournalCommand, RunLog, arithmetic_mismatch
from hil.run_history import check_log_chip, resumed_provenance
from hil.run_state import RunState

log = logging.getLogger("pcm_hil.resume")



class ResumeError(HilError):
    """A run that cannot be resumed, and why."""


@dataclass(frozen=True)
class ResendBatch:
    """A committed pulse batch the old run failed inside (sent, never acknowledged): re-sent
    live under its wire sequence number, so the firmware answers it from memory if it ran."""

    batch_id: int
    wire_seq: int


@dataclass(frozen=True, eq=False)
class ResumePlan:
    """How a resumed run catches up with its log (plan_resume makes it, ResumeBackend
    carries it out).

    committed: commands (reads and programs) the old log committed, served from it.
    journal: commands journaled after the last commit, served from the journal in order; the
        last may be uncertain (no result): re-sent live under its wire sequence number.
    acknowledged_late: committed batches logged as sent whose acknowledgement the journal
        holds.
    resend: the committed batch the old run failed inside, if any.
    chip_state: the in-process chip restored from its state file (sim://), with chip_from
        the command it was saved at: from there on, served commands are executed on it too.
    chip_history: where a chip behind firmware stood when the resume was planned (checked
        against the log; the new log records it).
    """

    log_path: str
    committed: int
    journal: Tuple[JournalCommand, ...] = ()
    acknowledged_late: FrozenSet[int] = frozenset()
    resend: Optional[ResendBatch] = None
    chip_state: Optional[ChipStateKeeper] = None
    chip_from: Optional[int] = None
    chip_history: Optional[HistoryPosition] = None


# --- the backend of a resumed run ----------------------------------------------------------
class ResumeBackend(BackendLayer):
    """The old log, then its journal, then the live chip (the layer below), as one backend.

    Phase 1 serves the committed commands of the old log through a ReplayBackend (checked
    like a replay; with `plan.chip_from` set, commands from that index on are also executed
    on the restored chip, and its reads must equal the logged ones). Phase 2 serves the
    journaled commands; the last, uncertain one is re-sent live under its wire sequence
    number. Phase 3 is the live chip.

    It numbers the commands that pass through it (drivers.abilities.SequencedBackend): the
    new log journals NOT_SENT for a served one, and `use_seq` sets the live chip's number."""

    def __init__(self, plan: ResumePlan, old: RunLog, live: ChipBackend) -> None:
        super().__init__(live)
        self.plan = plan
        self.replay = ReplayBackend(old, acknowledged_late=plan.acknowledged_late)
        self.journal = list(plan.journal)
        self.committed = self.replay.commands_logged
        self.index = 0              # commands passed through so far
        self.resent = 0             # uncertain commands re-sent under their wire seq
        self.served_from_journal = 0

    # --- where we are ----------------------------------------------------------------------
    @property
    def live_now(self) -> bool:
        return self.index >= self.committed + len(self.journal)

    def _executes_restored(self) -> bool:
        return self.plan.chip_from is not None and self.index >= self.plan.chip_from

    def _at_resend(self) -> bool:
        """Whether the next logged command is the batch the old run failed inside."""
        r = self.plan.resend
        nxt = self.replay.next_command() if r is not None else None
        return nxt is not None and nxt.kind == "program" and nxt.batch_id == r.batch_id \
            and nxt.index == self.index

    def next_wire_seq(self) -> int:
        """The wire seq the next command goes under (journaled by the new log's writer)."""
        if self.index < self.committed:
            return self.plan.resend.wire_seq if self._at_resend() else NOT_SENT
        j = self.index - self.committed
        if j < len(self.journal):
            cmd = self.journal[j]
            return NOT_SENT if cmd.done else cmd.wire_seq
        return wire_seq_of(self.inner)

    def use_seq(self, seq: int) -> None:
        """Send the next command that reaches the live chip under `seq`."""
        live = find_ability(self.inner, SequencedBackend)
        if live is None:
            raise NotSupportedError("the live chip has no wire sequence numbers",
                                    command="USE_SEQ")
        live.use_seq(seq)

    # --- contract ------------------------------------------------------------------------------
    def read(self, addresses: np.ndarray) -> np.ndarray:
        a = np.asarray(addresses).ravel()
        if self.index < self.committed:
            values = self.replay.read(a)
            if self._executes_restored():
                got = np.asarray(self.inner.read(a), dtype=np.float32)
                if not np.array_equal(got, values):
                    j = int(np.flatnonzero(got != values)[0])
                    raise ResumeError(
                        f"the chip restored from its state file read device {int(a[j])} as "
                        f"{float(got[j])!r} µS, the log has {float(values[j])!r} at command "
                        f"#{self.index}: the state file is not of this run")
            self.index += 1
            return values
        cmd = self._journal_next("read", a)
        if cmd is None:
            return self.inner.read(a)
        if cmd.done:
            self.served_from_journal += 1
            return np.asarray(cmd.values, dtype=np.float32).copy()
        return self._resend(cmd, lambda: self.inner.read(a))

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        a = np.asarray(addresses).ravel()
        if self.index < self.committed:
            cmd = self._failed_batch(a, n_pulses, pulse)
            if cmd is not None:
                self._resend(cmd, lambda: self.inner.program(a, n_pulses, pulse))
                return
            self.replay.program(a, n_pulses, pulse)
            if self._executes_restored():
                self.inner.program(a, n_pulses, pulse)
            self.index += 1
            return
        cmd = self._journal_next("program", a, n_pulses, pulse)
        if cmd is None:
            self.inner.program(a, n_pulses, pulse)
        elif cmd.done:
            self.served_from_journal += 1
        else:
            self._resend(cmd, lambda: self.inner.program(a, n_pulses, pulse))

    def program_read(self, addresses: np.ndarray, n_pulses: np.ndarray,
                     pulse: PulseSpec) -> np.ndarray:
        """A combined command: served like its two halves, except where it is uncertain (then
        re-sent whole under its wire seq) or live (sent whole)."""
        a = np.asarray(addresses).ravel()
        j = self.index - self.committed

        def send() -> np.ndarray:
            return self.inner.program_read(a, n_pulses, pulse)

        if j >= len(self.journal):
            self.index += 2
            return send()
        if j >= 0 and self.journal[j].kind == "program" and not self.journal[j].done:
            cmd = self._journal_next("program", a, n_pulses, pulse)
            self._read_half(a)
            return self._resend(cmd, send)
        if j < 0:
            cmd = self._failed_batch(a, n_pulses, pulse)
            if cmd is not None:
                self._read_half(a)
                return self._resend(cmd, send)
        self.program(a, n_pulses, pulse)
        return self.read(a)

    def _read_half(self, a: np.ndarray) -> None:
        """Account for the read half of an uncertain combined command (journaled, or cut off
        before its write-ahead)."""
        if self.index - self.committed < len(self.journal):
            self._journal_next("read", a)
        else:
            self.index += 1

    def _failed_batch(self, a: np.ndarray, n_pulses: np.ndarray,
                      pulse: PulseSpec) -> Optional[JournalCommand]:
        """At the committed batch the old run failed inside (never acknowledged): check it
        against the log and return it as the command to re-send (None at any other)."""
        if not self._at_resend():
            return None
        nxt = self.replay.next_command()
        try:
            self.replay.program(a, n_pulses, pulse)   # checked against the log
        except ChipFaultError:
            pass                                      # logged as never acknowledged
        cmd = JournalCommand(kind="program", seq=self.index, step=nxt.step,
                             purpose=nxt.purpose, wire_seq=self.plan.resend.wire_seq,
                             addresses=a, done=False)
        self.index += 1
        return cmd

    def _journal_next(self, kind: str, a: np.ndarray, n: Any = None,
                      pulse: Optional[PulseSpec] = None) -> Optional[JournalCommand]:
        """The journaled command the run is now sending (checked), or None when live."""
        j = self.index - self.committed
        self.index += 1
        if j >= len(self.journal):
            return None
        cmd = self.journal[j]
        where = dict(step=cmd.step, command_index=cmd.seq, command=f"{cmd.kind} {cmd.purpose}")
        if cmd.kind != kind:
            raise ReplayDivergence(f"the run sent a {kind}, the journal has a {cmd.kind}",
                                   **where)
        if not np.array_equal(a, cmd.addresses):
            raise ReplayDivergence("the devices differ from the journaled command", **where)
        if kind == "program":
            b = cmd.batch
            assert b is not None and pulse is not None
            if PulseKind(pulse.kind) is not b.kind or pulse.amplitude_v != b.amplitude_v or \
                    pulse.width_ns != b.width_ns or \
                    not np.array_equal(np.asarray(n).ravel(), b.n_pulses):
                raise ReplayDivergence("the pulses differ from the journaled batch", **where)
        return cmd

    def _resend(self, cmd: JournalCommand, send: Callable[[], Any]) -> Any:
        """Re-send the command a kill left uncertain, under its original wire seq."""
        if cmd.wire_seq >= 0:
            self.use_seq(cmd.wire_seq)
        self.resent += 1
        log.info("re-sending %s of step %d (command #%d) under wire seq %d", cmd.kind,
                 cmd.step, cmd.seq, cmd.wire_seq)
        return send()

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        raise NotSupportedError("a resumed run cannot fast-forward MATVEC: sums sent after "
                                "the last commit are not journaled", command="MATVEC")

    def close(self) -> None:
        """The old log and the live chip belong to the caller."""
        self.replay.close()


def _halves(p: JournalCommand, r: JournalCommand) -> bool:
    """Whether two journal records are the program and read halves of one combined command
    (hil.chip_io.ChipIO.program_read journals both before sending it)."""
    return (p.kind == "program" and r.kind == "read" and not p.done and r.seq == p.seq + 1
            and r.wire_seq == p.wire_seq and r.step == p.step
            and np.array_equal(r.addresses, p.addresses))


# --- planning -----------------------------------------------------------------------------
def resumed_path(old_path: str, old: RunLog) -> str:
    """Default file of the resumed log: RUN-2.h5, RUN-3.h5, ... next to the first log."""
    seg = (old.provenance.get("resume") or {})
    n = int(seg.get("segment", 1)) + 1
    base = seg.get("base")
    if not base:
        stem = re.sub(r"\.h5$", "", os.path.basename(old_path))
        base = stem
    folder = os.path.dirname(old_path)
    while os.path.exists(os.path.join(folder, f"{base}-{n}.h5")):
        n += 1   # a segment killed during its fast-forward keeps its name
    return os.path.join(folder, f"{base}-{n}.h5")


def plan_resume(old: RunLog, live: ChipBackend, chip_state: Optional[str]) -> ResumePlan:
    """Check the log can be resumed on `live` and say how; one ResumeError naming what is
    missing when it cannot, a ChipHistoryError when a chip behind firmware is not where the
    log left it (hil.run_history)."""
    if old.status.status == RunState.COMPLETED:
        raise ResumeError(f"{old.path}: the run completed; there is nothing to resume")
    why = arithmetic_mismatch(old.provenance, "resumed")
    if why is not None:
        raise ResumeError(f"{old.path}: {why}")
    cfg = old.experiment_config()
    if cfg.training.matvec is MatvecMode.CHIP:
        raise ResumeError(f"{old.path}: the run used training.matvec: chip, which cannot be "
                          "resumed: MATVECs are logged at commits but not journaled, so those "
                          "a crash cut off are unknown (the log can still be replayed and "
                          "checked with pcm-hil replay --verify)")
    info = old.chip_info()
    mine = live.info()
    if info is not None and (info.geometry != mine.geometry or info.chip_id != mine.chip_id):
        raise ResumeError(f"{old.path}: the run was on chip {info.chip_id!r} "
                          f"{info.geometry}, the backend is chip {mine.chip_id!r} "
                          f"{mine.geometry}")
    committed = int(old.counts["read_batches"] + old.counts["pulse_batches"])
    chip = find_ability(live, StatefulBackend)
    if chip is not None:
        path = chip_state or (old.provenance.get("chip_state") or None)
        if not path:
            raise ResumeError(
                f"cannot resume {old.path} on {cfg.chip.backend}: the in-process simulated "
                "chip's state died with the process that ran it, and the run kept no chip "
                "state file (start runs on sim:// with --chip-state FILE to make them "
                "resumable)")
        keeper = ChipStateKeeper.restore(chip, path)
        if keeper.commands > committed:
            raise ResumeError(f"chip state file {path} holds {keeper.commands} commands, the "
                              f"log {old.path} only {committed}: the state is of a later run")
        return ResumePlan(old.path, committed, chip_state=keeper, chip_from=keeper.commands)
    tail = old.journal()
    cmds: List[JournalCommand] = list(tail.commands)
    # The last command may be a combined PROGRAM_READ: two records, one wire command.
    last_n = 2 if len(cmds) >= 2 and _halves(cmds[-2], cmds[-1]) else 1
    for c in cmds[:-last_n]:
        if not c.done:
            raise ResumeError(f"{old.path}.journal: command #{c.seq} (step {c.step}) has no "
                              "result but is not the last one; the journal is damaged")
    sequenced = find_ability(live, SequencedBackend) is not None
    if cmds and not cmds[-1].done:
        last = cmds[-last_n]
        if last.wire_seq == NOT_SENT:
            del cmds[-last_n:]   # served from a log during a resume's fast-forward: never sent
        elif last.wire_seq < 0 or not sequenced:
            raise ResumeError(
                f"cannot resume {old.path}: the last command before the kill ({last.kind} of "
                f"step {last.step}, command #{last.seq}) may or may not have reached the chip, "
                "and the backend has no sequence numbers to ask the firmware")
    pb = old.pulse_batches()
    late = frozenset(int(b) for b in tail.acked_rows)
    unacked = [(int(b), int(q)) for b, q, s in zip(pb["batch_id"], pb["seq"], pb["status"])
               if int(s) != BATCH_ACKED and int(b) not in late]
    resend = None
    if unacked:
        # Only the run's last command can be uncertain: a run that failed inside it kept its
        # journal, whose record of it has the wire sequence number to re-send it under.
        bid, seq = unacked[-1]
        last = tail.last
        read_half: Tuple[JournalCommand, ...] = ()
        if last is not None and last.kind == "read" and len(cmds) == 1 and cmds[0] is last and \
                last.seq == seq + 1 and not last.done:
            # The failed command was a combined PROGRAM_READ: its read half is journaled,
            # under the same wire sequence number.
            read_half = (last,)
            last = JournalCommand(kind="program", seq=seq, step=last.step,
                                  purpose=last.purpose, wire_seq=last.wire_seq,
                                  addresses=last.addresses, done=False)
            cmds = []
        if len(unacked) > 1 or cmds or seq != committed - 1 or last is None or \
                last.kind != "program" or last.seq != seq or last.wire_seq < 0 or \
                not sequenced:
            raise ResumeError(f"{old.path}: pulse batch {unacked[0][0]} was sent but never "
                              "acknowledged, and no journal record says under which wire "
                              "sequence number; whether the chip applied it is unknown, so "
                              "the run cannot be continued exactly")
        resend = ResendBatch(bid, last.wire_seq)
        cmds = list(read_half)
    # The chip must be where the log left it, before anything is sent (hil.run_history).
    position = check_log_chip(old, live)[0]
    return ResumePlan(old.path, committed, tuple(cmds), late, resend, chip_history=position)


def reach(log_: RunLog) -> int:
    """Commands whose outcome a log knows: committed ones plus journaled ones (the last,
    uncertain one included when it was really sent)."""
    c = int(log_.counts["read_batches"] + log_.counts["pulse_batches"])
    return c + sum(1 for j in log_.journal().commands
                   if j.done or j.wire_seq != NOT_SENT)


def resume_source(path: str) -> str:
    """The log to resume from: `path`, unless it is a resumed log killed before its
    fast-forward caught up with the log it resumed - then that log (still intact, and
    further along) is the run's record, and it is resumed instead."""
    while True:
        with RunLog(path) as lg:
            prev = (lg.provenance.get("resume") or {}).get("segments") or []
            if not prev:
                return path
            last = prev[-1]
            if reach(lg) >= int(last["commands"]) + int(last["journal_commands"]):
                return path
        older = os.path.join(os.path.dirname(path), str(last["log"]))
        if not os.path.exists(older):
            raise ResumeError(f"{path} was killed while fast-forwarding {last['log']}, which "
                              f"holds more of the run but is not next to it; resume that log")
        log.warning("%s was killed during its fast-forward; resuming %s, which holds more of "
                    "the run", path, older)
        path = older


def resume_provenance(old: RunLog, plan: ResumePlan) -> Dict[str, Any]:
    """What the resumed log's provenance says about the segments before it."""
    prev = dict(old.provenance.get("resume") or {})
    segments = list(prev.get("segments") or [])
    segments.append({"log": os.path.basename(old.path), "status": str(old.status.status),
                     "reason": old.status.reason, "complete_step": old.complete_step,
                     "commands": plan.committed, "journal_commands": len(plan.journal)})
    base = prev.get("base") or re.sub(r"\.h5$", "", os.path.basename(old.path))
    out: Dict[str, Any] = {"resume": {"segment": int(prev.get("segment", 1)) + 1,
                                      "base": base, "segments": segments}}
    if plan.chip_history is not None:
        out.update(resumed_provenance(old, plan.chip_history))
    return out


__all__ = ["NOT_SENT", "ResendBatch", "ResumeBackend", "ResumeError", "ResumePlan",
           "plan_resume", "reach", "resume_provenance", "resume_source", "resumed_path"]
