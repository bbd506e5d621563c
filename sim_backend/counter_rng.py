"""Counter-based random numbers: each draw is a pure function of its key.

The simulated chip draws every random number from (seed, device address, that device's event
index, stream tag). Nothing depends on the order devices were visited in or on how a batch was
split, so an emulator run, a retried command or a resumed run reproduces an in-process run bit
for bit. The mixer is SplitMix64's finaliser, vectorised over uint64 arrays.
"""
from __future__ import annotations

import enum

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S32, _S11 = (np.uint64(s) for s in (30, 27, 31, 32, 11))
_TWO_PI = 2.0 * np.pi
_INV_2_32 = 1.0 / 2.0**32


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
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _mix64_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (for per-stream constants)."""
    mask = 0xFFFFFFFFFFFFFFFF
    z &= mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def stream_key(seed: int, stream: Stream) -> np.uint64:
    """The constant that separates (seed, stream) pairs."""
    return np.uint64(_mix64_int((seed * 0x9E3779B97F4A7C15 + int(stream)) & 0xFFFFFFFFFFFFFFFF))


def hash_key(seed: int, stream: Stream, addresses: np.ndarray,
             counter: np.ndarray | int = 0) -> np.ndarray:
    """64-bit hash of (seed, stream, address, counter), vectorised over addresses/counter."""
    h = mix64(np.asarray(addresses, dtype=np.uint64) ^ stream_key(seed, stream))
    c = np.asarray(counter, dtype=np.uint64)
    return mix64(h + (c * _GOLDEN if c.ndim else np.uint64((int(c) * 0x9E3779B97F4A7C15)
                                                           & 0xFFFFFFFFFFFFFFFF)))


def uniform(h: np.ndarray) -> np.ndarray:
    """Uniform in (0, 1) from the high 32 bits of a hash, float64."""
    return ((h >> _S32).astype(np.float64) + 0.5) * _INV_2_32


def normal(h: np.ndarray) -> np.ndarray:
    """Standard normal from one 64-bit hash (Box-Muller on its two 32-bit halves), float64."""
    u1 = ((h >> _S32).astype(np.float64) + 0.5) * _INV_2_32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * _INV_2_32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)
