"""A chip's command history: where it stands, where a record of commands says it must stand,
and the one check between the two.

Firmware of protocol 1.3 (capability HISTORY) reports which boot it is on - a number drawn
whenever the firmware starts without its sequence-number memory, so a power-cycled chip is
another boot - and how many state-changing commands of each kind it has executed in that boot
(PROTOCOL.md, HISTORY). Whoever continues something on a chip holds a record of what it sent
from a known starting position: a killed run its log (hil.run_history), the driver its own
session across a reconnect (SessionHistory). The chip must be that boot, at exactly that
position, give or take the one command whose outcome the record does not know; anything else
is refused with one ChipHistoryError naming what differs.

Counts are compared as *operations*, which both ends can count: a program operation is a
PROGRAM or a PROGRAM_READ, a read operation a READ or a PROGRAM_READ (a run log holds a
PROGRAM_READ as a program batch and a read, without saying which pairs travelled together),
and everything else that changes the chip (MATVEC, ADVANCE_CLOCK) is an "other" operation.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any, List, Mapping, Optional, Tuple

from drivers.abilities import ChipHistory, find_ability
from drivers.backend import ChipBackend
from drivers.errors import ChipHistoryError
from firmware_interface.messages import HistoryReply
from firmware_interface.protocol import Opcode


class HistoryMismatch(str, enum.Enum):
    """What a refused chip's history differs in (ChipHistoryError.mismatch)."""

    UNREPORTED = "unreported"      # no history to compare: the chip or the record lacks one
    BOOT = "boot"                  # another boot: power-cycled, or restarted without its state
    FURTHER = "further"            # commands the record does not know of
    BEHIND = "behind"              # fewer commands than the record says reached the chip
    LAST_COMMAND = "last_command"  # the counts allow the uncertain command, its seq does not


