"""The firmware a real FPGA runs, as a protocol engine backed by SimulatedChip: frames in,
reply frames out.

It validates every request (NACK with a typed code), enforces the chip's hard limits (the
simulated chip raises SafetyLimitError; that becomes NACK SAFETY_LIMIT), remembers the replies
of recent sequence numbers so a repeated request is answered from memory and never executed
twice, serves one client's session at a time (NACK IN_USE to any other), counts its boot's
history of state-changing commands (HISTORY), and can keep the chip state (and that memory,
boot and history) in a file across restarts. The link that carries its frames is
sim_backend.emulator.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from drivers.backend import Capability as ContractCapability, capabilities_to_wire
from drivers.errors import (AddressError, ChipError, ConfigError, NotSupportedError,
                            SafetyLimitError)
from drivers.pulse import PulseKind, PulseSpec
from firmware_interface.adc import ADC_BITS, adc_full_scale_us, adc_quantise
from firmware_interface.frame import Decoded, Frame, FrameError, crc32
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


__all__ = ["Firmware", "HISTORY_KINDS", "STATE_CHANGING"]
