"""The session's messages: HELLO / INFO, STATUS, HISTORY, SAFE_STATE, the simulators'
clock, and NACK; one small type per command and reply, each with its byte layout."""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Tuple

import numpy as np

from firmware_interface.messages.base import (Message, _at_least, _Empty, _need,
                                              _read_str8, _ro, _str8)
from firmware_interface.protocol import Capability, NackCode, Opcode, PayloadError


# --- HELLO / INFO ---------------------------------------------------------------------------
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, eq=False)
class Hello(Message):
    """HELLO (0x01), host -> chip: open a session, or take over one's own; the chip answers
    INFO. The host's protocol version is in the frame header.

    Payload: empty (open a new session), or, from protocol 1.3::

        u64 session     the session a previous INFO named (nonzero): the same host,
                        reconnecting, takes over its own session even while the firmware
                        still holds the old link open; any other HELLO is refused NACK IN_USE
                        while a session is active

    A firmware before 1.3 answers a non-empty HELLO NACK BAD_LENGTH, so a host sends a session
    only to a firmware whose INFO named one.
    """

    OPCODE: ClassVar[Opcode] = Opcode.HELLO

    session: int = 0

    def __post_init__(self) -> None:
        if not 0 <= int(self.session) < 1 << 64:
            raise ValueError(f"session {self.session} does not fit u64")
        object.__setattr__(self, "session", int(self.session))

    def encode(self) -> bytes:
        return _U64.pack(self.session) if self.session else b""

    @classmethod
    def decode(cls, payload: bytes) -> "Hello":
        if not payload:
            return cls()
        _need(payload, _U64.size, "HELLO")
        session = _U64.unpack(payload)[0]
        if not session:
            raise PayloadError(NackCode.BAD_PAYLOAD,
                               "HELLO session 0 names no session (send an empty HELLO)")
        return cls(session)


@dataclass(frozen=True, eq=False)
class InfoReply(Message):
    """INFO (0x81), chip -> host: who the chip is and what it can do.

    Payload::

        u8  protocol_major       u8 protocol_minor
        u32 arrays               u32 rows               u32 cols
        f64 g_min_us             f64 g_max_us           f64 adc_full_scale_us
        u8  adc_bits             u8 reserved (0)        u16 seq_memory (remembered replies)
        u32 capabilities         bit0 MATVEC, bit1 EXACT_READ, bit2 STATE_FILE, bit3 SIM_CLOCK,
        u32 max_payload          largest request payload the firmware accepts, bytes
        u8 len + UTF-8           chip_id
        u8 len + UTF-8           firmware_version
        u8  n_limits, then n_limits × (u8 len + UTF-8 name, f64 value)   hard limits
        u64 boot_id              (1.3) this boot of the firmware; 0: it has none (no HISTORY)
        u64 session              (1.3) the session this HELLO opened or took over

    capabilities bit4 PROGRAM_READ (1.2), bit5 HISTORY (1.3). `boot_id` and `session` are
    None in the INFO of a firmware before 1.3. A later minor version may append fields;
    hosts ignore trailing bytes.
    """

    OPCODE: ClassVar[Opcode] = Opcode.INFO
    FIXED: ClassVar[struct.Struct] = struct.Struct("<BBIIIdddBBHII")

    protocol_version: Tuple[int, int]
    arrays: int
    rows: int
    cols: int
    g_min_us: float
    g_max_us: float
    adc_full_scale_us: float
    adc_bits: int
    seq_memory: int
    capabilities: int
    max_payload: int
    chip_id: str
    firmware_version: str
    hard_limits: Tuple[Tuple[str, float], ...] = ()
    boot_id: Optional[int] = None
    session: Optional[int] = None

    def encode(self) -> bytes:
        out = self.FIXED.pack(self.protocol_version[0], self.protocol_version[1], self.arrays,
                              self.rows, self.cols, self.g_min_us, self.g_max_us,
                              self.adc_full_scale_us, self.adc_bits, 0, self.seq_memory,
                              int(self.capabilities), self.max_payload)
        out += _str8(self.chip_id) + _str8(self.firmware_version)
        out += struct.pack("<B", len(self.hard_limits))
        for name, value in self.hard_limits:
            out += _str8(name) + struct.pack("<d", float(value))
        if self.boot_id is not None or self.session is not None:
            out += struct.pack("<QQ", self.boot_id or 0, self.session or 0)
        return out

    @classmethod
    def decode(cls, payload: bytes) -> "InfoReply":
        _at_least(payload, cls.FIXED.size, "INFO")
        (maj, mnr, arrays, rows, cols, gmin, gmax, fs, bits, _, depth, caps,
         maxp) = cls.FIXED.unpack_from(payload)
        off = cls.FIXED.size
        chip_id, off = _read_str8(payload, off, "INFO chip_id")
        fw, off = _read_str8(payload, off, "INFO firmware_version")
        _at_least(payload, off + 1, "INFO limits")
        n = payload[off]
        off += 1
        limits = []
        for _ in range(n):  # a handful of named limits, not per-device data
            name, off = _read_str8(payload, off, "INFO limit name")
            _at_least(payload, off + 8, "INFO limit value")
            limits.append((name, struct.unpack_from("<d", payload, off)[0]))
            off += 8
        boot_id = session = None
        if len(payload) >= off + 16:   # 1.3: boot and session
            boot_id, session = struct.unpack_from("<QQ", payload, off)
        return cls((maj, mnr), arrays, rows, cols, gmin, gmax, fs, bits, depth, caps, maxp,
                   chip_id, fw, tuple(limits), boot_id, session)

    @property
    def capability_flags(self) -> Capability:
        return Capability(self.capabilities & int(sum(Capability)))


