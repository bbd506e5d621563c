"""Counter-based random numbers: each draw is a pure function of its key.

The simulated chip draws every random number from (seed, device address, that device's event
index, stream tag). Nothing depends on the order devices were visited in or on how a batch was
split, so an emulator run, a retried command or a resumed run reproduces an in-process run bit
for bit. The mixer is SplitMix64's finaliser, vectorised over uint64 arrays.

A training step draws for a handful of devices, so the cost is numpy's per-call overhead, not
arithmetic: the constants are 0-d arrays (numpy converts those faster than scalars), the
arithmetic works in place on arrays this module made, and `hash_parts` hashes several
(stream, addresses, counters) parts in one pass. None of that changes a single bit.
"""
from __future__ import annotations

import enum
import functools
import sys
from typing import Sequence, Tuple

import numpy as np

from drivers import portable_math

_U64 = np.uint64
_M1 = np.array(0xBF58476D1CE4E5B9, dtype=_U64)
_M2 = np.array(0x94D049BB133111EB, dtype=_U64)
_GOLDEN = np.array(0x9E3779B97F4A7C15, dtype=_U64)
_S30, _S27, _S31 = (np.array(s, dtype=_U64) for s in (30, 27, 31))
_HALF = np.array(0.5)
_MINUS_TWO = np.array(-2.0)
_INV_2_32 = np.array(1.0 / 2.0**32)
#: Row of the low 32-bit word when a uint64 array is viewed as (n, 2) uint32.
_LO = 0 if sys.byteorder == "little" else 1


class Stream(enum.IntEnum):
    """Independent random streams; the tag is part of every key."""

    INIT = 1
    SET = 2
    RESET = 3
    READ = 4
    NU = 5
    D2D = 6
    STUCK = 7


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic, new array).

    Array arithmetic on uint64 wraps silently in numpy, so no errstate guard is needed.
    """
    z = np.asarray(z, dtype=_U64)
    return _mix64_rest(z ^ (z >> _S30))   # the first step makes the new array


def _mix64_inplace(z: np.ndarray) -> np.ndarray:
    """mix64 overwriting `z`, an array this module made (same arithmetic, no temporaries
    beyond the shifts)."""
    z ^= z >> _S30
    return _mix64_rest(z)


def _mix64_rest(z: np.ndarray) -> np.ndarray:
    """mix64 after its first xor-shift, in place."""
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def _mix64_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (for per-stream constants)."""
    mask = 0xFFFFFFFFFFFFFFFF
    z &= mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@functools.lru_cache(maxsize=256)
def stream_key(seed: int, stream: Stream) -> np.uint64:
    """The constant that separates (seed, stream) pairs (cached: it is asked for per call)."""
    return np.uint64(_mix64_int((seed * 0x9E3779B97F4A7C15 + int(stream)) & 0xFFFFFFFFFFFFFFFF))


@functools.lru_cache(maxsize=256)
def _stream_key0(seed: int, stream: Stream) -> np.ndarray:
    """stream_key as a read-only 0-d array (the cheap operand)."""
    k = np.array(stream_key(seed, stream), dtype=_U64)
    k.flags.writeable = False
    return k


def _golden_times(c: int) -> np.ndarray:
    """c * golden, wrapped to 64 bits, as a 0-d array."""
    return np.array((int(c) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, dtype=_U64)


def hash_key(seed: int, stream: Stream, addresses: np.ndarray,
             counter: np.ndarray | int = 0) -> np.ndarray:
    """64-bit hash of (seed, stream, address, counter), vectorised over addresses/counter."""
    h = _mix64_inplace(np.asarray(addresses, dtype=_U64) ^ _stream_key0(seed, stream))
    c = np.asarray(counter, dtype=_U64)
    if not c.ndim:
        h += _golden_times(c)     # (a 0-d h is a numpy scalar: += rebinds, as it must)
    elif c.shape == np.shape(h):
        h += c * _GOLDEN
    else:                         # a counter array that broadcasts h up
        h = h + c * _GOLDEN
    return _mix64_inplace(h)


def hash_parts(seed: int,
               parts: Sequence[Tuple[Stream, np.ndarray, np.ndarray | int]]) -> np.ndarray:
    """hash_key(seed, stream, addresses, counter) of every part, concatenated in order.

    One pass of the mixer over all parts instead of one per part: the same bits, fewer numpy
    calls (what a batch of a few devices costs). Addresses are 1-D non-negative integers; a
    counter is an array of the same length or a scalar."""
    h = np.concatenate([np.bitwise_xor(a, _stream_key0(seed, s), dtype=_U64, casting="unsafe")
                        for s, a, _ in parts])
    _mix64_inplace(h)
    pos = 0
    for _, a, c in parts:
        end = pos + len(a)
        if isinstance(c, np.ndarray) and c.ndim:
            h[pos:end] += np.multiply(c, _GOLDEN, dtype=_U64, casting="unsafe")
        elif c:
            h[pos:end] += _golden_times(c)
        pos = end
    return _mix64_inplace(h)


def uniform(h: np.ndarray) -> np.ndarray:
    """Uniform in (0, 1) from the high 32 bits of a hash, float64."""
    u = np.add(h >> np.array(32, dtype=_U64), _HALF, dtype=np.float64)
    u *= _INV_2_32
    return u


def normal(h: np.ndarray) -> np.ndarray:
    """Standard normal from one 64-bit hash (Box-Muller on its two 32-bit halves), float64.

    u1 = (high half + 1/2)/2^32 gives the radius sqrt(-2 log u1), the low half the angle
    2π(low + 1/2)/2^32; log and cos are drivers.portable_math's, so a draw has the same bits
    on every machine (numpy's np.log/np.cos pick SIMD kernels by CPU feature)."""
    shape = h.shape if isinstance(h, np.ndarray) else np.shape(h)
    h = np.ascontiguousarray(h, dtype=_U64).reshape(-1)
    halves = h.view(np.uint32).reshape(-1, 2)
    u1 = np.add(halves[:, 1 - _LO], _HALF, dtype=np.float64)
    u1 *= _INV_2_32
    r = portable_math.log(u1, check=False)   # u1 in [2^-33, 1): positive and normal
    r *= _MINUS_TWO
    np.sqrt(r, out=r)
    r *= portable_math.cos_2pi_u32(halves[:, _LO])
    return r.reshape(shape) if shape else r[0]
