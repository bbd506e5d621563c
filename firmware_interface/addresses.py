"""Address sets and address blocks on the wire.

An *address set* (READ, READ_EXACT, PROGRAM) is a strictly ascending list of flat device
addresses. Ascending order makes duplicates detectable and lets the encoder pick the smallest
of three encodings; per-device arrays that go with a set (pulse counts, read codes) follow the
same ascending order. Layout::

    u8  mode      0 RAW, 1 DELTA, 2 BITMAP
    u32 count     number of addresses
    u32 body_len  bytes of body that follow
    body:
      RAW    count × u32 addresses
      DELTA  count LEB128 varints: the first address, then each gap to the previous (≥ 1)
      BITMAP u32 base, u32 span, ceil(span/8) bytes; bit i (LSB first in each byte) set means
             address base + i is in the set; unused trailing bits are 0

A 1 Mi-device chip needs at most 3 varint bytes per address (gaps < 2^21), so a pulsed device
(address + u8 count) costs at most 4 bytes; dense blocks cost 1 byte (DELTA) or 1/8 (BITMAP).

An *address block* (MATVEC) is an ordered (m, n) matrix of addresses::

    LIST    m*n × u32 addresses, row-major
    AFFINE  u32 base, i32 row_stride, i32 col_stride: address[i, j] = base + i*rs + j*cs
"""
from __future__ import annotations

import enum
import struct
from typing import Optional, Tuple

import numpy as np

from firmware_interface.protocol import NackCode, PayloadError

SET_HEADER = struct.Struct("<BII")
BITMAP_HEAD = struct.Struct("<II")
AFFINE = struct.Struct("<Iii")
_U32_LIMIT = 1 << 32
_MAX_VARINT_BYTES = 5  # a uint32 needs at most 5 groups of 7 bits
_MAX_BITMAP_SPAN = 1 << 28  # a 32 MiB bitmap; the automatic choice never comes near it
#: Most addresses one MATVEC block may name: what a LIST block fills the codec's largest
#: payload with (64 MiB / 4). An AFFINE block is 12 bytes whatever its size, so without this a
#: 20-byte frame could ask the receiver to build billions of addresses.
MAX_BLOCK_ELEMENTS = 1 << 24


class AddressMode(enum.IntEnum):
    RAW = 0
    DELTA = 1
    BITMAP = 2


class BlockMode(enum.IntEnum):
    LIST = 0
    AFFINE = 1


