"""The firmware emulator: the wire protocol served over TCP or a pty, backed by SimulatedChip.

The production FPGA driver runs unchanged against it. Two layers:

* `Firmware` is the protocol engine a real FPGA implements: frames in, reply frames out. It
  validates every request (NACK with a typed code), enforces the chip's hard limits (the
  simulated chip raises SafetyLimitError; that becomes NACK SAFETY_LIMIT), remembers the
  replies of recent sequence numbers so a repeated request is answered from memory and never
  executed twice, serves one client's session at a time (NACK IN_USE to any other), counts
  its boot's history of state-changing commands (HISTORY), and can keep the chip state (and
  that memory, boot and history) in a file across restarts.
* `EmulatorServer` is the link: a TCP listener (each connection a link the firmware tells
  apart) or a pty, a modelled link rate and latency, and fault injection (corrupted bytes,
  dropped frames, random delays, disconnects, BUSY and chip faults) drawn from a seeded RNG,
  with counters written as JSON.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import struct
import threading
import time
import tty
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from drivers.backend import Capability as ContractCapability, capabilities_to_wire
from drivers.errors import (AddressError, ChipError, ConfigError, NotSupportedError,
                            SafetyLimitError)
from drivers.pulse import PulseKind, PulseSpec
from firmware_interface.adc import ADC_BITS, adc_full_scale_us, adc_quantise
from firmware_interface.frame import Decoded, Frame, FrameDecoder, FrameError, crc32
from firmware_interface.messages import (MESSAGE_TYPES, AdvanceClockAck, AdvanceClockRequest,
                                         ClockReply, ClockRequest, Hello, HistoryReply,
                                         HistoryRequest, InfoReply,
                                         MatvecReply,
                                         MatvecRequest, Message, Nack, ProgramAck,
                                         ProgramReadReply, ProgramReadRequest,
                                         ProgramRequest, ReadExactReply, ReadExactRequest,
                                         ReadReply, ReadRequest, SafeStateAck,
                                         SafeStateRequest, StatusReply, StatusRequest)
from firmware_interface.protocol import (PROTOCOL_VERSION, REMEMBERED_OPCODES,
                                         REQUEST_OPCODES, STATE_CHANGING_OPCODES, Capability,
                                         NackCode, Opcode, PayloadError)
from sim_backend.sim_chip import SimulatedChip

log = logging.getLogger(__name__)

#: Commands that change the chip's state (a read advances the clock and the read-noise
#: counters); each is journaled before its reply leaves, and counted in the boot's history.
STATE_CHANGING = STATE_CHANGING_OPCODES

#: The history's counters, in HISTORY_REPLY's order.
HISTORY_KINDS = (Opcode.READ, Opcode.PROGRAM, Opcode.PROGRAM_READ, Opcode.MATVEC,
                 Opcode.ADVANCE_CLOCK)

#: Journal record: magic, seq, opcode, flags (bit 0: replay on load), reserved,
#: CRC-32 of the request payload, chip clock before and after, request and reply lengths;
#: then the request payload (replayed records only), the reply frame, and a CRC-32 of all.
_JOURNAL_REC = struct.Struct("<4sIBBHIddII")
_JOURNAL_MAGIC = b"PCMJ"
_REPLAY = 0x1
#: Journal head (once, at offset 0, written at every compaction): magic, the boot, the
#: history's counters at the snapshot (HISTORY_KINDS), the last state-changing command's seq
#: and opcode; then a CRC-32. Every replay-flagged record after it is one more command.
_JOURNAL_HEAD = struct.Struct("<4sQ5QIB3x")
_HEAD_MAGIC = b"PCMH"


def _random_u64() -> int:
    """A boot identity or a session number: random, nonzero (0 means none on the wire)."""
    while True:
        v = int.from_bytes(os.urandom(8), "little")
        if v:
            return v


@dataclass
class _BootRecord:
    """Which boot a state file's chip is on and how far its history had gone at the
    snapshot."""

    boot_id: int
    counts: Tuple[int, ...]
    last_seq: int
    last_opcode: int


@dataclass
class _Session:
    """The one client the firmware serves: its number, its link, since when."""

    token: int
    link: object
    since: float


@dataclass
class _Remembered:
    opcode: int
    request_crc: int
    reply: bytes
    clock_s: float


@dataclass
class _JournalRecord:
    seq: int
    opcode: int
    replay: bool
    request_crc: int
    clock_before: float
    clock_after: float
    request: bytes
    reply: bytes


def _read_journal(path: str) -> Tuple[Optional[_BootRecord], List[_JournalRecord], int]:
    """The boot record, the intact records of a journal and the byte length they cover (a
    torn tail, from a crash in the middle of an append, is ignored: its reply was never
    sent). A journal of an emulator before boot records has none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, [], 0
    out: List[_JournalRecord] = []
    pos = 0
    boot = None
    n = _JOURNAL_HEAD.size
    if data[:4] == _HEAD_MAGIC and len(data) >= n + 4 and \
            crc32(data[:n]) == struct.unpack_from("<I", data, n)[0]:
        _, boot_id, *counts, last_seq, last_op = _JOURNAL_HEAD.unpack_from(data)
        boot = _BootRecord(boot_id, tuple(counts), last_seq, last_op)
        pos = n + 4
    head = _JOURNAL_REC.size
    while pos + head <= len(data):
        magic, seq, op, flags, _, rcrc, c0, c1, nreq, nrep = _JOURNAL_REC.unpack_from(data, pos)
        end = pos + head + nreq + nrep + 4
        if magic != _JOURNAL_MAGIC or end > len(data):
            break
        if crc32(data[pos:end - 4]) != struct.unpack_from("<I", data, end - 4)[0]:
            break
        body = pos + head
        out.append(_JournalRecord(seq, op, bool(flags & _REPLAY), rcrc, c0, c1,
                                  data[body:body + nreq], data[body + nreq:end - 4]))
        pos = end
    if pos != len(data):
        log.warning("%s: ignoring %d bytes of a torn journal record", path, len(data) - pos)
    return boot, out, pos


