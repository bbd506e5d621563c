"""One small type per command and reply, each with its byte layout.

Every message is a frozen dataclass with `encode() -> bytes` (the payload) and
`decode(payload)` (raises PayloadError with the NACK code a firmware would answer). Batch
payloads are struct-of-arrays: a packed address set (see addresses.py), then one packed numpy
array per per-device field, all little-endian. Messages compare equal when they encode to
the same bytes.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Dict, Optional, Tuple, Type, TypeVar

import numpy as np

from firmware_interface.addresses import (MAX_BLOCK_ELEMENTS, AddressMode, BlockMode,
                                          SET_HEADER, block_body_size,
                                          decode_address_set, decode_block_body,
                                          encode_address_set, encode_block_body)
from firmware_interface.frame import Frame, encode_frame
from firmware_interface.protocol import (PROTOCOL_VERSION, Capability, NackCode, Opcode,
                                         PayloadError, PulseCode)

M = TypeVar("M", bound="Message")


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def _need(payload: bytes, n: int, what: str) -> None:
    if len(payload) != n:
        raise PayloadError(NackCode.BAD_LENGTH,
                           f"{what} payload must be {n} bytes, got {len(payload)}")


def _at_least(payload: bytes, n: int, what: str) -> None:
    if len(payload) < n:
        raise PayloadError(NackCode.BAD_LENGTH,
                           f"{what} payload must be at least {n} bytes, got {len(payload)}")


def _str8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255:
        raise ValueError(f"string {s!r} longer than 255 bytes")
    return struct.pack("<B", len(b)) + b


def _read_str8(payload: bytes, off: int, what: str) -> Tuple[str, int]:
    _at_least(payload, off + 1, what)
    n = payload[off]
    _at_least(payload, off + 1 + n, what)
    try:
        return bytes(payload[off + 1:off + 1 + n]).decode("utf-8"), off + 1 + n
    except UnicodeDecodeError:
        raise PayloadError(NackCode.BAD_PAYLOAD, f"{what}: string is not UTF-8") from None


class Message:
    """Base of all messages: an opcode, a payload codec, and frame building."""

    OPCODE: ClassVar[Opcode]

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls: Type[M], payload: bytes) -> M:
        raise NotImplementedError

    def frame(self, seq: int, version: Tuple[int, int] = PROTOCOL_VERSION) -> bytes:
        """The whole frame carrying this message with sequence number `seq`."""
        return encode_frame(seq, self.OPCODE, self.encode(), version=version)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.encode() == other.encode()  # type: ignore

    __hash__ = None  # type: ignore[assignment]


class _Empty(Message):
    """A message without payload."""

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls: Type[M], payload: bytes) -> M:
        _need(payload, 0, cls.__name__)
        return cls()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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


# --- READ / READ_EXACT ----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReadRequest(Message):
    """READ (0x10), host -> chip: read the conductance of a set of devices (ADC codes).

    Payload: one address set (addresses.py), strictly ascending. Reply: READ_REPLY.
    """

    OPCODE: ClassVar[Opcode] = Opcode.READ

    addresses: np.ndarray
    mode: Optional[AddressMode] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", _ro(np.asarray(self.addresses, np.uint32)))

    def encode(self) -> bytes:
        return encode_address_set(self.addresses, self.mode)

    @classmethod
    def decode(cls, payload: bytes):  # type: ignore[override]
        addr, end = decode_address_set(payload)
        _need(payload, end, cls.__name__)
        return cls(addr, AddressMode(payload[0]))


def _pack_counted(values: np.ndarray, dtype: str) -> bytes:
    """u32 count, then the values as little-endian `dtype`: the layout of every array reply."""
    return struct.pack("<I", values.size) + values.astype(dtype).tobytes()


def _unpack_counted(payload: bytes, dtype: str, what: str) -> np.ndarray:
    """Inverse of _pack_counted, with a PayloadError naming `what` if the payload is short."""
    _at_least(payload, 4, what)
    n = struct.unpack_from("<I", payload)[0]
    _need(payload, 4 + np.dtype(dtype).itemsize * n, what)
    return np.frombuffer(payload, dtype, n, 4)


@dataclass(frozen=True, eq=False)
class ReadReply(Message):
    """READ_REPLY (0x90), chip -> host: one ADC code per device, in the request's order.

    Payload::

        u32 count
        u16[count] codes      g_us = code * adc_full_scale_us / 65535 (firmware_interface.adc)
    """

    OPCODE: ClassVar[Opcode] = Opcode.READ_REPLY

    codes: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", _ro(np.asarray(self.codes, np.uint16).ravel()))

    def encode(self) -> bytes:
        return _pack_counted(self.codes, "<u2")

    @classmethod
    def decode(cls, payload: bytes) -> "ReadReply":
        return cls(_unpack_counted(payload, "<u2", "READ_REPLY"))


@dataclass(frozen=True, eq=False)
class ReadExactRequest(ReadRequest):
    """READ_EXACT (0x11), host -> chip: noise-free true conductances (simulators only).

    A debugging aid for digests of the chip state: same payload as READ (one address set).
    Chips without the EXACT_READ capability answer NACK UNSUPPORTED.
    """

    OPCODE: ClassVar[Opcode] = Opcode.READ_EXACT


@dataclass(frozen=True, eq=False)
class ReadExactReply(Message):
    """READ_EXACT_REPLY (0x91), chip -> host: float32 µS per device, lossless.

    Payload::

        u32 count
        f32[count] g_us
    """

    OPCODE: ClassVar[Opcode] = Opcode.READ_EXACT_REPLY

    values: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _ro(np.asarray(self.values, np.float32).ravel()))

    def encode(self) -> bytes:
        return _pack_counted(self.values, "<f4")

    @classmethod
    def decode(cls, payload: bytes) -> "ReadExactReply":
        return cls(_unpack_counted(payload, "<f4", "READ_EXACT_REPLY"))


# --- PROGRAM --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ProgramRequest(Message):
    """PROGRAM (0x20), host -> chip: apply n_pulses[i] identical pulses to device i.

    Payload::

        u8  kind              1 SET, 2 RESET
        u8  reserved (0)
        u32 amplitude_uv      pulse amplitude, microvolts
        u32 width_ps          pulse width, picoseconds
        address set           strictly ascending (addresses.py)
        u8[count] n_pulses    pulses per device, same order as the address set

    The firmware checks every field against its hard limits before applying anything; a
    violation is NACK SAFETY_LIMIT and no device is touched. Reply: PROGRAM_ACK.
    """

    OPCODE: ClassVar[Opcode] = Opcode.PROGRAM
    HEAD: ClassVar[struct.Struct] = struct.Struct("<BxII")

    kind: PulseCode
    amplitude_uv: int
    width_ps: int
    addresses: np.ndarray
    n_pulses: np.ndarray
    mode: Optional[AddressMode] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", PulseCode(self.kind))
        object.__setattr__(self, "addresses", _ro(np.asarray(self.addresses, np.uint32)))
        n = np.asarray(self.n_pulses)
        if n.shape != self.addresses.shape:
            raise ValueError(f"n_pulses shape {n.shape} != addresses {self.addresses.shape}")
        if n.size and (n.min() < 0 or n.max() > 255):
            raise ValueError("n_pulses must be in 0..255 (u8 on the wire)")
        object.__setattr__(self, "n_pulses", _ro(n.astype(np.uint8)))
        for name in ("amplitude_uv", "width_ps"):
            v = int(getattr(self, name))
            if not 0 <= v <= 0xFFFFFFFF:
                raise ValueError(f"{name}={v} does not fit u32")
            object.__setattr__(self, name, v)

    @classmethod
    def from_units(cls, kind: int, amplitude_v: float, width_ns: float, addresses: np.ndarray,
                   n_pulses: np.ndarray) -> "ProgramRequest":
        """Build from volts and nanoseconds (rounded to µV and ps)."""
        return cls(PulseCode(kind), int(round(amplitude_v * 1e6)), int(round(width_ns * 1e3)),
                   addresses, n_pulses)

    @property
    def amplitude_v(self) -> float:
        return self.amplitude_uv / 1e6

    @property
    def width_ns(self) -> float:
        return self.width_ps / 1e3

    def encode(self) -> bytes:
        return (self.HEAD.pack(int(self.kind), self.amplitude_uv, self.width_ps)
                + encode_address_set(self.addresses, self.mode) + self.n_pulses.tobytes())

    @classmethod
    def decode(cls, payload: bytes) -> "ProgramRequest":
        _at_least(payload, cls.HEAD.size, "PROGRAM")
        kind, amp, width = cls.HEAD.unpack_from(payload)
        if kind not in (PulseCode.SET, PulseCode.RESET):
            raise PayloadError(NackCode.BAD_PAYLOAD, f"unknown pulse kind {kind}")
        addr, end = decode_address_set(payload, cls.HEAD.size)
        _need(payload, end + addr.size, "PROGRAM")
        # Every field is valid by construction here, so the checks and copies of
        # __post_init__ are skipped: this runs once per training step in the firmware.
        msg = object.__new__(cls)
        addr.flags.writeable = False   # a fresh array; the pulse counts view read-only bytes
        for name, value in (("kind", PulseCode(kind)), ("amplitude_uv", amp),
                            ("width_ps", width), ("addresses", addr),
                            ("n_pulses", np.frombuffer(payload, np.uint8, addr.size, end)),
                            ("mode", AddressMode(payload[cls.HEAD.size]))):
            object.__setattr__(msg, name, value)
        return msg


@dataclass(frozen=True, eq=False)
class ProgramAck(Message):
    """PROGRAM_ACK (0xA0), chip -> host: the batch was applied, exactly once.

    Payload::

        u32 devices     devices in the request
        u64 pulses      pulses applied (sum of n_pulses): the host checks both
    """

    OPCODE: ClassVar[Opcode] = Opcode.PROGRAM_ACK
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IQ")

    devices: int
    pulses: int

    def encode(self) -> bytes:
        return self.LAYOUT.pack(self.devices, self.pulses)

    @classmethod
    def decode(cls, payload: bytes) -> "ProgramAck":
        _need(payload, cls.LAYOUT.size, "PROGRAM_ACK")
        return cls(*cls.LAYOUT.unpack(payload))


@dataclass(frozen=True, eq=False)
class ProgramReadRequest(ProgramRequest):
    """PROGRAM_READ (0x21), host -> chip: a PROGRAM, then a READ of the same address set.

    Payload: exactly PROGRAM's. Devices with n_pulses 0 are read and not pulsed. Validation is
    PROGRAM's and happens before anything is applied; the read follows the programming as a
    separate READ would (the same chip time passes, the same read noise is drawn). Needs
    capability PROGRAM_READ (protocol 1.2; else NACK UNKNOWN_OPCODE or UNSUPPORTED). It saves
    the training loop one round trip per step: every pulsed device is read back at once.
    Reply: PROGRAM_READ_REPLY.
    """

    OPCODE: ClassVar[Opcode] = Opcode.PROGRAM_READ


@dataclass(frozen=True, eq=False)
class ProgramReadReply(Message):
    """PROGRAM_READ_REPLY (0xA1), chip -> host: PROGRAM_ACK's fields, then READ_REPLY's.

    Payload::

        u32 devices           devices in the request
        u64 pulses            pulses applied (sum of n_pulses)
        u32 count             = devices
        u16[count] codes      ADC codes read after programming, in the request's order
    """

    OPCODE: ClassVar[Opcode] = Opcode.PROGRAM_READ_REPLY

    devices: int
    pulses: int
    codes: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", _ro(np.asarray(self.codes, np.uint16).ravel()))

    def encode(self) -> bytes:
        return ProgramAck.LAYOUT.pack(self.devices, self.pulses) + \
            _pack_counted(self.codes, "<u2")

    @classmethod
    def decode(cls, payload: bytes) -> "ProgramReadReply":
        head = ProgramAck.LAYOUT.size
        _at_least(payload, head, "PROGRAM_READ_REPLY")
        devices, pulses = ProgramAck.LAYOUT.unpack_from(payload)
        return cls(devices, pulses, _unpack_counted(payload[head:], "<u2",
                                                    "PROGRAM_READ_REPLY"))


# --- MATVEC ---------------------------------------------------------------------------------
_X_DTYPES = {4: "<f4", 8: "<f8"}


@dataclass(frozen=True, eq=False)
class MatvecRequest(Message):
    """MATVEC (0x30), host -> chip: analog sums I = G·x over an (m, n) block of devices.

    Payload::

        u32 m, u32 n, u32 k   block is m × n; x is n × k (k = 1 when x is a vector)
        u8  block_mode        0 LIST (m*n u32, row-major), 1 AFFINE (u32 base, i32 rs, i32 cs)
        u8  x_dtype           4 float32, 8 float64 (the host sends float32 when lossless)
        u8  x_ndim            1 (vector) or 2 (matrix)
        u8  reserved (0)
        block body            see addresses.py
        x                     n*k values, row-major

    Reply: MATVEC_REPLY.
    """

    OPCODE: ClassVar[Opcode] = Opcode.MATVEC
    HEAD: ClassVar[struct.Struct] = struct.Struct("<IIIBBBx")

    block: np.ndarray
    x: np.ndarray
    x_dtype: int = 0  # 0: choose (float32 where lossless, else float64)

    def __post_init__(self) -> None:
        b = np.asarray(self.block)
        if b.ndim != 2:
            raise ValueError(f"MATVEC block must be 2-D, got shape {b.shape}")
        x = np.asarray(self.x, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[0] != b.shape[1]:
            raise ValueError(f"x of shape {x.shape} does not fit a block of shape {b.shape}")
        object.__setattr__(self, "block", _ro(b.astype(np.uint32)))
        object.__setattr__(self, "x", _ro(x))
        if self.x_dtype == 0:
            lossless = np.array_equal(x.astype(np.float32).astype(np.float64), x)
            object.__setattr__(self, "x_dtype", 4 if lossless else 8)
        if self.x_dtype not in _X_DTYPES:
            raise ValueError(f"x_dtype must be 4 or 8, got {self.x_dtype}")

    def encode(self) -> bytes:
        m, n = self.block.shape
        k = 1 if self.x.ndim == 1 else self.x.shape[1]
        mode, body = encode_block_body(self.block)
        return (self.HEAD.pack(m, n, k, int(mode), self.x_dtype, self.x.ndim) + body
                + np.ascontiguousarray(self.x, dtype=_X_DTYPES[self.x_dtype]).tobytes())

    @classmethod
    def decode(cls, payload: bytes) -> "MatvecRequest":
        _at_least(payload, cls.HEAD.size, "MATVEC")
        m, n, k, mode, xdt, ndim = cls.HEAD.unpack_from(payload)
        if xdt not in _X_DTYPES:
            raise PayloadError(NackCode.BAD_PAYLOAD, f"unknown x dtype {xdt}")
        if ndim not in (1, 2) or (ndim == 1 and k != 1):
            raise PayloadError(NackCode.BAD_PAYLOAD, f"bad x shape: ndim {ndim}, k {k}")
        if m * k > MAX_BLOCK_ELEMENTS:  # the reply must fit a frame too
            raise PayloadError(NackCode.BAD_PAYLOAD,
                               f"MATVEC reply of {m} x {k} values exceeds {MAX_BLOCK_ELEMENTS}")
        bsize = block_body_size(mode, m, n)
        off = cls.HEAD.size
        _need(payload, off + bsize + n * k * xdt, "MATVEC")
        block = decode_block_body(mode, m, n, payload[off:off + bsize])
        x = np.frombuffer(payload, _X_DTYPES[xdt], n * k, off + bsize).astype(np.float64)
        if not np.isfinite(x).all():
            raise PayloadError(NackCode.BAD_PAYLOAD, "x holds a NaN or infinite voltage")
        return cls(block, x if ndim == 1 else x.reshape(n, k), xdt)


@dataclass(frozen=True, eq=False)
class MatvecReply(Message):
    """MATVEC_REPLY (0xB0), chip -> host: float32 currents (µS·V = µA).

    Payload::

        u32 m, u32 k, u8 ndim (1: values are (m,), 2: (m, k)), u8 reserved[3]
        f32[m*k] values, row-major
    """

    OPCODE: ClassVar[Opcode] = Opcode.MATVEC_REPLY
    HEAD: ClassVar[struct.Struct] = struct.Struct("<IIB3x")

    values: np.ndarray

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.float32)
        if v.ndim not in (1, 2):
            raise ValueError(f"MATVEC_REPLY values must be 1-D or 2-D, got {v.shape}")
        object.__setattr__(self, "values", _ro(v))

    def encode(self) -> bytes:
        m = self.values.shape[0]
        k = 1 if self.values.ndim == 1 else self.values.shape[1]
        return self.HEAD.pack(m, k, self.values.ndim) + np.ascontiguousarray(
            self.values, dtype="<f4").tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> "MatvecReply":
        _at_least(payload, cls.HEAD.size, "MATVEC_REPLY")
        m, k, ndim = cls.HEAD.unpack_from(payload)
        if ndim not in (1, 2) or (ndim == 1 and k != 1):
            raise PayloadError(NackCode.BAD_PAYLOAD, f"bad shape: ndim {ndim}, k {k}")
        _need(payload, cls.HEAD.size + 4 * m * k, "MATVEC_REPLY")
        v = np.frombuffer(payload, "<f4", m * k, cls.HEAD.size)
        return cls(v if ndim == 1 else v.reshape(m, k))


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


MESSAGE_TYPES: Dict[int, Type[Message]] = {
    t.OPCODE: t for t in (Hello, InfoReply, StatusRequest, StatusReply, HistoryRequest,
                          HistoryReply, ReadRequest, ReadReply,
                          ReadExactRequest, ReadExactReply, ProgramRequest, ProgramAck,
                          ProgramReadRequest, ProgramReadReply, MatvecRequest, MatvecReply, SafeStateRequest, SafeStateAck,
                          AdvanceClockRequest, AdvanceClockAck, ClockRequest, ClockReply, Nack)
}


def decode_message(frame: Frame) -> Message:
    """The message a frame carries; PayloadError for an unknown opcode or a bad payload."""
    t = MESSAGE_TYPES.get(frame.opcode)
    if t is None:
        raise PayloadError(NackCode.UNKNOWN_OPCODE, f"unknown opcode 0x{frame.opcode:02X}")
    return t.decode(frame.payload)


__all__ = ["Hello", "InfoReply", "StatusRequest", "StatusReply", "HistoryRequest",
           "HistoryReply", "ReadRequest", "ReadReply",
           "ReadExactRequest", "ReadExactReply", "ProgramRequest", "ProgramAck",
           "ProgramReadRequest", "ProgramReadReply", "MatvecRequest", "MatvecReply", "SafeStateRequest", "SafeStateAck",
           "AdvanceClockRequest", "AdvanceClockAck", "ClockRequest", "ClockReply", "Nack",
           "Message", "MESSAGE_TYPES", "decode_message", "NACK_MAX_DEVICES", "SET_HEADER",
           "BlockMode"]