# --- LEB128 varints, vectorised -----------------------------------------------------------
#: v needs k+1 bytes exactly when _VARINT_LIMITS[k-1] <= v < _VARINT_LIMITS[k].
_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes each value takes as an unsigned LEB128 varint."""
    v = np.asarray(values, dtype=np.uint64)
    return np.searchsorted(_VARINT_LIMITS, v, side="right") + 1


def _varint_pack(v: np.ndarray, sizes: np.ndarray) -> bytes:
    """LEB128 bytes of uint64 values whose sizes are known: one (n, max size) table of 7-bit
    groups, kept where the group exists (row-major order is the wire order)."""
    width = int(sizes.max())
    k = np.arange(width)
    groups = ((v[:, None] >> (7 * k).astype(np.uint64)) & np.uint64(0x7F)).astype(np.uint8)
    groups[k[None, :] + 1 < sizes[:, None]] |= 0x80
    return groups[k[None, :] < sizes[:, None]].tobytes()


def varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value, concatenated (shortest form)."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if v.size == 0:
        return b""
    return _varint_pack(v, varint_sizes(v))


def varint_decode(data: bytes, count: int) -> np.ndarray:
    """Decode exactly `count` uint32 varints filling `data`; PayloadError otherwise."""
    b = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if b.size:
            raise PayloadError(NackCode.BAD_LENGTH, "varint body has bytes but count is 0")
        return np.zeros(0, dtype=np.uint64)
    last = b < 0x80
    ends = last.nonzero()[0]
    if ends.size != count or not last[-1]:
        raise PayloadError(NackCode.BAD_LENGTH,
                           f"varint body holds {ends.size} values, count says {count}")
    if ends.size == b.size:  # every varint is one byte (dense address sets)
        return b.astype(np.uint64)
    # Byte i belongs to varint owner[i] = (ends before i); its group index is i - start.
    owner = np.cumsum(last) - last
    starts = np.empty_like(ends)
    starts[0] = 0
    np.add(ends[:-1], 1, out=starts[1:])
    group = np.arange(b.size) - starts[owner]
    if group.max() >= _MAX_VARINT_BYTES:
        raise PayloadError(NackCode.BAD_PAYLOAD, "varint longer than 5 bytes")
    if not b[ends[ends > starts]].all():
        raise PayloadError(NackCode.BAD_PAYLOAD, "varint not in its shortest form")
    parts = (b & 0x7F).astype(np.uint64) << (7 * group).astype(np.uint64)
    values = np.bitwise_or.reduceat(parts, starts)
    if np.any(values >= np.uint64(_U32_LIMIT)):
        raise PayloadError(NackCode.ADDRESS_OUT_OF_RANGE, "varint value above uint32")
    return values


# --- address sets ---------------------------------------------------------------------------
#: Sets up to this size are coded with plain int arithmetic: a training step sends a handful
#: of addresses, where the dozen numpy calls of the vectorised path cost ~10x more. Anything
#: unusual (errors included) takes the vectorised path, so both give the same bytes/errors.
SMALL_SET = 48


def _small_encode(addresses: np.ndarray) -> Optional[bytes]:
    """encode_address_set(addresses) for a small, valid set whose smallest encoding is RAW or
    DELTA; None where the vectorised path must decide."""
    if not (isinstance(addresses, np.ndarray) and addresses.ndim == 1
            and 0 < addresses.size <= SMALL_SET and addresses.dtype.kind in "ui"):
        return None
    vals = addresses.tolist()
    if vals[0] < 0 or vals[-1] >= _U32_LIMIT:
        return None
    groups = bytearray()
    prev = None
    for v in vals:
        g = v if prev is None else v - prev
        if prev is not None and g <= 0:
            return None
        prev = v
        while g >= 0x80:
            groups.append((g & 0x7F) | 0x80)
            g >>= 7
        groups.append(g)
    n = len(vals)
    sizes = {AddressMode.RAW: 4 * n, AddressMode.DELTA: len(groups),
             AddressMode.BITMAP: BITMAP_HEAD.size + (vals[-1] - vals[0] + 1 + 7) // 8}
    mode = min(sizes, key=lambda m: (sizes[m], int(m)))
    if mode is AddressMode.BITMAP:
        return None
    body = struct.pack(f"<{n}I", *vals) if mode is AddressMode.RAW else bytes(groups)
    return SET_HEADER.pack(int(mode), n, len(body)) + body


def _small_delta_decode(body: bytes, count: int) -> Optional[np.ndarray]:
    """The addresses of a small, valid DELTA body; None where the vectorised path must
    decide (and name the error)."""
    if not 0 < count <= SMALL_SET or len(body) > _MAX_VARINT_BYTES * count:
        return None
    out = []
    addr = -1
    v = shift = 0
    for byte in body:
        v |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift >= 7 * _MAX_VARINT_BYTES:
                return None
            continue
        if (shift and not byte) or (addr >= 0 and v == 0):
            return None   # not the shortest form, or a repeated address
        addr = v if addr < 0 else addr + v
        out.append(addr)
        v = shift = 0
    if shift or len(out) != count or addr >= _U32_LIMIT:
        return None
    return np.array(out, dtype=np.uint32)


def _ascending_gaps(addresses: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(addresses as int64, gaps: the first address then each difference); ValueError unless
    a strictly ascending 1-D set of uint32 values."""
    a = np.asarray(addresses)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError("an address set is a 1-D integer array")
    a = a.astype(np.int64)
    gaps = np.empty_like(a)
    if a.size:
        gaps[0] = a[0]
        np.subtract(a[1:], a[:-1], out=gaps[1:])
        if a[0] < 0 or a[-1] >= _U32_LIMIT or (a.size > 1 and gaps[1:].min() <= 0):
            if a.min() < 0 or a.max() >= _U32_LIMIT:
                raise ValueError("addresses must fit in uint32")
            raise ValueError("an address set must be strictly ascending (sort and "
                             "deduplicate)")
    return a, gaps


def _check_ascending(addresses: np.ndarray) -> np.ndarray:
    return _ascending_gaps(addresses)[0].astype(np.uint32)


def _set_sizes(a: np.ndarray, gaps: np.ndarray,
               delta_sizes: Optional[np.ndarray]) -> dict:
    sizes = {AddressMode.RAW: 4 * a.size}
    if a.size:
        assert delta_sizes is not None
        sizes[AddressMode.DELTA] = int(delta_sizes.sum())
        sizes[AddressMode.BITMAP] = BITMAP_HEAD.size + (int(a[-1] - a[0]) + 1 + 7) // 8
    return sizes