# --- STATUS ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class StatusRequest(_Empty):
    """STATUS (0x02), host -> chip: ask for the last executed sequence number and counters.

    Payload: empty.
    """

    OPCODE: ClassVar[Opcode] = Opcode.STATUS


@dataclass(frozen=True, eq=False)
class StatusReply(Message):
    """STATUS_REPLY (0x82), chip -> host.

    Payload::

        u32 last_seq            sequence number of the last executed remembered command
        u8  flags               bit0 last_seq valid, bit1 lines idle (safe state)
        u8  reserved[3]
        u64 commands_executed   commands executed (repeats answered from memory excluded)
        u64 repeats_answered    requests answered from the sequence-number memory
        u64 set_pulses          SET pulses applied
        u64 reset_pulses        RESET pulses applied
        u64 devices_read        device reads (READ and MATVEC)
        u64 bad_frames          frames dropped for a bad header or CRC
        u64 nacks_sent

    A later minor version may append fields; hosts ignore trailing bytes.
    """

    OPCODE: ClassVar[Opcode] = Opcode.STATUS_REPLY
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IB3x7Q")

    last_seq: int = 0
    last_seq_valid: bool = False
    idle: bool = True
    commands_executed: int = 0
    repeats_answered: int = 0
    set_pulses: int = 0
    reset_pulses: int = 0
    devices_read: int = 0
    bad_frames: int = 0
    nacks_sent: int = 0

    def encode(self) -> bytes:
        flags = (1 if self.last_seq_valid else 0) | (2 if self.idle else 0)
        return self.LAYOUT.pack(self.last_seq, flags, self.commands_executed,
                                self.repeats_answered, self.set_pulses, self.reset_pulses,
                                self.devices_read, self.bad_frames, self.nacks_sent)

    @classmethod
    def decode(cls, payload: bytes) -> "StatusReply":
        _at_least(payload, cls.LAYOUT.size, "STATUS_REPLY")
        v = cls.LAYOUT.unpack_from(payload)
        return cls(v[0], bool(v[1] & 1), bool(v[1] & 2), *v[2:])

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --- HISTORY (protocol 1.3) -----------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class HistoryRequest(_Empty):
    """HISTORY (0x03), host -> chip: which boot this is and how far its command history goes.

    Capability HISTORY (protocol 1.3; else NACK UNSUPPORTED, or UNKNOWN_OPCODE before 1.3). A
    pure query, not remembered. Payload: empty. Reply: HISTORY_REPLY.
    """

    OPCODE: ClassVar[Opcode] = Opcode.HISTORY


