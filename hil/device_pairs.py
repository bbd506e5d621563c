"""Weight blocks ↔ device pairs: each weight is a differential pair (G+, G-) of chip devices.

A weight block is any array of weights that shares one β: an MLP layer (n_in + 1, n_out)
with its bias row, a convolution kernel (out, in, kh, kw), an LSTM gate matrix. Its weights
are numbered row-major (the flat index of a weight is its position in `block.reshape(-1)`),
so the rows of a block - an MLP's active inputs - are contiguous. The allocator hands out
flat addresses from `start_address` upward, skipping known-bad devices: for each block in
turn its G+ devices, then its G- devices. That is also the layout order in which the run log
stores snapshots (`<name>.plus`, `<name>.minus`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from drivers.errors import ConfigError
from drivers.geometry import ADDRESS_DTYPE, Geometry

#: Block names become run-log layout keys "<name>.plus"; the log groups χ by the text before
#: the first dot, so a name has none (and no "/", which HDF5 reads as a path).
_NAME = re.compile(r"[A-Za-z0-9_\-:\[\]]+")


@dataclass(frozen=True)
class WeightBlock:
    """What a user asks to hold on the chip: a named block of weights and its β (W = β·ΔG)."""

    name: str
    shape: Tuple[int, ...]
    beta: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"block name {self.name!r}: use letters, digits, _ - : [ ] "
                             f"(no '.' or '/': the run log keys devices by '<name>.plus')")
        shape = tuple(int(n) for n in self.shape)
        if not shape or any(n < 1 for n in shape):
            raise ValueError(f"block {self.name!r}: shape {self.shape} has no weights")
        object.__setattr__(self, "shape", shape)
        if not float(self.beta) > 0:
            raise ValueError(f"block {self.name!r}: beta must be > 0, got {self.beta}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class PairBlock:
    """Device addresses of one block: plus[i] and minus[i] hold weight i (any index shape)."""

    name: str
    beta: float
    plus: np.ndarray    # uint32, the block's shape
    minus: np.ndarray   # uint32, the block's shape

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.plus.shape

    @property
    def size(self) -> int:
        return int(self.plus.size)

    def devices(self, flat: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """The device each weight's pulses go to: G+ where positive, else G-."""
        return np.where(positive, self.plus.reshape(-1)[flat], self.minus.reshape(-1)[flat])


@dataclass(frozen=True)
class DevicePairMap:
    """Every block's devices; the order of `blocks` is the layout order."""

    blocks: List[PairBlock]

    @cached_property
    def addresses(self) -> np.ndarray:
        """Every mapped device, in layout order (block, plus then minus, row-major)."""
        return np.concatenate([a.ravel() for b in self.blocks for a in (b.plus, b.minus)])

    @property
    def n_devices(self) -> int:
        return sum(2 * b.size for b in self.blocks)

    @property
    def names(self) -> List[str]:
        return [b.name for b in self.blocks]

    def layout(self) -> Dict[str, np.ndarray]:
        """Named address arrays for the run log (same order as `addresses`)."""
        out: Dict[str, np.ndarray] = {}
        for b in self.blocks:
            out[f"{b.name}.plus"] = b.plus
            out[f"{b.name}.minus"] = b.minus
        return out

    def locate(self, addresses: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(block index, sign (+1/-1), flat weight index) of each address; block -1 where
        the address is not mapped."""
        addr = np.asarray(addresses, dtype=np.int64)
        all_addr = self.addresses.astype(np.int64)
        order = np.argsort(all_addr, kind="stable")
        pos = np.searchsorted(all_addr, addr, sorter=order)
        pos = np.minimum(pos, all_addr.size - 1)
        found = all_addr[order[pos]] == addr
        slot = order[pos]
        block = np.full(addr.shape, -1, dtype=np.int64)
        sign = np.zeros(addr.shape, dtype=np.int64)
        flat = np.zeros(addr.shape, dtype=np.int64)
        base = 0
        for i, b in enumerate(self.blocks):
            n = b.size
            for s, off in ((1, 0), (-1, n)):
                sel = found & (slot >= base + off) & (slot < base + off + n)
                block[sel], sign[sel], flat[sel] = i, s, slot[sel] - base - off
            base += 2 * n
        return block, sign, flat


def allocate_pairs(blocks: Sequence[WeightBlock], geometry: Geometry, start_address: int = 0,
                   bad_devices: Iterable[int] = (), key: str = "network.layers"
                   ) -> DevicePairMap:
    """G+/G- devices for every block, in order; `key` is the config key a ConfigError names
    when the blocks do not fit (the error also names the first block that does not)."""
    names = [b.name for b in blocks]
    if not blocks:
        raise ConfigError("no weight blocks to map", key=key)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"block name {dup[0]!r} is used twice", key=key)
    sizes = [b.size for b in blocks]
    need = 2 * sum(sizes)
    bad = np.unique(np.asarray(list(bad_devices), dtype=np.int64))
    if bad.size and (bad.min() < 0 or bad.max() >= geometry.n_devices):
        raise ConfigError("bad device address outside the chip", key="mapping.bad_devices")
    free = np.arange(start_address, geometry.n_devices, dtype=np.int64)
    if bad.size:
        free = free[~np.isin(free, bad, assume_unique=True)]
    if free.size < need:
        first = blocks[int(np.searchsorted(np.cumsum(sizes) * 2, free.size, side="right"))]
        raise ConfigError(f"{len(blocks)} weight block(s) need {need} devices, the chip has "
                          f"{free.size} usable from address {start_address}: block "
                          f"{first.name!r} {first.shape} is the first that does not fit",
                          key=key)
    out, pos = [], 0
    for b, n in zip(blocks, sizes):
        plus = free[pos:pos + n].astype(ADDRESS_DTYPE).reshape(b.shape)
        minus = free[pos + n:pos + 2 * n].astype(ADDRESS_DTYPE).reshape(b.shape)
        out.append(PairBlock(b.name, float(b.beta), plus, minus))
        pos += 2 * n
    return DevicePairMap(out)


def load_bad_devices(listed: Sequence[int], path: str | None) -> np.ndarray:
    """Bad-device addresses from the config list plus an optional file (.npy or text)."""
    parts = [np.asarray(listed, dtype=np.int64)]
    if path:
        try:
            parts.append(np.load(path).astype(np.int64).ravel() if path.endswith(".npy")
                         else np.loadtxt(path, dtype=np.int64, ndmin=1))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read bad-device list: {e}",
                              key="mapping.bad_devices_file") from None
    return np.unique(np.concatenate(parts))