@dataclass(frozen=True)
class HistoryPosition:
    """Where a chip's history stands: its boot and the state-changing commands executed in it
    (HISTORY_REPLY), with the last one's wire sequence number and opcode name."""

    boot_id: str                # 16 hex digits
    commands: int
    reads: int = 0
    programs: int = 0
    program_reads: int = 0
    matvecs: int = 0
    clock_advances: int = 0
    last_seq: Optional[int] = None
    last_command: Optional[str] = None

    @classmethod
    def from_reply(cls, reply: HistoryReply) -> "HistoryPosition":
        last = None
        if reply.last_opcode:
            try:
                last = Opcode(reply.last_opcode).name
            except ValueError:
                last = f"0x{reply.last_opcode:02X}"
        return cls(f"{reply.boot_id:016x}", reply.commands, reply.reads, reply.programs,
                   reply.program_reads, reply.matvecs, reply.clock_advances,
                   reply.last_seq if reply.last_opcode else None, last)

    @property
    def operations(self) -> Tuple[int, int, int]:
        """(program, read, other) operations: what a record of commands can count."""
        return (self.programs + self.program_reads, self.reads + self.program_reads,
                self.commands - self.reads - self.programs - self.program_reads)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HistoryPosition":
        try:
            return cls(str(d["boot_id"]), int(d["commands"]), int(d.get("reads", 0)),
                       int(d.get("programs", 0)), int(d.get("program_reads", 0)),
                       int(d.get("matvecs", 0)), int(d.get("clock_advances", 0)),
                       None if d.get("last_seq") is None else int(d["last_seq"]),
                       d.get("last_command"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a chip history position: {e}") from None

    def describe(self) -> str:
        last = "none yet" if self.last_seq is None else \
            f"the last {self.last_command} seq {self.last_seq}"
        return f"boot {self.boot_id}, {self.commands:,} commands executed ({last})"


#: (program, read, other) operations of each state-changing opcode.
OPERATIONS = {Opcode.READ: (0, 1, 0), Opcode.PROGRAM: (1, 0, 0), Opcode.PROGRAM_READ: (1, 1, 0),
              Opcode.MATVEC: (0, 0, 1), Opcode.ADVANCE_CLOCK: (0, 0, 1)}


@dataclass(frozen=True)
class UncertainCommand:
    """A command sent without its outcome known: the chip may or may not have executed it.

    A station guard sends a command larger than its batch limit as `parts` commands under
    consecutive sequence numbers from `wire_seq` (drivers.safety.LimitedBackend), each of
    these operations; a kill may leave any first few of them executed."""

    wire_seq: int
    programs: int = 0
    reads: int = 0
    others: int = 0
    parts: int = 1

    @classmethod
    def of(cls, opcode: Opcode, wire_seq: int) -> "UncertainCommand":
        return cls(int(wire_seq), *OPERATIONS[Opcode(opcode)])

    def parts_executed(self, operations: Tuple[int, int, int]) -> Optional[int]:
        """How many of its parts (1..parts) a chip `operations` past the record's known
        commands has executed, by the counts alone (None: no number of them)."""
        one = (self.programs, self.reads, self.others)
        for k in range(1, self.parts + 1):
            if operations == tuple(k * n for n in one):
                return k
        return None

    def last_seq(self, k: int) -> int:
        """The wire sequence number of its k-th part."""
        return (self.wire_seq + k - 1) & _SEQ_MASK

    def describe(self) -> str:
        if self.parts == 1:
            return f"uncertain command seq {self.wire_seq}"
        last = self.last_seq(self.parts)
        return f"uncertain command sent in {self.parts} parts, seq {self.wire_seq}..{last}"


#: Wire sequence numbers are 32-bit and wrap.
_SEQ_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class HistoryExpectation:
    """Where a record of commands says the chip's history stands: `base` (the position before
    the record's first command), plus the operations the record knows reached the chip, plus
    at most one command whose outcome it does not know.

    `source` names the record in messages ("run log r.h5"); `further` says what a history
    further than it means for that record."""

    source: str
    base: HistoryPosition
    programs: int
    reads: int
    others: int = 0
    uncertain: Optional[UncertainCommand] = None
    further: str = "another client has used the chip since"

    def describe(self) -> str:
        u = "" if self.uncertain is None else f", and maybe the {self.uncertain.describe()}"
        return (f"{self.source}: boot {self.base.boot_id}, {self.programs:,} program and "
                f"{self.reads:,} read operations after its start at "
                f"{self.base.commands:,} commands{u}")


def check_history(found: HistoryPosition, expected: HistoryExpectation) -> bool:
    """Refuse (ChipHistoryError) a chip whose history is not where `expected` says; returns
    whether the uncertain command (if any) had been executed."""
    base, src = expected.base, expected.source
    if found.boot_id != base.boot_id:
        raise ChipHistoryError(
            f"the chip is another boot than the one {src} ran on (boot {found.boot_id}, "
            f"{src} has boot {base.boot_id}): it was power-cycled, or its firmware restarted "
            f"without its state, so its devices are not where {src} left them",
            mismatch=HistoryMismatch.BOOT, expected=expected, found=found, command="HISTORY")
    got = tuple(f - b for f, b in zip(found.operations, base.operations))
    want = (expected.programs, expected.reads, expected.others)
    if got == want:
        return False
    u = expected.uncertain
    k = None if u is None else u.parts_executed(tuple(g - w for g, w in zip(got, want)))
    if k is not None:
        if found.last_seq == u.last_seq(k):
            return True
        raise ChipHistoryError(
            f"the chip has executed {'one command' if u.parts == 1 else 'commands'} more than "
            f"{src} knows of, but not {src}'s {u.describe()}: the chip's last is "
            f"{found.last_command} seq {found.last_seq}; {expected.further}",
            mismatch=HistoryMismatch.LAST_COMMAND, expected=expected, found=found,
            command="HISTORY")
    top = want if u is None else tuple(w + u.parts * n for w, n in
                                       zip(want, (u.programs, u.reads, u.others)))
    diff = ", ".join(f"{g - w:+,} {what}" for g, w, what in
                     zip(got, top, ("program", "read", "other")) if g != w) + " operations"
    if sum(got) > sum(top):
        raise ChipHistoryError(
            f"the chip's history is further than {src} knows ({diff}; the chip: "
            f"{found.describe()}; {expected.describe()}): {expected.further}",
            mismatch=HistoryMismatch.FURTHER, expected=expected, found=found,
            command="HISTORY")
    raise ChipHistoryError(
        f"the chip's history is shorter than {src} says ({diff}; the chip: "
        f"{found.describe()}; {expected.describe()}): commands {src} saw acknowledged are "
        "missing from the chip", mismatch=HistoryMismatch.BEHIND, expected=expected,
        found=found, command="HISTORY")


def chip_position(backend: ChipBackend, what: str) -> HistoryPosition:
    """The chip's history, from the layer of `backend` that reports it; a ChipHistoryError
    (UNREPORTED) for a chip that cannot, since `what` cannot then be checked against it."""
    chip = find_ability(backend, ChipHistory)
    if chip is None:
        info = backend.info()
        raise ChipHistoryError(
            f"the chip ({info.chip_id}, firmware {info.firmware_version}, protocol "
            f"{info.protocol_version}) cannot report its boot and command history (firmware "
            f"protocol 1.3, capability history), so whether it is still where {what} left it "
            "cannot be checked; refusing to assume it", mismatch=HistoryMismatch.UNREPORTED,
            command="HISTORY")
    return chip.history()


def check_chip(backend: ChipBackend, expected: HistoryExpectation
               ) -> Tuple[HistoryPosition, bool]:
    """The chip's position, checked against `expected` before anything is sent to it; and
    whether the uncertain command had been executed."""
    found = chip_position(backend, expected.source)
    return found, check_history(found, expected)


class SessionHistory:
    """What one driver session has done to the chip's history: the position seen before its
    first state-changing command, and every such command since - counted once its reply came,
    uncertain while it has none - so that after a reconnect the chip can be checked to be
    exactly where this session left it."""

    def __init__(self) -> None:
        self.base: Optional[HistoryPosition] = None
        self.operations = [0, 0, 0]
        self.uncertain: List[UncertainCommand] = []
        self.sent = False

    def observe(self, position: HistoryPosition) -> None:
        """A position the chip reported; before the first command it is the session's base."""
        if not self.sent:
            self.base = position

    def sending(self, opcode: Opcode, seq: int) -> UncertainCommand:
        self.sent = True
        u = UncertainCommand.of(opcode, seq)
        self.uncertain.append(u)
        return u

    def resending(self, opcode: Opcode, seq: int) -> Optional[UncertainCommand]:
        """A command re-sent under its old number (resume): if the session's start shows it
        was the chip's last, the firmware answers it from memory and it does not count (None);
        otherwise it is executed now, like any other. Re-sent after other commands, whether it
        had run is unknown: the session then expects nothing exact any more."""
        if self.base is not None and not self.sent and self.base.last_seq == seq:
            return None
        if self.sent:
            self.base = None
        return self.sending(opcode, seq)

    def settled(self, command: UncertainCommand, executed: bool) -> None:
        self.uncertain.remove(command)
        if executed:
            for i, n in enumerate((command.programs, command.reads, command.others)):
                self.operations[i] += n

    def expectation(self) -> Optional[HistoryExpectation]:
        """None when there is nothing exact to expect: no base, or more than one command
        whose outcome is unknown (a failed command the caller went on from)."""
        if self.base is None or len(self.uncertain) > 1:
            return None
        return HistoryExpectation(
            "this driver session", self.base, *self.operations,
            uncertain=self.uncertain[0] if self.uncertain else None,
            further="another client used the chip while the link was down")


__all__ = ["HistoryExpectation", "HistoryMismatch", "HistoryPosition", "OPERATIONS",
           "SessionHistory", "UncertainCommand", "check_chip", "check_history",
           "chip_position"]
