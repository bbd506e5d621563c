"""The write-ahead journal next to a run log (RUN.h5.journal): writer and reader side.

Commits are periodic, but a command that reached the chip must never be unknown: every
command (program batch or read) is appended to the journal with one os.write before it is
sent, with its wire sequence number, and its result (acknowledgement, read values) rides on
the next write, so a command sent after the last commit is never unknown, even after
SIGKILL (resume relies on it). The journal is emptied at every commit and deleted when the
log is closed.

The file is a header followed by records, all little-endian; each record starts with its
type byte, and each record type below carries its byte layout. A record a kill cut short
is ignored by the reader.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Optional, Tuple, Union

import numpy as np

from drivers.pulse import PulseKind
from hil.run_log.records import PulseBatch
from hil.run_log.schema import RunLogError

JOURNAL_SUFFIX = ".journal"
#: Wire sequence number journaled for a command served from an old log during a resume's
#: fast-forward: it never reached a chip, so if a kill leaves it uncertain it is re-run.
NOT_SENT = -2
JOURNAL_MAGIC = b"PHJ2"
JOURNAL_MAGIC_V1 = b"PHJ1"                   # schema 1.0 writers before resume (still read)


# --- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class JournalHeader:
    """Once, at offset 0. Layout `<4sq`, 12 bytes: `magic` 4 bytes (`PHJ2`; `PHJ1` from
    writers before resume), `commit` int64 (the log's commit the records follow)."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<4sq")

    commit: int
    magic: bytes = JOURNAL_MAGIC

    def to_bytes(self) -> bytes:
        return self.LAYOUT.pack(self.magic, self.commit)

    @classmethod
    def decode(cls, data: bytes, path: str = "") -> Optional["JournalHeader"]:
        """None when the file is too short to hold a header (nothing was journaled)."""
        if len(data) < cls.LAYOUT.size:
            return None
        magic, commit = cls.LAYOUT.unpack_from(data, 0)
        if magic not in (JOURNAL_MAGIC, JOURNAL_MAGIC_V1):
            raise RunLogError("not a pcm-hil run-log journal", path=path or None)
        return cls(commit, magic)


@dataclass(frozen=True)
class BatchSent:
    """A program batch, written before it is sent. Layout `<BqqqBBddqq`, 59 bytes, then
    6 bytes per device: `type` uint8 = 1, `batch_id` int64, `seq` int64, `step` int64,
    `kind` uint8 (1 SET, 2 RESET), `purpose` uint8 (code), `amplitude_v` float64,
    `width_ns` float64, `count` int64, `wire_seq` int64; then `address` uint32[count],
    `n_pulses` uint16[count]. In a `PHJ1` journal the record has no `wire_seq`
    (`<BqqqBBddq`, 51 bytes)."""

    TYPE: ClassVar[int] = 1
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BqqqBBddqq")
    LAYOUT_V1: ClassVar[struct.Struct] = struct.Struct("<BqqqBBddq")

    batch_id: int
    seq: int
    step: int
    kind: int
    purpose: int
    amplitude_v: float
    width_ns: float
    wire_seq: int
    addresses: np.ndarray   # uint32
    n_pulses: np.ndarray    # uint16

    def to_bytes(self) -> bytes:
        a, n = _le(self.addresses, "<u4"), _le(self.n_pulses, "<u2")
        return b"".join((self.LAYOUT.pack(self.TYPE, self.batch_id, self.seq, self.step,
                                          self.kind, self.purpose, self.amplitude_v,
                                          self.width_ns, a.size, self.wire_seq),
                         a.tobytes(), n.tobytes()))

    @classmethod
    def decode(cls, data: bytes, pos: int, v1: bool = False) -> Optional[Tuple["BatchSent", int]]:
        head = cls.LAYOUT_V1 if v1 else cls.LAYOUT
        if pos + head.size > len(data):
            return None
        fields = head.unpack_from(data, pos)
        _, bid, seq, step, kind, code, amp, width, k = fields[:9]
        wire = -1 if v1 else fields[9]
        a0 = pos + head.size
        end = a0 + 6 * k
        if end > len(data):
            return None
        return cls(bid, seq, step, kind, code, amp, width, wire,
                   np.frombuffer(data, "<u4", k, a0).copy(),
                   np.frombuffer(data, "<u2", k, a0 + 4 * k).copy()), end


@dataclass(frozen=True)
class BatchAcked:
    """The chip acknowledged a batch. Layout `<Bq`, 9 bytes: `type` uint8 = 2, `batch_id`
    int64. Journaled lazily (on the next write): a missing one only leaves a batch
    uncertain, never wrongly acknowledged."""

    TYPE: ClassVar[int] = 2
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<Bq")

    batch_id: int

    def to_bytes(self) -> bytes:
        return self.LAYOUT.pack(self.TYPE, self.batch_id)

    @classmethod
    def decode(cls, data: bytes, pos: int, v1: bool = False) -> Optional[Tuple["BatchAcked", int]]:
        if pos + cls.LAYOUT.size > len(data):
            return None
        _, bid = cls.LAYOUT.unpack_from(data, pos)
        return cls(bid), pos + cls.LAYOUT.size


@dataclass(frozen=True)
class ReadSent:
    """A read, written before it is sent. Layout `<BqqBqq`, 34 bytes, then 4 bytes per
    device: `type` uint8 = 3, `seq` int64, `step` int64, `purpose` uint8 (code), `wire_seq`
    int64, `count` int64; then `address` uint32[count]."""

    TYPE: ClassVar[int] = 3
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BqqBqq")

    seq: int
    step: int
    purpose: int
    wire_seq: int
    addresses: np.ndarray   # uint32

    def to_bytes(self) -> bytes:
        a = _le(self.addresses, "<u4")
        return self.LAYOUT.pack(self.TYPE, self.seq, self.step, self.purpose, self.wire_seq,
                                a.size) + a.tobytes()

    @classmethod
    def decode(cls, data: bytes, pos: int, v1: bool = False) -> Optional[Tuple["ReadSent", int]]:
        head = cls.LAYOUT
        if pos + head.size > len(data):
            return None
        _, seq, step, code, wire, k = head.unpack_from(data, pos)
        end = pos + head.size + 4 * k
        if end > len(data):
            return None
        return cls(seq, step, code, wire,
                   np.frombuffer(data, "<u4", k, pos + head.size).copy()), end


@dataclass(frozen=True)
class ReadValues:
    """The values a journaled read returned. Layout `<Bqq`, 17 bytes, then 4 bytes per
    device: `type` uint8 = 4, `seq` int64 (the read's), `count` int64; then `value`
    float32[count]. Journaled lazily, like acknowledgements."""

    TYPE: ClassVar[int] = 4
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<Bqq")

    seq: int
    values: np.ndarray      # float32

    def to_bytes(self) -> bytes:
        v = _le(self.values, "<f4")
        return self.LAYOUT.pack(self.TYPE, self.seq, v.size) + v.tobytes()

    @classmethod
    def decode(cls, data: bytes, pos: int, v1: bool = False) -> Optional[Tuple["ReadValues", int]]:
        head = cls.LAYOUT
        if pos + head.size > len(data):
            return None
        _, seq, k = head.unpack_from(data, pos)
        end = pos + head.size + 4 * k
        if end > len(data):
            return None
        return cls(seq, np.frombuffer(data, "<f4", k, pos + head.size).copy()), end


JournalRecord = Union[BatchSent, BatchAcked, ReadSent, ReadValues]
RECORD_TYPES: Dict[int, type] = {c.TYPE: c for c in (BatchSent, BatchAcked, ReadSent,
                                                     ReadValues)}


def _le(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).ravel(), dtype=dtype)