class Firmware:
    """The firmware's protocol engine over a simulated chip (transport-free, single-threaded).

    `state_path`: keep the chip there across restarts, so a restarted emulator neither forgets
    a chip nor applies a retried batch twice nor loses one. Two files:

    * `state_path`: a snapshot of the chip (SimulatedChip.save_state, replaced atomically);
    * `state_path + ".journal"`: every state-changing command executed since the snapshot
      (request payload, reply frame, chip clock before and after), appended and fsync'ed
      *before* its reply is sent (write-ahead). Rewriting the 16 MiB snapshot per command
      would cost ~30 ms each; an append costs well under a millisecond.

    On start the snapshot is loaded and the journal replayed through this engine (the chip is
    deterministic, so replay reproduces state and replies bit for bit; a replayed reply that
    differs from the recorded one is an error), which also restores the sequence-number
    memory. A record whose effect the snapshot already holds (its clock_after is not past the
    snapshot's clock) is only remembered, not replayed. Every `compact_records` records (and
    at a clean stop) the snapshot is rewritten and the journal restarted with a boot record
    (the boot identity and the history's counters at the snapshot) and the last
    `persist_depth` remembered replies. A crash at any point leaves either a record intact
    (applied once, its retry answered from memory) or torn (not applied, its reply never sent:
    the retry executes it).

    Boot: `boot_id` is drawn when the firmware starts without a state file (or with one that
    has no boot record) - a power-cycled chip - and kept in the state file otherwise, since
    the sequence-number memory and the history survive such a restart. `history` counts the
    state-changing commands executed in this boot, by kind (HISTORY_KINDS).

    Sessions (protocol 1.3): one client at a time. `handle(item, link)` names the link a
    request came by (the server's TCP connection); a HELLO opens a session on its link when
    none is active, and while one is, every request from another link is answered NACK
    IN_USE, except a HELLO naming the session's number (its own host reconnecting, which
    takes the session over). The server calls `link_closed` when a link goes.
    """

    def __init__(self, chip: SimulatedChip, *, memory_depth: int = 16,
                 max_payload: int = 1 << 24, capabilities: Optional[frozenset] = None,
                 protocol_version: Tuple[int, int] = PROTOCOL_VERSION,
                 firmware_version: str = "emu-1", state_path: Optional[str] = None,
                 persist_depth: int = 4, compact_records: int = 1024,
                 compact_bytes: int = 64 << 20, fsync: bool = True) -> None:
        if memory_depth < 1:
            raise ValueError("memory_depth must be >= 1")
        self.chip = chip
        self.memory_depth = int(memory_depth)
        self.persist_depth = max(1, min(int(persist_depth), self.memory_depth))
        self.max_payload = int(max_payload)
        self.version = tuple(protocol_version)
        #: Sessions (one client at a time) and the boot's identity are protocol 1.3.
        self.sessions = self.version >= (1, 3)
        # The chip's own abilities, plus the firmware's: the combined PROGRAM_READ, and
        # (1.3) its boot and history.
        own = {ContractCapability.PROGRAM_READ.value}
        if self.sessions:
            own.add(ContractCapability.HISTORY.value)
        names = chip.info().capabilities | own if capabilities is None else capabilities
        self.capabilities = capabilities_to_wire(names)
        self._program_read = bool(self.capabilities & Capability.PROGRAM_READ)
        self._pulses: Dict[Tuple[int, int, int], PulseSpec] = {}
        self.firmware_version = firmware_version
        self.state_path = state_path
        self.full_scale_us = adc_full_scale_us(chip.model.g_max_us)
        self.memory: "OrderedDict[int, _Remembered]" = OrderedDict()
        self.last_seq: Optional[int] = None
        self.idle = True
        self.boot_id = _random_u64()
        #: State-changing commands executed in this boot, by kind, and the last one's
        #: (seq, opcode); (0, 0) before the first.
        self.history: Dict[Opcode, int] = {op: 0 for op in HISTORY_KINDS}
        self.last_change: Tuple[int, int] = (0, 0)
        self.session: Optional[_Session] = None
        #: Whether the last handle() refused a client (NACK IN_USE): the server drops it.
        self.refused_client = False
        self.counters: Dict[str, object] = {
            "commands_executed": 0, "repeats_answered": 0, "set_pulses": 0,
            "reset_pulses": 0, "devices_read": 0, "bad_frames": 0, "nacks_sent": 0,
            "by_opcode": {}, "nacks": {}}
        #: Whether the last handle() executed a remembered command afresh (not a repeat).
        self.executed_fresh = False
        self.compact_records = max(1, int(compact_records))
        self.compact_bytes = int(compact_bytes)
        self.fsync = bool(fsync)
        self._journal = None  # append handle of the journal file
        self._journal_records = 0
        self._journal_bytes = 0
        #: Records replayed from the journal at the last load (tests, logs).
        self.replayed = 0
        if state_path:
            if os.path.exists(state_path):
                self.load()
            else:
                self.compact()  # a new chip: its first snapshot, an empty journal

    # --- persistence ----------------------------------------------------------------------
    @property
    def journal_path(self) -> Optional[str]:
        return None if not self.state_path else f"{self.state_path}.journal"

    def save(self) -> None:
        """Snapshot the chip and restart the journal (a clean stop does this)."""
        self.compact()

    def close(self) -> None:
        """Final snapshot and release the journal file."""
        try:
            self.compact()
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def compact(self) -> None:
        """Rewrite the snapshot, then restart the journal with the last remembered replies.

        Snapshot first: a crash between the two leaves the old journal, whose records the new
        snapshot already holds (recognised by their clock on load, so only remembered)."""
        if not self.state_path:
            return
        path = self.journal_path
        assert path is not None
        self.chip.save_state(self.state_path)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            head = _JOURNAL_HEAD.pack(_HEAD_MAGIC, self.boot_id,
                                      *(self.history[op] for op in HISTORY_KINDS),
                                      *self.last_change)
            f.write(head + struct.pack("<I", crc32(head)))
            for seq, e in list(self.memory.items())[-self.persist_depth:]:
                f.write(self._record(seq, e.opcode, False, e.request_crc, e.clock_s, e.clock_s,
                                     b"", e.reply))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._journal = open(path, "ab")
        self._journal_records = 0
        self._journal_bytes = self._journal.tell()

    @staticmethod
    def _record(seq: int, opcode: int, replay: bool, request_crc: int, clock_before: float,
                clock_after: float, request: bytes, reply: bytes) -> bytes:
        rec = _JOURNAL_REC.pack(_JOURNAL_MAGIC, seq, opcode, _REPLAY if replay else 0, 0,
                                request_crc, clock_before, clock_after, len(request),
                                len(reply)) + request + reply
        return rec + struct.pack("<I", crc32(rec))

    def _append(self, seq: int, opcode: int, request_crc: int, clock_before: float,
                request: bytes, reply: bytes) -> None:
        """Journal one executed state-changing command, durably, before its reply is sent."""
        if self._journal is None:
            self.compact()
        assert self._journal is not None
        rec = self._record(seq, opcode, True, request_crc, clock_before, self.chip.clock_s,
                           request, reply)
        self._journal.write(rec)
        self._journal.flush()
        if self.fsync:
            os.fsync(self._journal.fileno())
        self._journal_records += 1
        self._journal_bytes += len(rec)
        if (self._journal_records >= self.compact_records
                or self._journal_bytes >= self.compact_bytes):
            self.compact()

    def load(self) -> None:
        """Restore the snapshot, replay the journal after it, then compact."""
        assert self.state_path is not None and self.journal_path is not None
        self.chip.load_state(self.state_path)
        boot, records, _ = _read_journal(self.journal_path)
        if boot is None:
            log.warning("%s: no boot record (an older emulator's state): this start is a new "
                        "boot, its history starts at 0", self.journal_path)
        else:
            self.boot_id = boot.boot_id
            self.history = dict(zip(HISTORY_KINDS, boot.counts))
            self.last_change = (boot.last_seq, boot.last_opcode)
        saved = (json.loads(json.dumps(self.counters)), dict(self.chip.counters))
        self.memory.clear()
        self.replayed = 0
        try:
            for rec in records:
                if rec.replay and rec.clock_after > self.chip.clock_s:
                    self._replay(rec)
                if rec.replay:   # executed after the boot record's snapshot
                    self._count(rec.seq, rec.opcode)
                self._remember(rec.seq, rec.opcode, rec.request_crc, rec.reply,
                               rec.clock_after)
        finally:  # counters count what this power-up executed, not the replay
            self.counters = saved[0]
            self.chip.counters.clear()
            self.chip.counters.update(saved[1])
        self.last_seq = next(reversed(self.memory)) if self.memory else None
        if self.replayed:
            log.info("%s: replayed %d journaled commands", self.state_path, self.replayed)
        self.compact()

    def _replay(self, rec: _JournalRecord) -> None:
        src = self.journal_path
        if rec.clock_before != self.chip.clock_s:
            raise ConfigError(f"journal record seq={rec.seq} starts at chip clock "
                              f"{rec.clock_before!r} s, the chip state is at "
                              f"{self.chip.clock_s!r} s (journal of another state?)",
                              source=src)
        if crc32(rec.request) != rec.request_crc:
            raise ConfigError(f"journal record seq={rec.seq}: request CRC mismatch",
                              source=src)
        try:
            request = MESSAGE_TYPES[Opcode(rec.opcode)].decode(rec.request)
            reply = self._execute(request).frame(rec.seq, version=self.version)
        except (ValueError, KeyError, ChipError) as e:
            raise ConfigError(f"journal record seq={rec.seq} cannot be replayed: {e}",
                              source=src) from None
        if reply != rec.reply or self.chip.clock_s != rec.clock_after:
            raise ConfigError(f"replaying journal record seq={rec.seq} "
                              f"({Opcode(rec.opcode).name}) gave a different result than "
                              "recorded: chip model or seed changed?", source=src)
        self.replayed += 1

    def _count(self, seq: int, opcode: int) -> None:
        """One more state-changing command in this boot's history."""
        op = Opcode(opcode)
        self.history[op] = self.history.get(op, 0) + 1
        self.last_change = (seq, int(op))

    # --- sessions -----------------------------------------------------------------------------
    def link_closed(self, link: object) -> None:
        """The link `link` is gone (closed, reset): its session, if it had the one, ends."""
        if self.session is not None and self.session.link == link:
            log.info("session of %s ended", link)
            self.session = None

    def _admit(self, frame: Frame, link: object) -> Optional[bytes]:
        """None when the request from `link` may be served; else the NACK IN_USE frame."""
        s = self.session
        if not self.sessions or (s is not None and s.link == link):
            return None
        hello = None
        if frame.opcode == Opcode.HELLO:
            try:
                hello = Hello.decode(frame.payload)
            except PayloadError:
                return None   # answered BAD_LENGTH / BAD_PAYLOAD as usual
        if s is None:
            if hello is not None:
                self.session = _Session(hello.session or _random_u64(), link, time.time())
            return None       # no session: served (a HELLO opens one)
        if hello is not None and hello.session == s.token:
            log.info("session taken over by its own host on %s (was %s)", link, s.link)
            s.link = link
            return None
        self.refused_client = True
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.since))
        return self.nack(frame.seq, NackCode.IN_USE, frame.opcode,
                         f"the chip is in use by another client since {since} (from "
                         f"{s.link}); it serves one client at a time")

    def _remember(self, seq: int, opcode: int, request_crc: int, reply: bytes,
                  clock_s: float) -> None:
        self.memory.pop(seq, None)
        self.memory[seq] = _Remembered(opcode, request_crc, reply, clock_s)
        while len(self.memory) > self.memory_depth:
            self.memory.popitem(last=False)

    # --- the engine -------------------------------------------------------------------------
    def nack(self, seq: int, code: NackCode, request_opcode: int, message: str,
             devices: Optional[np.ndarray] = None) -> bytes:
        """A NACK frame (counted)."""
        self.counters["nacks_sent"] += 1  # type: ignore[operator]
        nacks = self.counters["nacks"]
        nacks[code.name] = nacks.get(code.name, 0) + 1  # type: ignore[union-attr]
        msg = Nack(code, request_opcode & 0xFF, message,
                   np.zeros(0) if devices is None else devices)
        return msg.frame(seq, version=self.version)  # type: ignore[arg-type]

    def handle(self, item: Decoded, link: object = None) -> Optional[bytes]:
        """The reply frame to one decoded item that came by `link` (None: nothing to
        answer)."""
        self.executed_fresh = False
        self.refused_client = False
        if isinstance(item, FrameError):
            self.counters["bad_frames"] += 1  # type: ignore[operator]
            what = ("frame CRC-32 mismatch" if item.code is NackCode.BAD_CRC else
                    f"payload of {item.length} bytes above max_payload {self.max_payload}")
            return self.nack(item.seq, item.code, item.opcode, what)
        frame = item
        if frame.version[0] != self.version[0]:
            return self.nack(frame.seq, NackCode.VERSION_MISMATCH, frame.opcode,
                             f"firmware speaks protocol {self.version[0]}.{self.version[1]}, "
                             f"request is {frame.version[0]}.{frame.version[1]}")
        if frame.opcode not in REQUEST_OPCODES:
            return self.nack(frame.seq, NackCode.UNKNOWN_OPCODE, frame.opcode,
                             f"unknown request opcode 0x{frame.opcode:02X}")
        refusal = self._admit(frame, link)
        if refusal is not None:
            return refusal
        opcode = Opcode(frame.opcode)
        remembered = opcode in REMEMBERED_OPCODES
        request_crc = crc32(frame.payload) if remembered else 0
        if remembered:
            hit = self.memory.get(frame.seq)
            if (hit is not None and hit.opcode == frame.opcode
                    and hit.request_crc == request_crc):
                self.counters["repeats_answered"] += 1  # type: ignore[operator]
                return hit.reply
        clock_before = self.chip.clock_s
        try:
            request = MESSAGE_TYPES[opcode].decode(frame.payload)
            reply = self._execute(request)
        except PayloadError as e:
            return self.nack(frame.seq, e.code, frame.opcode, e.message, e.devices)
        except SafetyLimitError as e:
            return self.nack(frame.seq, NackCode.SAFETY_LIMIT, frame.opcode, e.message,
                             e.devices)
        except AddressError as e:
            code = (NackCode.DUPLICATE_ADDRESS if "repeated" in e.message
                    else NackCode.ADDRESS_OUT_OF_RANGE)
            return self.nack(frame.seq, code, frame.opcode, e.message, e.devices)
        except NotSupportedError as e:
            return self.nack(frame.seq, NackCode.UNSUPPORTED, frame.opcode, e.message)
        except ChipError as e:
            return self.nack(frame.seq, NackCode.CHIP_FAULT, frame.opcode, e.message,
                             e.devices)
        except ValueError as e:  # e.g. a PulseSpec with a zero amplitude
            return self.nack(frame.seq, NackCode.BAD_PAYLOAD, frame.opcode, str(e))
        except Exception as e:  # a bug must not kill the emulator: report it as a fault
            log.exception("%s seq=%d failed", opcode.name, frame.seq)
            return self.nack(frame.seq, NackCode.CHIP_FAULT, frame.opcode,
                             f"internal error: {e!r}")
        self.counters["commands_executed"] += 1  # type: ignore[operator]
        by_op = self.counters["by_opcode"]
        by_op[opcode.name] = by_op.get(opcode.name, 0) + 1  # type: ignore[union-attr]
        data = reply.frame(frame.seq, version=self.version)  # type: ignore[arg-type]
        if remembered:
            self.executed_fresh = True
            self.last_seq = frame.seq
            self._remember(frame.seq, frame.opcode, request_crc, data, self.chip.clock_s)
            if opcode in STATE_CHANGING:
                self._count(frame.seq, opcode)
            if opcode in STATE_CHANGING and self.state_path:
                try:
                    self._append(frame.seq, frame.opcode, request_crc, clock_before,
                                 frame.payload, data)
                except OSError as e:  # the command ran; say so, and keep serving
                    log.error("cannot journal to %s: %s", self.journal_path, e)
        return data

    def _execute(self, req: Message) -> Message:
        chip = self.chip
        if isinstance(req, Hello):
            if req.session and not self.sessions:
                raise PayloadError(NackCode.BAD_LENGTH, "HELLO payload must be 0 bytes, got 8")
            return self.info_reply()
        if isinstance(req, StatusRequest):
            return self.status_reply()
        if isinstance(req, HistoryRequest):
            if not self.capabilities & Capability.HISTORY:
                raise NotSupportedError("this firmware reports no history", command="HISTORY")
            return self.history_reply()
        if isinstance(req, ReadExactRequest):
            if not self.capabilities & Capability.EXACT_READ:
                raise NotSupportedError("this chip has no exact read", command="READ_EXACT")
            return ReadExactReply(chip.read_exact(req.addresses))
        if isinstance(req, ReadRequest):
            values = chip.read(req.addresses)
            self.counters["devices_read"] += int(req.addresses.size)  # type: ignore[operator]
            return ReadReply(adc_quantise(values, self.full_scale_us))
        if isinstance(req, ProgramReadRequest):
            if not self._program_read:
                raise NotSupportedError("this firmware has no PROGRAM_READ",
                                        command="PROGRAM_READ")
            values = chip.program_read(req.addresses, req.n_pulses, self._pulse(req))
            n = int(req.addresses.size)
            self.counters["devices_read"] += n  # type: ignore[operator]
            return ProgramReadReply(n, self._count_pulses(req),
                                    adc_quantise(values, self.full_scale_us))
        if isinstance(req, ProgramRequest):
            chip.program(req.addresses, req.n_pulses, self._pulse(req))
            return ProgramAck(int(req.addresses.size), self._count_pulses(req))
        if isinstance(req, MatvecRequest):
            if not self.capabilities & Capability.MATVEC:
                raise NotSupportedError("this chip has no on-chip matvec", command="MATVEC")
            out = chip.matvec(req.block, req.x)
            self.counters["devices_read"] += int(req.block.size)  # type: ignore[operator]
            return MatvecReply(out)
        if isinstance(req, (AdvanceClockRequest, ClockRequest)):
            if not self.capabilities & Capability.SIM_CLOCK:
                raise NotSupportedError("this chip has no simulated clock",
                                        command=req.OPCODE.name)
            if isinstance(req, AdvanceClockRequest):
                chip.advance_clock(req.seconds)
                return AdvanceClockAck(chip.clock_s)
            return ClockReply(chip.clock_s)
        if isinstance(req, SafeStateRequest):
            chip.safe_state()
            self.idle = True
            return SafeStateAck()
        raise PayloadError(NackCode.UNKNOWN_OPCODE, f"no handler for {req.OPCODE.name}")

    def _pulse(self, req: ProgramRequest) -> PulseSpec:
        """The pulse of a program request; a run uses two or three shapes: each built once."""
        shape = (int(req.kind), req.amplitude_uv, req.width_ps)
        pulse = self._pulses.get(shape)
        if pulse is None:
            pulse = PulseSpec(PulseKind(shape[0]), req.amplitude_v, req.width_ns)
            self._pulses[shape] = pulse
        return pulse

    def _count_pulses(self, req: ProgramRequest) -> int:
        """Book an executed program request's pulses; returns their number (for its ACK)."""
        total = int(req.n_pulses.sum(dtype=np.int64))
        key = "set_pulses" if int(req.kind) == PulseKind.SET else "reset_pulses"
        self.counters[key] += total  # type: ignore[operator]
        self.idle = False
        return total

    def info_reply(self) -> InfoReply:
        info = self.chip.info()
        g = info.geometry
        return InfoReply(self.version, g.arrays, g.rows, g.cols,  # type: ignore[arg-type]
                         info.g_min_us, info.g_max_us, self.full_scale_us, ADC_BITS,
                         self.memory_depth, int(self.capabilities), self.max_payload,
                         info.chip_id, self.firmware_version,
                         tuple((k, float(v)) for k, v in info.hard_limits.items()),
                         *((self.boot_id if self.capabilities & Capability.HISTORY else 0,
                            self.session.token if self.session else 0)
                           if self.sessions else ()))

    def history_reply(self) -> HistoryReply:
        h = self.history
        return HistoryReply(self.boot_id, *self.last_change, sum(h.values()),
                            *(h[op] for op in HISTORY_KINDS))

    def status_reply(self) -> StatusReply:
        c = self.counters
        return StatusReply(self.last_seq or 0, self.last_seq is not None, self.idle,
                           int(c["commands_executed"]), int(c["repeats_answered"]),
                           int(c["set_pulses"]), int(c["reset_pulses"]),
                           int(c["devices_read"]), int(c["bad_frames"]),
                           int(c["nacks_sent"]))


