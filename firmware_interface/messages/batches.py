"""The messages that carry device batches: READ / READ_EXACT, PROGRAM / PROGRAM_READ and
MATVEC; one small type per command and reply, each with its byte layout.

Batch payloads are struct-of-arrays: a packed address set (firmware_interface.addresses),
then one packed numpy array per per-device field, all little-endian.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from firmware_interface.addresses import (MAX_BLOCK_ELEMENTS, AddressMode,
                                          block_body_size, decode_address_set,
                                          decode_block_body, encode_address_set,
                                          encode_block_body)
from firmware_interface.messages.base import Message, _at_least, _need, _ro
from firmware_interface.protocol import NackCode, Opcode, PayloadError, PulseCode


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