@dataclass(frozen=True, eq=False)
class HistoryReply(Message):
    """HISTORY_REPLY (0x83), chip -> host: the boot and the state-changing commands executed
    in it, so a host can check the chip is exactly where its record of the commands it sent
    left it (not power-cycled, not used by another client, not continued by a later run).

    Payload::

        u64 boot_id             this boot (INFO's boot_id)
        u32 last_seq            seq of the last state-changing command executed in this boot
        u8  last_opcode         its opcode; 0: none yet (last_seq is then 0)
        u8  reserved[3]
        u64 commands            state-changing commands executed in this boot, repeats excluded
        u64 reads               of which READ
        u64 programs            PROGRAM
        u64 program_reads       PROGRAM_READ
        u64 matvecs             MATVEC
        u64 clock_advances      ADVANCE_CLOCK

    State-changing: READ, PROGRAM, PROGRAM_READ, MATVEC, ADVANCE_CLOCK
    (protocol.STATE_CHANGING_OPCODES). `commands` is at least the sum of the five (a later
    version may count more kinds). A later minor version may append fields; hosts ignore
    trailing bytes.
    """

    OPCODE: ClassVar[Opcode] = Opcode.HISTORY_REPLY
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QIB3x6Q")

    boot_id: int
    last_seq: int = 0
    last_opcode: int = 0
    commands: int = 0
    reads: int = 0
    programs: int = 0
    program_reads: int = 0
    matvecs: int = 0
    clock_advances: int = 0

    def encode(self) -> bytes:
        return self.LAYOUT.pack(self.boot_id, self.last_seq, self.last_opcode, self.commands,
                                self.reads, self.programs, self.program_reads, self.matvecs,
                                self.clock_advances)

    @classmethod
    def decode(cls, payload: bytes) -> "HistoryReply":
        _at_least(payload, cls.LAYOUT.size, "HISTORY_REPLY")
        return cls(*cls.LAYOUT.unpack_from(payload))


# --- SAFE_STATE -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class SafeStateRequest(_Empty):
    """SAFE_STATE (0x40), host -> chip: idle every word and bit line. Payload: empty."""

    OPCODE: ClassVar[Opcode] = Opcode.SAFE_STATE


@dataclass(frozen=True, eq=False, repr=False)
class SafeStateAck(_Empty):
    """SAFE_STATE_ACK (0xC0), chip -> host: all lines idle. Payload: empty."""

    OPCODE: ClassVar[Opcode] = Opcode.SAFE_STATE_ACK


# --- ADVANCE_CLOCK / CLOCK (simulators only, protocol 1.1) ----------------------------------
_F64 = struct.Struct("<d")


def _seconds(value: float, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value}")
    return v


class _Clock(Message):
    """A message whose payload is one f64 number of seconds."""

    def _value(self) -> float:
        raise NotImplementedError

    def encode(self) -> bytes:
        return _F64.pack(self._value())

    @classmethod
    def _decode_seconds(cls, payload: bytes) -> float:
        _need(payload, _F64.size, cls.__name__)
        v = _F64.unpack(payload)[0]
        if not (math.isfinite(v) and v >= 0.0):
            raise PayloadError(NackCode.BAD_PAYLOAD,
                               f"{cls.__name__}: seconds must be finite and >= 0, got {v}")
        return v


@dataclass(frozen=True, eq=False)
class AdvanceClockRequest(_Clock):
    """ADVANCE_CLOCK (0x50), host -> chip: let simulated time pass with the chip idle.

    Simulators only (capability SIM_CLOCK, else NACK UNSUPPORTED): a drift measurement waits
    in simulated time instead of the host sleeping for real. Remembered like PROGRAM, so a
    retried request never moves the clock twice.

    Payload::

        f64 seconds     finite and >= 0 (else NACK BAD_PAYLOAD)
    """

    OPCODE: ClassVar[Opcode] = Opcode.ADVANCE_CLOCK

    seconds: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", _seconds(self.seconds, "ADVANCE_CLOCK"))

    def _value(self) -> float:
        return self.seconds

    @classmethod
    def decode(cls, payload: bytes) -> "AdvanceClockRequest":
        return cls(cls._decode_seconds(payload))