# --- the link -------------------------------------------------------------------------------
FAULT_KINDS = ("corrupt_request", "corrupt_reply", "drop_request", "drop_reply", "delay",
               "disconnect", "busy", "chip_fault", "crash")


@dataclass
class FaultConfig:
    """Link faults, drawn per request frame from a seeded RNG (so a run is repeatable).

    corrupt / drop: probability per request that one byte is flipped / the frame is lost,
    on the way in or (equally likely) on the way back. delay_ms: every reply waits a uniform
    0..delay_ms. disconnect_every: the reply of every N-th freshly executed command is lost
    with the connection (TCP: closed; pty: an outage that discards input for outage_s).
    script: {request number (1-based, counting every intact request frame, HELLO included):
    fault kind}, for tests that need one exact fault; a scripted "delay" waits outage_s.
    A scripted "crash" executes the request (journaling it with a state file), then kills the
    emulator's own process with SIGKILL before the reply leaves: a hard crash at the worst
    moment, for restart tests. It is honoured only by a server running in its process's main
    thread (`pcm-hil emulate`), never by one inside a test process's thread.
    """

    corrupt: float = 0.0
    drop: float = 0.0
    delay_ms: float = 0.0
    disconnect_every: int = 0
    seed: int = 0
    outage_s: float = 0.2
    script: Dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("corrupt", "drop"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        if self.delay_ms < 0 or self.disconnect_every < 0:
            raise ValueError("delay_ms and disconnect_every must be >= 0")
        for k, kind in self.script.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r} for request {k}")


