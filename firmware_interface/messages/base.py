"""What every message shares: the Message base, its empty-payload form and the payload
helpers (length checks, length-prefixed strings, read-only arrays).

Every message is a frozen dataclass with `encode() -> bytes` (the payload) and
`decode(payload)` (raises PayloadError with the NACK code a firmware would answer). Messages
compare equal when they encode to the same bytes.
"""
from __future__ import annotations

import struct
from typing import ClassVar, Tuple, Type, TypeVar

import numpy as np

from firmware_interface.frame import encode_frame
from firmware_interface.protocol import PROTOCOL_VERSION, NackCode, Opcode, PayloadError

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
