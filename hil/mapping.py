"""Layer → device mapping: each weight is a differential pair (G+, G-) of chip devices.

Layer l's weights (with the bias as an extra input row) form an (n_in + 1, n_out) matrix,
stored input-major so that the rows of the active inputs of an example are contiguous. The
allocator hands out flat addresses from `start_address` upward, skipping known-bad devices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from drivers.errors import ConfigError
from drivers.geometry import ADDRESS_DTYPE, Geometry


@dataclass(frozen=True)
class LayerMap:
    """Device addresses of one layer: plus[i, j] and minus[i, j] hold weight (input i, out j)."""

    index: int
    plus: np.ndarray    # uint32 (n_in + 1, n_out)
    minus: np.ndarray   # uint32 (n_in + 1, n_out)

    @property
    def shape(self) -> Tuple[int, int]:
        return self.plus.shape  # type: ignore[return-value]


@dataclass(frozen=True)
class Mapping:
    layers: List[LayerMap]

    @property
    def addresses(self) -> np.ndarray:
        """Every mapped device, in layout order (layer, plus then minus, row-major)."""
        return np.concatenate([a.ravel() for lm in self.layers for a in (lm.plus, lm.minus)])

    @property
    def n_devices(self) -> int:
        return sum(2 * lm.plus.size for lm in self.layers)

    def layout(self) -> Dict[str, np.ndarray]:
        """Named address arrays for the run log (same order as `addresses`)."""
        out: Dict[str, np.ndarray] = {}
        for lm in self.layers:
            out[f"layer{lm.index}.plus"] = lm.plus
            out[f"layer{lm.index}.minus"] = lm.minus
        return out

    def locate(self, addresses: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(layer, sign (+1/-1), flat weight index) of each mapped address; -1 layer if not."""
        addr = np.asarray(addresses, dtype=np.int64)
        all_addr = self.addresses.astype(np.int64)
        order = np.argsort(all_addr, kind="stable")
        pos = np.searchsorted(all_addr, addr, sorter=order)
        pos = np.minimum(pos, all_addr.size - 1)
        found = all_addr[order[pos]] == addr
        slot = order[pos]
        layer = np.full(addr.shape, -1, dtype=np.int64)
        sign = np.zeros(addr.shape, dtype=np.int64)
        flat = np.zeros(addr.shape, dtype=np.int64)
        base = 0
        for lm in self.layers:
            n = lm.plus.size
            for s, off in ((1, 0), (-1, n)):
                sel = found & (slot >= base + off) & (slot < base + off + n)
                layer[sel], sign[sel], flat[sel] = lm.index, s, slot[sel] - base - off
            base += 2 * n
        return layer, sign, flat


def map_layers(sizes: Sequence[int], geometry: Geometry, start_address: int = 0,
               bad_devices: Iterable[int] = ()) -> Mapping:
    """Allocate G+/G- blocks for a network with layer sizes `sizes` (biases included)."""
    shapes = [(n_in + 1, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    need = sum(2 * a * b for a, b in shapes)
    bad = np.unique(np.asarray(list(bad_devices), dtype=np.int64))
    if bad.size and (bad.min() < 0 or bad.max() >= geometry.n_devices):
        raise ConfigError("bad device address outside the chip", key="mapping.bad_devices")
    free = np.arange(start_address, geometry.n_devices, dtype=np.int64)
    if bad.size:
        free = free[~np.isin(free, bad, assume_unique=True)]
    if free.size < need:
        raise ConfigError(f"network needs {need} devices, the chip has {free.size} usable "
                          f"from address {start_address}", key="network.layers")
    layers, pos = [], 0
    for i, (a, b) in enumerate(shapes):
        n = a * b
        plus = free[pos:pos + n].astype(ADDRESS_DTYPE).reshape(a, b)
        minus = free[pos + n:pos + 2 * n].astype(ADDRESS_DTYPE).reshape(a, b)
        layers.append(LayerMap(i, plus, minus))
        pos += 2 * n
    return Mapping(layers)


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