@dataclass
class LinkModel:
    """Modelled link: 10 bits per byte at `baud` (0 = unlimited) plus a fixed latency."""

    baud: int = 0
    latency_ms: float = 0.0

    def delay_s(self, nbytes: int) -> float:
        t = self.latency_ms / 1000.0
        if self.baud > 0:
            t += nbytes * 10.0 / self.baud
        return t


@dataclass
class _Link:
    """One way in: a TCP connection (named by its peer address) or the pty."""

    name: str
    decoder: FrameDecoder
    sock: Optional[socket.socket] = None


#: Most TCP connections held at once (the session's and those not yet refused): a client
#: that opens more pushes out the oldest one without the session.
MAX_LINKS = 8


def _add_counters(total: Dict[str, int], more: Dict[str, int]) -> None:
    """Add one decoder's counters to a total (high water: the largest)."""
    for k, v in more.items():
        total[k] = max(total.get(k, 0), v) if k == "high_water" else total.get(k, 0) + v


def _keepalive(sock: socket.socket) -> None:
    """Probe an idle connection so that one whose host died without closing it (power lost,
    cable pulled) ends, with its session, within about 10 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 4), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            except OSError:
                pass


class EmulatorServer:
    """Serves one Firmware over TCP or over a pty (os.openpty; connect to `url`).

    Over TCP each connection is a link of its own: the firmware serves the session of one of
    them (protocol 1.3) and refuses the others NACK IN_USE, after which the server closes
    them; a session ends when its connection closes or fails. A firmware before 1.3 has no
    sessions: a new connection replaces the old one, as reopening a serial port would. A pty
    is one link: the firmware cannot tell hosts apart on it (the driver locks the port)."""

    def __init__(self, firmware: Firmware, *, listen: Optional[Tuple[str, int]] = None,
                 pty: bool = False, faults: Optional[FaultConfig] = None,
                 link: Optional[LinkModel] = None, stats_path: Optional[str] = None,
                 busy_poll_s: float = 0.0) -> None:
        if (listen is None) == (not pty):
            raise ValueError("give exactly one of listen=(host, port) or pty=True")
        self.firmware = firmware
        self.faults = faults or FaultConfig()
        self.link = link or LinkModel()
        self.stats_path = stats_path
        self._rng = np.random.default_rng(self.faults.seed)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._links: Dict[socket.socket, _Link] = {}   # TCP connections, oldest first
        self._pty_link = _Link("pty", FrameDecoder(firmware.max_payload))
        self._decoded: Dict[str, int] = {}   # decoder counters of the links gone
        self._listener: Optional[socket.socket] = None
        self._master: Optional[int] = None
        self._slave: Optional[int] = None
        self._outage_until = 0.0
        #: After a request, poll without sleeping for this long: a sleeping process wakes
        #: slowly (its core idles, its caches go cold), and an FPGA never sleeps.
        self.busy_poll_s = max(0.0, float(busy_poll_s))
        self._hot_until = 0.0
        self._requests = 0
        self._fresh = 0
        self._closed = False
        self.counters: Dict[str, object] = {
            "faults": {k: 0 for k in FAULT_KINDS}, "requests": 0, "connections": 0,
            "bytes_rx": 0, "bytes_tx": 0}
        #: Called with (request Frame, reply bytes or None) after each request (tests).
        self.on_request: Optional[Callable[[Frame, Optional[bytes]], None]] = None
        if pty:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self.url = os.ttyname(self._slave)
        else:
            assert listen is not None
            host, port = listen
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                              socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(4)
            self._listener = s
            bound = s.getsockname()
            self.address = (bound[0], bound[1])
            h = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            self.url = f"socket://{h}:{bound[1]}"

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "EmulatorServer":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="pcm-hil-emulator",
                                        daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask serve_forever to return (safe from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop serving, close the link, write stats and state."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for link in list(self._links.values()):
            self._drop_link(link)
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        self._listener = None
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        try:
            self.firmware.close()
        except OSError as e:
            log.error("cannot save the chip state to %s: %s", self.firmware.state_path, e)
        finally:
            self.write_stats()

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict:
        """Every counter: link faults, firmware commands and pulses, decoder errors."""
        fw = self.firmware
        out = json.loads(json.dumps(self.counters))
        out["firmware"] = json.loads(json.dumps(fw.counters))
        out["chip"] = dict(fw.chip.counters)
        out["decoder"] = self._decoder_counters()
        out["pulses"] = {"set": fw.counters["set_pulses"], "reset": fw.counters["reset_pulses"]}
        out["commands_executed"] = fw.counters["commands_executed"]
        out["repeats_answered"] = fw.counters["repeats_answered"]
        return out

    def write_stats(self) -> None:
        if not self.stats_path:
            return
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.stats(), f, indent=2, sort_keys=True)
        os.replace(tmp, self.stats_path)

    # --- serving --------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until request_stop()/stop(); then close (stats and state are written)."""
        try:
            while not self._stop.is_set():
                if self._master is not None:
                    self._poll_pty()
                else:
                    self._poll_tcp()
        finally:
            if self._thread is None:  # run in the caller's thread: clean up here
                self.close()

    def _decoder_counters(self) -> Dict[str, int]:
        """The frame decoders' counters, summed over every link (high water: the largest)."""
        out = dict(self._decoded)
        for link in [self._pty_link, *self._links.values()]:
            _add_counters(out, link.decoder.counters())
        return out

    def _poll_hot(self, link: _Link, read: Callable[[], bytes]) -> bool:
        """One non-blocking read while busy polling; True when it settled this poll."""
        if not self.busy_poll_s or time.perf_counter() >= self._hot_until:
            return False
        try:
            data = read()
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False   # let the blocking path deal with the error
        if data:
            self._on_bytes(link, data)
            return True
        return False

    def _session_link(self) -> Optional[_Link]:
        s = self.firmware.session
        if s is None:
            return None
        return next((k for k in self._links.values() if k.name == s.link), None)

    def _poll_tcp(self) -> None:
        assert self._listener is not None
        hot = self._session_link() or (next(iter(self._links.values()))
                                       if len(self._links) == 1 else None)
        if hot is not None and hot.sock is not None:
            sock = hot.sock
            if self._poll_hot(hot, lambda: sock.recv(1 << 16, socket.MSG_DONTWAIT)):
                return
        watch = [self._listener, *self._links]
        ready, _, _ = select.select(watch, [], [], 0.05)
        # The session's link first, the listener last: a connection that closed is seen to
        # be gone before the one that replaces it is heard.
        first = hot.sock if hot is not None else None
        for sock in sorted(ready, key=lambda r: (r is not first, r is self._listener)):
            if sock is self._listener:
                self._accept()
                continue
            link = self._links.get(sock)
            if link is None:
                continue   # dropped while serving another link this round
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._drop_link(link)
                continue
            self._on_bytes(link, data)

    def _accept(self) -> None:
        assert self._listener is not None
        conn, peer = self._listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(conn)
        if not self.firmware.sessions:   # old firmware: the new connection replaces the old
            for link in list(self._links.values()):
                self._drop_link(link)
        session = self._session_link()
        others = [k for k in self._links.values() if k is not session]
        while others and len(self._links) >= MAX_LINKS:
            self._drop_link(others.pop(0))
        name = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        self._links[conn] = _Link(name, FrameDecoder(self.firmware.max_payload), conn)
        self.counters["connections"] += 1  # type: ignore[operator]

    def _session_gone(self) -> None:
        """Before another link is heard: end the session if its connection has closed or
        failed without the server having read so yet (a peek, nothing consumed)."""
        link = self._session_link()
        if link is None:
            if self.firmware.session is not None and self._master is None:
                self.firmware.link_closed(self.firmware.session.link)   # its link is gone
            return
        assert link.sock is not None
        try:
            data = link.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_link(link)

    def _poll_pty(self) -> None:
        assert self._master is not None
        master = self._master
        if time.monotonic() >= self._outage_until and \
                self._poll_hot(self._pty_link, lambda: os.read(master, 1 << 16)):
            return
        ready, _, _ = select.select([self._master], [], [], 0.05)
        if not ready:
            return
        try:
            data = os.read(self._master, 1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            time.sleep(0.05)
            return
        if time.monotonic() < self._outage_until:
            return
        self._on_bytes(self._pty_link, data)

    def _drop_link(self, link: _Link) -> None:
        """Close a link; the firmware's session ends with it."""
        if link.sock is None:
            link.decoder.reset()
            return
        if self._links.pop(link.sock, None) is not None:
            _add_counters(self._decoded, link.decoder.counters())
        try:
            link.sock.close()
        except OSError:
            pass
        self.firmware.link_closed(link.name)

    def _on_bytes(self, link: _Link, data: bytes) -> None:
        if self.busy_poll_s:
            self._hot_until = time.perf_counter() + self.busy_poll_s
        self.counters["bytes_rx"] += len(data)  # type: ignore[operator]
        for item in link.decoder.feed(data):
            if link.sock is not None and link.sock not in self._links:
                return   # dropped by an earlier frame of this read
            if isinstance(item, FrameError):
                self._send(link, self.firmware.handle(item, link.name), 0)
            else:
                self._on_request(link, item)

    def _draw_fault(self, n: int) -> Tuple[Optional[str], float]:
        f = self.faults
        if not (f.corrupt or f.drop or f.delay_ms or f.script):
            return None, 0.0  # a clean link: no stream to keep in step
        u = self._rng.random(5)  # always five draws: the stream does not depend on config
        delay = float(u[4]) * self.faults.delay_ms / 1000.0
        if n in self.faults.script:
            return self.faults.script[n], delay
        if u[0] < self.faults.corrupt:
            return ("corrupt_request" if u[1] < 0.5 else "corrupt_reply"), delay
        if u[2] < self.faults.drop:
            return ("drop_request" if u[3] < 0.5 else "drop_reply"), delay
        return None, delay

    def _count(self, kind: str) -> None:
        self.counters["faults"][kind] += 1  # type: ignore[index]
        log.info("fault injected: %s", kind)

    def _handle(self, link: _Link, item: Decoded) -> Optional[bytes]:
        """The firmware's answer to a request from `link`; the old link of a session its own
        host took over is closed (a refused link is closed after its NACK is sent)."""
        fw = self.firmware
        if fw.sessions and link.sock is not None and fw.session is not None and \
                fw.session.link != link.name:
            self._session_gone()
        before = self._session_link()
        reply = fw.handle(item, link.name)
        if before is not None and before is not link and fw.session is not None and \
                fw.session.link == link.name:
            self._drop_link(before)   # taken over by its own host, reconnected
        return reply

    def _on_request(self, link: _Link, frame: Frame) -> None:
        self._requests += 1
        self.counters["requests"] = self._requests
        fault, delay = self._draw_fault(self._requests)
        size = frame.wire_size
        reply: Optional[bytes] = None
        try:
            if fault == "drop_request":
                self._count(fault)
                return
            if fault == "corrupt_request":
                self._count(fault)
                raw = bytearray(frame.encode())
                raw[int(self._rng.integers(len(raw)))] ^= int(self._rng.integers(1, 256))
                for item in FrameDecoder(self.firmware.max_payload).feed(bytes(raw)):
                    reply = self._handle(link, item)
                    self._send(link, reply, size)
                return
            if fault in ("busy", "chip_fault"):
                self._count(fault)
                code = NackCode.BUSY if fault == "busy" else NackCode.CHIP_FAULT
                reply = self.firmware.nack(frame.seq, code, frame.opcode, f"injected {fault}")
                self._send(link, reply, size)
                return
            reply = self._handle(link, frame)
            if reply is None:
                return
            if self.firmware.refused_client:
                self._send(link, reply, size)
                self._drop_link(link)
                return
            if fault == "crash":
                self._crash()
            every = self.faults.disconnect_every
            if self.firmware.executed_fresh:
                self._fresh += 1
            if fault == "disconnect" or (self.firmware.executed_fresh and every
                                         and self._fresh % every == 0):
                self._count("disconnect")
                self._disconnect(link)
                return
            if fault == "drop_reply":
                self._count(fault)
                return
            if fault == "corrupt_reply":
                self._count(fault)
                raw = bytearray(reply)
                raw[int(self._rng.integers(len(raw)))] ^= int(self._rng.integers(1, 256))
                reply = bytes(raw)
            if fault == "delay":
                delay = max(delay, self.faults.outage_s)
            if delay > 0:
                self._count("delay")
                time.sleep(delay)
            self._send(link, reply, size)
        finally:
            if self.on_request is not None:
                self.on_request(frame, reply)

    def _crash(self) -> None:
        """SIGKILL this process (no cleanup: the journal alone must carry the state)."""
        if threading.current_thread() is not threading.main_thread():
            log.error("fault 'crash' ignored: the emulator is not its process's main thread")
            return
        self._count("crash")
        self.write_stats()
        log.warning("fault injected: crash (SIGKILL) after executing seq=%d",
                    self.firmware.last_seq or 0)
        os.kill(os.getpid(), signal.SIGKILL)

    def _disconnect(self, link: _Link) -> None:
        if self._master is not None:
            self._outage_until = time.monotonic() + self.faults.outage_s
            link.decoder.reset()
        else:
            self._drop_link(link)

    def _send(self, link: _Link, data: Optional[bytes], request_bytes: int) -> None:
        if not data:
            return
        wait = self.link.delay_s(request_bytes + len(data))
        if wait > 0:
            _wait(wait)
        try:
            if self._master is not None:
                self._write_pty(data)
            elif link.sock is not None and link.sock in self._links:
                link.sock.sendall(data)
            else:
                return
        except OSError as e:
            log.info("reply lost: %s", e)
            self._drop_link(link)
            return
        self.counters["bytes_tx"] += len(data)  # type: ignore[operator]

    def _write_pty(self, data: bytes) -> None:
        assert self._master is not None
        view = memoryview(data)
        deadline = time.monotonic() + 5.0
        while view:
            try:
                n = os.write(self._master, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError("pty not drained by the host within 5 s") from None
                select.select([], [self._master], [], 0.05)


def _wait(seconds: float) -> None:
    """Wait `seconds` precisely: time.sleep overshoots by ~0.1 ms, as much as a modelled
    12 Mbaud link takes for a whole small frame, so the last stretch is spun."""
    end = time.perf_counter() + seconds
    if seconds > 1e-3:
        time.sleep(seconds - 5e-4)
    while time.perf_counter() < end:
        time.sleep(0)  # yields the interpreter lock to a host in this process


def parse_listen(value: str) -> Tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `PORT` (on 127.0.0.1) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"--listen wants HOST:PORT, got {value!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} outside 0..65535")
    return host, p


__all__ = ["Firmware", "EmulatorServer", "FaultConfig", "LinkModel", "FAULT_KINDS",
           "parse_listen"]