def decode_records(data: bytes, path: str = "") -> Tuple[Optional[JournalHeader],
                                                          List[JournalRecord]]:
    """The header and every whole record of a journal's bytes, in order; decoding stops at
    the first record cut short (or garbage after a torn write)."""
    header = JournalHeader.decode(data, path)
    if header is None:
        return None, []
    v1 = header.magic == JOURNAL_MAGIC_V1
    pos = JournalHeader.LAYOUT.size
    out: List[JournalRecord] = []
    while pos < len(data):
        cls = RECORD_TYPES.get(data[pos])
        got = cls.decode(data, pos, v1) if cls is not None else None
        if got is None:
            break
        rec, pos = got
        out.append(rec)
    return header, out


# --- writer side -----------------------------------------------------------------------------
_HEADER = JournalHeader.LAYOUT
_BATCH = BatchSent.LAYOUT
_ACK = BatchAcked.LAYOUT
_READ = ReadSent.LAYOUT
_VALUES = ReadValues.LAYOUT


class JournalWriter:
    """Appends the records of one run (RunLogWriter drives it from its hooks).

    One os.write per command, before it is sent. A result (an acknowledgement, read values)
    is not written on its own but rides on the next command's write, to keep one system
    call per command; so the last command journaled may lack its result, but no command is
    ever marked done wrongly. The methods take the packed device bytes the log stores too
    (hil.run_log.packing), so both hold the same bytes."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd: Optional[int] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                              0o644)
            os.write(self._fd, _HEADER.pack(JOURNAL_MAGIC, 0))
        except OSError as e:
            raise RunLogError(f"cannot create the write-ahead journal: {e}",
                              path=path) from None
        self._result = b""       # result records not yet written
        self._hold = False       # a combined command: hold the batch for the read's write
        #: Command index of the read journaled last whose values have not come yet.
        self.read_in_flight: Optional[int] = None

    def batch_sent(self, batch_id: int, seq: int, step: int, kind: int, purpose: int,
                   amplitude_v: float, width_ns: float, count: int, wire_seq: int,
                   address_bytes: bytes, n_pulses_bytes: bytes) -> None:
        """A BatchSent record (with the previous command's result)."""
        record = b"".join((self._result, _BATCH.pack(1, batch_id, seq, step, kind, purpose,
                                                     amplitude_v, width_ns, count, wire_seq),
                           address_bytes, n_pulses_bytes))
        if self._hold:      # the read half of a combined command follows: one write
            self._result = record
        else:
            os.write(self._fd, record)
            self._result = b""

    def hold_next_batch(self, hold: bool) -> None:
        """Between True and False, a batch record waits for the next read record: both
        halves of a combined PROGRAM_READ go out in one write (one command on the wire)."""
        self._hold = hold

    def read_sent(self, seq: int, step: int, purpose: int, wire_seq: int, count: int,
                  address_bytes: bytes) -> None:
        """A ReadSent record (with the previous command's result, or a held batch)."""
        os.write(self._fd, b"".join((self._result,
                                     _READ.pack(3, seq, step, purpose, wire_seq, count),
                                     address_bytes)))
        self._result = b""
        self.read_in_flight = seq

    def batch_acked(self, batch_id: int) -> None:
        """A BatchAcked record, for the next write. (A result is always the first one
        pending: the batch's record went out before the chip could acknowledge it.)"""
        self._result = _ACK.pack(2, batch_id)

    def read_values(self, seq: int, count: int, value_bytes: bytes) -> None:
        """A ReadValues record for the next write, if `seq` is the read journaled last (a
        PROGRAM_READ's values follow its acknowledgement); then no read is in flight."""
        if self.read_in_flight == seq:
            self._result += _VALUES.pack(4, seq, count) + value_bytes
        self.read_in_flight = None

    def restart(self, commit: int) -> None:
        """After a commit: everything journaled is in the log, start afresh. The header is
        rewritten in place first, so the file always starts with a valid header (records a
        kill leaves before the truncation are of committed commands, which readers skip)."""
        os.pwrite(self._fd, _HEADER.pack(JOURNAL_MAGIC, commit), 0)
        os.ftruncate(self._fd, _HEADER.size)
        os.lseek(self._fd, _HEADER.size, os.SEEK_SET)
        self._result = b""
        self.read_in_flight = None

    def close(self, keep: bool = False) -> None:
        """Close, and delete the file unless `keep` (its last command's outcome is open)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        try:
            if not keep:
                os.remove(self.path)
        except OSError:
            pass


# --- reader side -----------------------------------------------------------------------------
@dataclass(frozen=True)
class JournalCommand:
    """One command a killed writer sent after its last commit. `done`: its result reached
    the journal (a program's acknowledgement, a read's values); the last command may not
    have it - it may or may not have been executed."""

    kind: str                      # "read" or "program"
    seq: int                       # command index in the run
    step: int
    purpose: str
    wire_seq: int                  # sequence number on the wire, -1 when the backend has none
    addresses: np.ndarray
    done: bool
    values: Optional[np.ndarray] = None      # read values (when done)
    batch: Optional[PulseBatch] = None       # the program batch


@dataclass(frozen=True)
class JournalTail:
    """What the journal adds to a crashed log: batches sent after the last commit (status
    'acked' when their acknowledgement was journaled too), and committed batches logged as
    'sent' whose acknowledgement came after the commit."""

    batches: List[PulseBatch]
    acked_rows: Tuple[int, ...] = ()
    commit: int = -1
    #: Every command journaled after the last commit, in command order (resume replays them).
    commands: Tuple[JournalCommand, ...] = ()
    #: The last command journaled, committed or not (a failed run's uncertain batch is
    #: committed as 'sent'; its wire sequence number is only here).
    last: Optional[JournalCommand] = None


def read_journal(path: str, committed_batches: int = 0,
                 purpose_name: Optional[Callable[[int], str]] = None,
                 committed_commands: int = -1) -> JournalTail:
    """Parse a write-ahead journal; a record cut short by the kill is ignored.

    `committed_commands` (reads + programs in the log): commands below it are skipped in
    `commands`, as their batches below `committed_batches` are in `batches`."""
    if not os.path.exists(path):
        return JournalTail([])
    with open(path, "rb") as fh:
        data = fh.read()
    header, records = decode_records(data, path)
    if header is None:
        return JournalTail([])
    name = purpose_name or (lambda c: f"purpose#{int(c)}")
    # A record seen again (left behind by a kill before a restart) starts that command over.
    sent: Dict[int, BatchSent] = {}
    acked: set = set()
    acked_rows: List[int] = []        # acknowledgements of batches committed as 'sent'
    reads: Dict[int, ReadSent] = {}
    values: Dict[int, np.ndarray] = {}
    for rec in records:
        if isinstance(rec, BatchSent):
            sent[rec.batch_id] = rec
            acked.discard(rec.batch_id)
        elif isinstance(rec, BatchAcked):
            if rec.batch_id in sent:
                acked.add(rec.batch_id)
            elif rec.batch_id >= 0:
                acked_rows.append(rec.batch_id)
        elif isinstance(rec, ReadSent):
            reads[rec.seq] = rec
            values.pop(rec.seq, None)
        elif rec.seq in reads:
            values[rec.seq] = rec.values

    def pulse_batch(b: BatchSent) -> PulseBatch:
        return PulseBatch(batch_id=b.batch_id, seq=b.seq, step=b.step, kind=PulseKind(b.kind),
                          amplitude_v=b.amplitude_v, width_ns=b.width_ns,
                          purpose=name(b.purpose),
                          status="acked" if b.batch_id in acked else "sent",
                          addresses=b.addresses, n_pulses=b.n_pulses, wire_seq=b.wire_seq)

    batches = {bid: pulse_batch(b) for bid, b in sent.items()}
    every = [JournalCommand(kind="program", seq=b.seq, step=b.step, purpose=b.purpose,
                            wire_seq=b.wire_seq, addresses=b.addresses,
                            done=b.status == "acked", batch=b) for b in batches.values()]
    every += [JournalCommand(kind="read", seq=r.seq, step=r.step, purpose=name(r.purpose),
                             wire_seq=r.wire_seq, addresses=r.addresses,
                             done=r.seq in values, values=values.get(r.seq))
              for r in reads.values()]
    last = max(every, key=lambda c: c.seq) if every else None
    cmds = sorted((c for c in every if c.seq >= committed_commands
                   and (c.batch is None or c.batch.batch_id >= committed_batches)),
                  key=lambda c: c.seq)
    return JournalTail([b for bid, b in sorted(batches.items()) if bid >= committed_batches],
                       tuple(acked_rows), header.commit, tuple(cmds), last)


__all__ = ["BatchAcked", "BatchSent", "JOURNAL_MAGIC", "JOURNAL_MAGIC_V1", "JOURNAL_SUFFIX",
           "JournalCommand", "JournalHeader", "JournalRecord", "JournalTail",
           "JournalWriter", "ReadSent", "ReadValues", "decode_records", "read_journal"]
