"""Chip geometry and flat device addresses.

A device is named by one uint32: ``address = (array * rows + row) * cols + col``. Flat
addresses let every batch be a plain numpy array, whatever the chip's layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from drivers.errors import AddressError

ADDRESS_DTYPE = np.uint32


@dataclass(frozen=True)
class Geometry:
    """Arrays × rows (word lines) × cols (bit lines)."""

    arrays: int = 1
    rows: int = 512
    cols: int = 2048

    def __post_init__(self) -> None:
        for name in ("arrays", "rows", "cols"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"geometry.{name} must be a positive integer, got {v!r}")
        if self.n_devices > 2**32:
            raise ValueError("geometry exceeds 2**32 devices, the flat address range")

    @property
    def n_devices(self) -> int:
        return int(self.arrays) * int(self.rows) * int(self.cols)

    def address(self, array: np.ndarray | int, row: np.ndarray | int,
                col: np.ndarray | int) -> np.ndarray:
        """Flat address of (array, row, col), vectorised."""
        a, r, c = (np.asarray(v, dtype=np.int64) for v in (array, row, col))
        if np.any((a < 0) | (a >= self.arrays) | (r < 0) | (r >= self.rows)
                  | (c < 0) | (c >= self.cols)):
            raise AddressError("array/row/col outside the chip geometry "
                               f"{self.arrays}x{self.rows}x{self.cols}")
        return ((a * self.rows + r) * self.cols + c).astype(ADDRESS_DTYPE)

    def unravel(self, addresses: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(array, row, col) of flat addresses, vectorised."""
        addr = self.check(addresses).astype(np.int64)
        col = addr % self.cols
        rest = addr // self.cols
        return rest // self.rows, rest % self.rows, col

    def check(self, addresses: np.ndarray, *, command: str | None = None) -> np.ndarray:
        """Return addresses as a uint32 array, or raise AddressError naming the bad ones."""
        addr = np.asarray(addresses)
        if addr.ndim != 1:
            addr = addr.ravel()
        if not addr.size:
            return addr.astype(ADDRESS_DTYPE, copy=False)
        kind = addr.dtype.kind
        if kind not in "ui":
            raise AddressError(f"addresses must be integers, got dtype {addr.dtype}",
                               command=command)
        n = self.n_devices
        # Two reductions (one for unsigned input) instead of a mask; the mask only on failure.
        if addr.max() >= n or (kind == "i" and addr.min() < 0):
            bad = (addr < 0) | (addr >= n)
            raise AddressError(f"address outside 0..{n - 1}", command=command,
                               devices=addr[bad])
        return addr.astype(ADDRESS_DTYPE, copy=False)


def check_unique(addresses: np.ndarray, *, command: str | None = None) -> None:
    """Raise AddressError if a batch names a device twice (its effect would be ambiguous)."""
    ascending_order(addresses, command=command)


def ascending_order(addresses: np.ndarray, *,
                    command: str | None = None) -> Optional[np.ndarray]:
    """The permutation that sorts a batch (None when it already is strictly ascending, the
    common case, checked in one pass); AddressError if it names a device twice."""
    if addresses.size < 2 or bool(np.logical_and.reduce(addresses[1:] > addresses[:-1],
                                                        axis=None)):
        return None
    order = np.argsort(addresses, kind="stable")
    s = addresses[order]
    dup = s[1:][s[1:] == s[:-1]]
    if dup.size:
        raise AddressError("device repeated within one batch", command=command,
                           devices=np.unique(dup))
    return order
