"""Frames and the streaming frame decoder.

Frame layout (all integers little-endian)::

    offset size field
    0      2    sync      0xA5 0x5A
    2      1    major     protocol major version
    3      1    minor     protocol minor version
    4      4    seq       uint32 sequence number (a reply carries its request's)
    8      1    opcode    see protocol.Opcode
    9      1    flags     0 (reserved)
    10     4    length    uint32 payload length N
    14     2    hcrc      CRC-16/CCITT-FALSE of bytes 0..13
    16     N    payload
    16+N   4    crc       CRC-32 (zlib / ISO-HDLC) of bytes 0..16+N-1

The header has its own CRC so that a corrupted length is caught at once: the decoder never
waits for (or buffers) a payload whose length it cannot trust, and it resynchronises on the
next sync pattern instead. The 16-byte header layout is frozen for every protocol version, so
any version can read another's header (and NACK it with VERSION_MISMATCH).
"""
from __future__ import annotations

import binascii
import struct
import zlib
from dataclasses import dataclass
from typing import List, Tuple, Union

from firmware_interface.protocol import PROTOCOL_VERSION, NackCode

SYNC = b"\xA5\x5A"
HEADER = struct.Struct("<2sBBIBBIH")
HEADER_LEN = HEADER.size          # 16
TRAILER = struct.Struct("<I")
TRAILER_LEN = TRAILER.size        # 4
OVERHEAD = HEADER_LEN + TRAILER_LEN
#: Largest payload this codec builds; firmware advertises its own (smaller) max_payload.
MAX_PAYLOAD = 1 << 26


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection); check "123456789"=0x29B1."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC as zlib computes it; check value of "123456789" is 0xCBF43926."""
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Frame:
    """One decoded frame: header fields and the raw payload."""

    seq: int
    opcode: int
    payload: bytes
    version: Tuple[int, int] = PROTOCOL_VERSION
    flags: int = 0

    def encode(self) -> bytes:
        return encode_frame(self.seq, self.opcode, self.payload, version=self.version,
                            flags=self.flags)

    @property
    def wire_size(self) -> int:
        return OVERHEAD + len(self.payload)


@dataclass(frozen=True)
class FrameError:
    """A frame whose header was intact but which cannot be delivered (typed, never raised).

    `code` is BAD_CRC (payload or trailer corrupted) or TOO_LARGE (length above the cap; its
    bytes are skipped without being buffered). The header fields let a firmware NACK it.
    """

    code: NackCode
    seq: int
    opcode: int
    length: int
    version: Tuple[int, int]


Decoded = Union[Frame, FrameError]


def encode_frame(seq: int, opcode: int, payload: bytes = b"", *,
                 version: Tuple[int, int] = PROTOCOL_VERSION, flags: int = 0) -> bytes:
    """Build the bytes of one frame."""
    if not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"sequence number {seq} outside uint32")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(SYNC, version[0], version[1], seq, int(opcode), flags, len(payload), 0)
    head = head[:-2] + struct.pack("<H", crc16(head[:-2]))
    body = head + bytes(payload)
    return body + TRAILER.pack(crc32(body))