@dataclass(frozen=True, eq=False)
class AdvanceClockAck(_Clock):
    """ADVANCE_CLOCK_ACK (0xD0), chip -> host: the chip's clock after advancing.

    Payload::

        f64 clock_s     simulated time since the chip's power-up (or state creation), s
    """

    OPCODE: ClassVar[Opcode] = Opcode.ADVANCE_CLOCK_ACK

    clock_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "clock_s", _seconds(self.clock_s, "clock_s"))

    def _value(self) -> float:
        return self.clock_s

    @classmethod
    def decode(cls, payload: bytes) -> "AdvanceClockAck":
        return cls(cls._decode_seconds(payload))


@dataclass(frozen=True, eq=False, repr=False)
class ClockRequest(_Empty):
    """CLOCK (0x51), host -> chip: the chip's simulated clock (a pure query, not remembered).

    Simulators only (capability SIM_CLOCK, else NACK UNSUPPORTED). Payload: empty.
    """

    OPCODE: ClassVar[Opcode] = Opcode.CLOCK


@dataclass(frozen=True, eq=False)
class ClockReply(_Clock):
    """CLOCK_REPLY (0xD1), chip -> host.

    Payload::

        f64 clock_s     simulated time, s (every executed READ, PROGRAM, MATVEC and
                        ADVANCE_CLOCK moves it; queries do not)
    """

    OPCODE: ClassVar[Opcode] = Opcode.CLOCK_REPLY

    clock_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "clock_s", _seconds(self.clock_s, "clock_s"))

    def _value(self) -> float:
        return self.clock_s

    @classmethod
    def decode(cls, payload: bytes) -> "ClockReply":
        return cls(cls._decode_seconds(payload))


# --- NACK -----------------------------------------------------------------------------------
NACK_MAX_DEVICES = 16


@dataclass(frozen=True, eq=False)
class Nack(Message):
    """NACK (0xFF), chip -> host: the request was refused and nothing was applied.

    Payload::

        u16 code              protocol.NackCode
        u8  request_opcode    opcode of the refused request (0 if unknown)
        u8  reserved (0)
        u32 n_devices         how many devices are at fault (may exceed those listed)
        u16 n_listed          addresses listed below (≤ 16)
        u16 msg_len
        u32[n_listed] devices
        u8[msg_len] message   UTF-8, for humans

    The NACK layout is frozen for all protocol versions.
    """

    OPCODE: ClassVar[Opcode] = Opcode.NACK
    HEAD: ClassVar[struct.Struct] = struct.Struct("<HBxIHH")

    code: NackCode
    request_opcode: int = 0
    message: str = ""
    devices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    n_devices: int = -1  # -1: the number listed

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", NackCode(self.code))
        d = np.asarray(self.devices, dtype=np.int64).ravel()
        if self.n_devices < 0:
            object.__setattr__(self, "n_devices", int(d.size))
        object.__setattr__(self, "devices", _ro(d[:NACK_MAX_DEVICES].astype(np.uint32)))
        msg = self.message.encode("utf-8")
        if len(msg) > 1024:
            object.__setattr__(self, "message", msg[:1024].decode("utf-8", "ignore"))

    def encode(self) -> bytes:
        msg = self.message.encode("utf-8")
        return (self.HEAD.pack(int(self.code), self.request_opcode, self.n_devices,
                               self.devices.size, len(msg))
                + self.devices.astype("<u4").tobytes() + msg)

    @classmethod
    def decode(cls, payload: bytes) -> "Nack":
        _at_least(payload, cls.HEAD.size, "NACK")
        code, op, n_dev, n_list, mlen = cls.HEAD.unpack_from(payload)
        off = cls.HEAD.size
        _need(payload, off + 4 * n_list + mlen, "NACK")
        devices = np.frombuffer(payload, "<u4", n_list, off)
        msg = bytes(payload[off + 4 * n_list:]).decode("utf-8", "replace")
        try:
            code = NackCode(code)
        except ValueError:
            raise PayloadError(NackCode.BAD_PAYLOAD, f"unknown NACK code {code}") from None
        return cls(code, op, msg, devices, n_dev)
