"""Hook arguments checked and packed into the bytes the log and the journal store.

Device addresses become little-endian uint32, pulse counts little-endian uint16; anything
else is one RunLogError naming the hook. The checks run on every command of a run, so they
are tuned for the trainer's usual 1-10 devices: one dtype identity test for the common
case, array.array stores (which overflow outside the type's range) instead of numpy min()
and max() for small arrays.
"""
from __future__ import annotations

import sys
from array import array
from typing import Tuple

import numpy as np

from hil.run_log.schema import RunLogError

U32 = np.dtype("<u4")
U16 = np.dtype("<u2")
F32 = np.dtype("<f4")
#: Up to this many devices, integer arrays are range-checked and packed through
#: array.array: ~0.3 µs against ~2 µs for the numpy min()/max() reductions. Needs a
#: little-endian host with 2- and 4-byte H and I.
SMALL = 256
NATIVE_ARRAY = (sys.byteorder == "little" and array("H").itemsize == 2
                and array("I").itemsize == 4)
#: The dtypes the trainer's addresses and pulse counts come in, for identity tests in the
#: hooks' fast paths (anything else takes the general path, which gives the same bytes).
U32_FAST = np.dtype(np.uint32) if sys.byteorder == "little" else None
I64_FAST = np.dtype(np.int64) if NATIVE_ARRAY else None


def address_bytes(addresses: np.ndarray, hook: str, path: str) -> Tuple[bytes, int]:
    """Device addresses as little-endian uint32 bytes (row-major) and their number, refusing
    anything but integers in 0..2**32-1. The bytes are what is journaled and logged."""
    a = addresses if type(addresses) is np.ndarray else np.asarray(addresses)
    if a.dtype is U32_FAST or a.dtype == U32:   # the usual case: one identity test
        return a.tobytes(), a.size
    k = a.size
    if not k:
        return b"", 0
    kind = a.dtype.kind
    if kind not in "ui":
        raise RunLogError(f"{hook}: addresses must be integers, got {a.dtype}", path=path)
    if k <= SMALL and NATIVE_ARRAY:
        try:
            return array("I", a.ravel().tolist()).tobytes(), k
        except OverflowError:
            pass   # reported below
    if (kind == "i" and a.min() < 0) or (a.dtype.itemsize > 4 and a.max() >= 1 << 32):
        raise RunLogError(f"{hook}: address outside 0..2**32-1", path=path)
    return a.astype(U32).tobytes(), k


def pulse_count_bytes(n_pulses: np.ndarray, k: int, hook: str, path: str) -> bytes:
    """Pulse counts as little-endian uint16 bytes, refusing anything but integers in
    0..65535 and a number of counts other than `k` (the devices of the batch)."""
    n = n_pulses if type(n_pulses) is np.ndarray else np.asarray(n_pulses)
    if n.size != k:
        raise RunLogError(f"{hook}: {k} addresses but {n.size} pulse counts", path=path)
    dt = n.dtype
    if dt == U16:
        return n.tobytes()
    if k <= SMALL and dt.kind in "iu" and NATIVE_ARRAY:
        try:
            return array("H", n.ravel().tolist()).tobytes()
        except OverflowError:
            pass   # reported below
    if k:
        kind = dt.kind
        if kind not in "uif" or n.max() > 65535 or (kind != "u" and n.min() < 0) or \
                (kind == "f" and not np.array_equal(n, np.floor(n))):
            raise RunLogError(f"{hook}: pulse counts must be integers in 0..65535",
                              path=path)
    return n.astype(U16).tobytes()


__all__ = ["F32", "I64_FAST", "NATIVE_ARRAY", "SMALL", "U16", "U32", "U32_FAST",
           "address_bytes", "pulse_count_bytes"]