def address_set_sizes(addresses: np.ndarray) -> dict:
    """Body bytes of each encoding of an ascending address set (the encoder takes the least)."""
    a = np.asarray(addresses, dtype=np.int64)
    gaps = np.diff(a, prepend=0)
    return _set_sizes(a, gaps, varint_sizes(gaps) if a.size else None)


def encode_address_set(addresses: np.ndarray, mode: Optional[AddressMode] = None) -> bytes:
    """Encode a strictly ascending address set, in `mode` or the smallest encoding."""
    if mode is None:
        small = _small_encode(addresses)
        if small is not None:
            return small
    a, gaps = _ascending_gaps(addresses)
    delta_sizes = varint_sizes(gaps) if a.size and mode in (None, AddressMode.DELTA) else None
    if mode is None:
        sizes = _set_sizes(a, gaps, delta_sizes)
        mode = min(sizes, key=lambda m: (sizes[m], int(m)))
    mode = AddressMode(mode)
    if mode is AddressMode.RAW:
        body = a.astype("<u4").tobytes()
    elif mode is AddressMode.DELTA:
        body = b"" if a.size == 0 else _varint_pack(gaps.astype(np.uint64), delta_sizes)
    else:
        if a.size == 0:
            body = BITMAP_HEAD.pack(0, 0)
        else:
            base, span = int(a[0]), int(a[-1]) - int(a[0]) + 1
            if span > _MAX_BITMAP_SPAN:
                raise ValueError(f"BITMAP span {span} too large; use DELTA")
            bits = np.zeros(span, dtype=np.uint8)
            bits[a - base] = 1
            body = BITMAP_HEAD.pack(base, span) + np.packbits(bits, bitorder="little").tobytes()
    return SET_HEADER.pack(int(mode), int(a.size), len(body)) + body


def decode_address_set(buf: bytes, offset: int = 0) -> Tuple[np.ndarray, int]:
    """Decode an address set at `offset`; returns (uint32 addresses ascending, next offset)."""
    if len(buf) - offset < SET_HEADER.size:
        raise PayloadError(NackCode.BAD_LENGTH, "payload too short for an address set header")
    mode, count, body_len = SET_HEADER.unpack_from(buf, offset)
    start = offset + SET_HEADER.size
    end = start + body_len
    if end > len(buf):
        raise PayloadError(NackCode.BAD_LENGTH,
                           f"address set body of {body_len} bytes overruns the payload")
    body = bytes(buf[start:end])
    if mode == AddressMode.RAW:
        if body_len != 4 * count:
            raise PayloadError(NackCode.BAD_LENGTH,
                               f"RAW address set of {count} needs {4 * count} bytes, "
                               f"has {body_len}")
        a = np.frombuffer(body, dtype="<u4").astype(np.int64)
        if a.size > 1:
            d = np.diff(a)
            if np.any(d == 0):
                raise PayloadError(NackCode.DUPLICATE_ADDRESS, "address repeated in a batch",
                                   np.unique(a[1:][d == 0]))
            if np.any(d < 0):
                raise PayloadError(NackCode.BAD_PAYLOAD, "RAW addresses not ascending")
    elif mode == AddressMode.DELTA:
        small = _small_delta_decode(body, count)
        if small is not None:
            return small, end
        gaps = varint_decode(body, count).astype(np.int64)
        a = np.cumsum(gaps)
        if a.size > 1 and np.any(gaps[1:] == 0):
            raise PayloadError(NackCode.DUPLICATE_ADDRESS, "address repeated in a batch",
                               np.unique(a[1:][gaps[1:] == 0]))
        if a.size and a[-1] >= _U32_LIMIT:
            raise PayloadError(NackCode.ADDRESS_OUT_OF_RANGE, "address above uint32",
                               a[a >= _U32_LIMIT][:16])
    elif mode == AddressMode.BITMAP:
        if body_len < BITMAP_HEAD.size:
            raise PayloadError(NackCode.BAD_LENGTH, "BITMAP body shorter than its header")
        base, span = BITMAP_HEAD.unpack_from(body)
        if body_len != BITMAP_HEAD.size + (span + 7) // 8:
            raise PayloadError(NackCode.BAD_LENGTH,
                               f"BITMAP of span {span} needs {(span + 7) // 8} bytes")
        bits = np.unpackbits(np.frombuffer(body, np.uint8, offset=BITMAP_HEAD.size),
                             bitorder="little")
        if np.any(bits[span:]):
            raise PayloadError(NackCode.BAD_PAYLOAD, "BITMAP padding bits not zero")
        a = base + np.flatnonzero(bits[:span]).astype(np.int64)
        if a.size != count:
            raise PayloadError(NackCode.BAD_LENGTH,
                               f"BITMAP has {a.size} bits set, count says {count}")
        if a.size and a[-1] >= _U32_LIMIT:
            raise PayloadError(NackCode.ADDRESS_OUT_OF_RANGE, "address above uint32",
                               a[a >= _U32_LIMIT][:16])
    else:
        raise PayloadError(NackCode.BAD_PAYLOAD, f"unknown address set mode {mode}")
    return a.astype(np.uint32), end