class FrameDecoder:
    """Streaming decoder: feed bytes in any chunking, get whole frames out.

    Garbage is skipped up to the next sync pattern; a header with a bad CRC is treated as
    garbage (resync one byte later); a frame with a bad CRC-32 yields FrameError(BAD_CRC) and
    the scan resumes one byte after its sync (so a dropped byte costs one frame, not two); a
    length above `max_payload` yields FrameError(TOO_LARGE) and its bytes are discarded as
    they arrive. Between calls at most one partial frame is buffered, and during a call the
    buffer never holds more than one whole frame of the largest accepted size.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = int(max_payload)
        self._buf = bytearray()
        self._skip = 0
        self.garbage_bytes = 0
        self.bad_headers = 0
        self.bad_crc = 0
        self.too_large = 0
        self.frames = 0
        #: Most bytes ever held in the buffer (never above max_payload + OVERHEAD).
        self.high_water = 0

    def reset(self) -> None:
        """Forget any partial frame (e.g. after a reconnect)."""
        self._buf.clear()
        self._skip = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def wanted(self) -> int:
        """How many more bytes could complete the next frame (≥ 1): a bounded read size."""
        if self._skip:
            return self._skip
        buf = self._buf
        if len(buf) < HEADER_LEN:
            return HEADER_LEN - len(buf)
        length = struct.unpack_from("<I", buf, 10)[0]
        if self._header_ok() and length <= self.max_payload:
            return max(1, HEADER_LEN + length + TRAILER_LEN - len(buf))
        return 1

    def _header_ok(self) -> bool:
        buf = self._buf
        return (buf[:2] == SYNC
                and crc16(bytes(buf[:HEADER_LEN - 2])) == struct.unpack_from("<H", buf, 14)[0])

    def feed(self, data: bytes) -> List[Decoded]:
        """Consume `data`; return the frames (and frame errors) completed by it, in order.

        `data` is taken in pieces that never let the internal buffer grow beyond one whole
        frame of the largest accepted size (`max_payload + OVERHEAD` bytes), however much is
        handed in at once: a flood of bytes costs time, never memory.
        """
        out: List[Decoded] = []
        buf = self._buf
        limit = HEADER_LEN + self.max_payload + TRAILER_LEN
        if not self._skip and len(buf) + len(data) <= limit:  # the usual case: one piece
            buf += data
            if len(buf) > self.high_water:
                self.high_water = len(buf)
            self._scan(out)
            return out
        view = memoryview(data).cast("B")
        n = len(view)
        pos = 0
        while pos < n:
            if self._skip:  # inside an oversized frame: its bytes are dropped unbuffered
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            take = min(max(1, limit - len(buf)), n - pos)
            buf += view[pos:pos + take]
            pos += take
            if len(buf) > self.high_water:
                self.high_water = len(buf)
            self._scan(out)
        return out

    def _scan(self, out: List[Decoded]) -> None:
        """Deliver every complete frame in the buffer; leave at most one partial frame."""
        buf = self._buf
        while True:
            if self._skip:
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                if self._skip:
                    return
            i = buf.find(SYNC)
            if i < 0:
                keep = 1 if buf[-1:] == SYNC[:1] else 0
                self.garbage_bytes += len(buf) - keep
                del buf[:len(buf) - keep]
                return
            if i:
                self.garbage_bytes += i
                del buf[:i]
            if len(buf) < HEADER_LEN:
                return
            if not self._header_ok():
                self.bad_headers += 1
                self.garbage_bytes += 1
                del buf[:1]
                continue
            _, major, minor, seq, opcode, flags, length, _ = HEADER.unpack_from(buf)
            if length > self.max_payload:
                self.too_large += 1
                out.append(FrameError(NackCode.TOO_LARGE, seq, opcode, length, (major, minor)))
                del buf[:HEADER_LEN]
                self._skip = length + TRAILER_LEN
                continue
            total = HEADER_LEN + length + TRAILER_LEN
            if len(buf) < total:
                return
            with memoryview(buf) as mv:  # released before the buffer is resized below
                good = crc32(mv[:total - TRAILER_LEN]) == TRAILER.unpack_from(
                    mv, total - TRAILER_LEN)[0]
                payload = bytes(mv[HEADER_LEN:total - TRAILER_LEN]) if good else b""
            if not good:
                self.bad_crc += 1
                out.append(FrameError(NackCode.BAD_CRC, seq, opcode, length, (major, minor)))
                self.garbage_bytes += 1
                del buf[:1]
                continue
            self.frames += 1
            out.append(Frame(seq, opcode, payload, (major, minor), flags))
            del buf[:total]

    def counters(self) -> dict:
        return {"frames": self.frames, "garbage_bytes": self.garbage_bytes,
                "bad_headers": self.bad_headers, "bad_crc": self.bad_crc,
                "too_large": self.too_large, "high_water": self.high_water}