# --- address blocks (MATVEC) ------------------------------------------------------------------
def affine_params(block: np.ndarray) -> Optional[Tuple[int, int, int]]:
    """(base, row_stride, col_stride) if the block is an affine grid, else None."""
    b = np.asarray(block, dtype=np.int64)
    m, n = b.shape
    if m == 0 or n == 0:
        return None
    base = int(b[0, 0])
    rs = int(b[1, 0] - b[0, 0]) if m > 1 else 0
    cs = int(b[0, 1] - b[0, 0]) if n > 1 else 0
    if not (-(1 << 31) <= rs < (1 << 31) and -(1 << 31) <= cs < (1 << 31)):
        return None
    grid = base + np.arange(m, dtype=np.int64)[:, None] * rs \
        + np.arange(n, dtype=np.int64)[None, :] * cs
    return (base, rs, cs) if np.array_equal(grid, b) else None


def encode_block_body(block: np.ndarray) -> Tuple[BlockMode, bytes]:
    """Smallest encoding of an (m, n) address block: AFFINE where it is a grid, else LIST."""
    b = np.asarray(block)
    params = affine_params(b)
    if params is not None:
        return BlockMode.AFFINE, AFFINE.pack(*params)
    return BlockMode.LIST, np.ascontiguousarray(b, dtype="<u4").tobytes()


def block_body_size(mode: int, m: int, n: int) -> int:
    """Bytes of a block body; PayloadError for an unknown mode or a block above
    MAX_BLOCK_ELEMENTS addresses."""
    if m * n > MAX_BLOCK_ELEMENTS:
        raise PayloadError(NackCode.BAD_PAYLOAD, f"address block of {m} x {n} exceeds "
                                                 f"{MAX_BLOCK_ELEMENTS} addresses")
    if mode == BlockMode.AFFINE:
        return AFFINE.size
    if mode == BlockMode.LIST:
        return 4 * m * n
    raise PayloadError(NackCode.BAD_PAYLOAD, f"unknown address block mode {mode}")


def decode_block_body(mode: int, m: int, n: int, body: bytes) -> np.ndarray:
    """(m, n) uint32 addresses of a block body; PayloadError where an address leaves uint32."""
    if mode == BlockMode.LIST:
        return np.frombuffer(body, dtype="<u4").astype(np.uint32).reshape(m, n)
    if mode != BlockMode.AFFINE:
        raise PayloadError(NackCode.BAD_PAYLOAD, f"unknown address block mode {mode}")
    base, rs, cs = AFFINE.unpack(body)
    if m == 0 or n == 0:
        raise PayloadError(NackCode.BAD_PAYLOAD, "AFFINE block must not be empty")
    if m * n > MAX_BLOCK_ELEMENTS:
        raise PayloadError(NackCode.BAD_PAYLOAD, f"address block of {m} x {n} exceeds "
                                                 f"{MAX_BLOCK_ELEMENTS} addresses")
    # Affine, so the extremes are at the corners: check those, then build the grid in uint32
    # (modular sums are exact once every address is known to fit), 4 bytes per address.
    corners = [base + i * rs + j * cs for i in (0, m - 1) for j in (0, n - 1)]
    if min(corners) < 0 or max(corners) >= _U32_LIMIT:
        rows = base + np.arange(m, dtype=np.int64)[:, None] * rs
        bad_rows = rows[:16] + np.arange(min(n, 16), dtype=np.int64)[None, :] * cs
        bad = bad_rows[(bad_rows < 0) | (bad_rows >= _U32_LIMIT)][:16]
        raise PayloadError(NackCode.ADDRESS_OUT_OF_RANGE, "AFFINE block leaves uint32",
                           bad if bad.size else np.array(
                               [c for c in corners if not 0 <= c < _U32_LIMIT][:16]))
    rows32 = ((base + np.arange(m, dtype=np.int64) * rs) & 0xFFFFFFFF).astype(np.uint32)
    cols32 = ((np.arange(n, dtype=np.int64) * cs) & 0xFFFFFFFF).astype(np.uint32)
    return rows32[:, None] + cols32[None, :]
