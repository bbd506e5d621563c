"""What the page shows of the conductances: G+/G- histograms per layer, and the chip map.

The map draws the chip as its arrays stacked vertically, one pixel per *region* of devices
(the mean conductance of the mapped devices in it), the mapped blocks of each layout key as
rectangles, and the devices known to be bad as marks. Layout keys are whatever the trainer
named them (`layer0.plus`, `conv1.weight.minus`, ...): a layer is a key without its
`.plus` / `.minus` suffix, and a key with neither suffix is a layer of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

HIST_BINS = 60
#: At most this many region pixels per side of the map.
MAP_MAX_COLS = 256
MAP_MAX_ROWS = 128
#: A key whose addresses form more runs than this is drawn as the regions it occupies.
MAX_RUNS_PER_KEY = 2048
#: At most this many bad devices are drawn one by one (more: counted per region).
MAX_BAD_MARKS = 20000


@dataclass(frozen=True)
class LayerGroup:
    """One layer of the layout: slices of the layout-order conductance vector."""

    name: str
    plus: Optional[slice]
    minus: Optional[slice]
    other: Optional[slice] = None   # a key with no .plus/.minus suffix


@dataclass(frozen=True)
class LayerHistogram:
    name: str
    edges: np.ndarray           # HIST_BINS + 1 edges, µS
    plus: np.ndarray            # devices per bin (G+, or the key's devices for `other`)
    minus: np.ndarray           # devices per bin (G-), zeros when the layer has none
    devices: int
    unread: int                 # devices with no conductance known yet (NaN)


@dataclass(frozen=True)
class Geometry2D:
    arrays: int
    rows: int
    cols: int

    @property
    def total_rows(self) -> int:
        return self.arrays * self.rows

    @property
    def n_devices(self) -> int:
        return self.arrays * self.rows * self.cols


@dataclass(frozen=True)
class Blocks:
    """Rectangles in device coordinates (x: column, y: array * rows + row), one per run of
    consecutive addresses (split at row ends), labelled by layout key."""

    key: List[str]
    x0: np.ndarray
    x1: np.ndarray
    y0: np.ndarray
    y1: np.ndarray


@dataclass(frozen=True)
class MapGrid:
    """The region grid: region (i, j) holds rows i*rh..(i+1)*rh-1 and columns j*rw..."""

    geometry: Geometry2D
    rh: int
    rw: int

    @property
    def shape(self) -> Tuple[int, int]:
        return (math.ceil(self.geometry.total_rows / self.rh),
                math.ceil(self.geometry.cols / self.rw))

    def region_of(self, addresses: np.ndarray) -> np.ndarray:
        a = np.asarray(addresses, dtype=np.int64)
        row, col = a // self.geometry.cols, a % self.geometry.cols
        return (row // self.rh) * self.shape[1] + col // self.rw


# --- layers and histograms ------------------------------------------------------------------
def layer_groups(layout: Mapping[str, np.ndarray]) -> List[LayerGroup]:
    """Layers of the layout, in layout order, with their slices of the layout order."""
    pos = 0
    found: Dict[str, Dict[str, slice]] = {}
    for key, a in layout.items():
        n = int(np.asarray(a).size)
        sl = slice(pos, pos + n)
        pos += n
        for suffix in ("plus", "minus"):
            if key.endswith("." + suffix):
                found.setdefault(key[: -len(suffix) - 1], {})[suffix] = sl
                break
        else:
            found.setdefault(key, {})["other"] = sl
    return [LayerGroup(name, d.get("plus"), d.get("minus"), d.get("other"))
            for name, d in found.items()]


def layer_histograms(g: np.ndarray, groups: Sequence[LayerGroup], g_min: float,
                     g_max: float, bins: int = HIST_BINS) -> List[LayerHistogram]:
    """Devices per conductance bin, G+ and G- apart, for each layer (NaN: never read)."""
    edges = np.linspace(g_min, g_max, bins + 1)
    out = []
    for grp in groups:
        parts = {}
        for name in ("plus", "minus", "other"):
            sl = getattr(grp, name)
            parts[name] = g[sl] if sl is not None else np.zeros(0, g.dtype)
        first = parts["plus"] if grp.other is None else parts["other"]
        values = np.concatenate([first, parts["minus"]])
        unread = int(np.isnan(values).sum())
        out.append(LayerHistogram(grp.name, edges, _hist(first, edges),
                                  _hist(parts["minus"], edges), int(values.size), unread))
    return out


def _hist(v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    v = v[np.isfinite(v)]
    # values outside the range go to the end bins: a histogram must count every device
    return np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)[0]


# --- the chip map ---------------------------------------------------------------------------
def map_grid(geometry: Geometry2D) -> MapGrid:
    return MapGrid(geometry, max(1, math.ceil(geometry.total_rows / MAP_MAX_ROWS)),
                   max(1, math.ceil(geometry.cols / MAP_MAX_COLS)))


def region_means(grid: MapGrid, addresses: np.ndarray, g: np.ndarray,
                 lut: Optional[np.ndarray] = None) -> np.ndarray:
    """Mean conductance of the mapped, read devices in each region (NaN: none), shaped like
    the grid. `lut` is `grid.region_of(addresses)`, precomputed by a caller that repeats."""
    region = grid.region_of(addresses) if lut is None else lut
    ok = np.isfinite(g)
    n = grid.shape[0] * grid.shape[1]
    s = np.bincount(region[ok], g[ok].astype(np.float64), minlength=n)
    c = np.bincount(region[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan).reshape(grid.shape)


def address_runs(addresses: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(first, last) of each run of consecutive addresses, after sorting (a layout names
    each device once)."""
    a = np.sort(np.asarray(addresses, dtype=np.int64))
    if not a.size:
        return a, a
    brk = np.flatnonzero(np.diff(a) != 1)
    return a[np.concatenate([[0], brk + 1])], a[np.concatenate([brk, [a.size - 1]])]


def runs_to_rects(first: np.ndarray, last: np.ndarray, cols: int) -> Tuple[np.ndarray, ...]:
    """Rectangles (x0, x1, y0, y1), half-open, covering each run exactly: the run's part of
    its first row, the whole rows between, its part of its last row."""
    r0, c0 = first // cols, first % cols
    r1, c1 = last // cols, last % cols
    one = r0 == r1
    x0 = [c0[one]]
    x1 = [c1[one] + 1]
    y0 = [r0[one]]
    y1 = [r0[one] + 1]
    m = ~one
    # first row, from c0 to the end
    x0.append(c0[m]); x1.append(np.full(m.sum(), cols)); y0.append(r0[m]); y1.append(r0[m] + 1)
    mid = m & (r1 > r0 + 1)
    x0.append(np.zeros(mid.sum(), np.int64)); x1.append(np.full(mid.sum(), cols))
    y0.append(r0[mid] + 1); y1.append(r1[mid])
    x0.append(np.zeros(m.sum(), np.int64)); x1.append(c1[m] + 1)
    y0.append(r1[m]); y1.append(r1[m] + 1)
    return tuple(np.concatenate(v).astype(np.int64) for v in (x0, x1, y0, y1))


def layout_blocks(layout: Mapping[str, np.ndarray], grid: MapGrid) -> Blocks:
    """The mapped blocks of every layout key (regions occupied, for a key too scattered to
    draw run by run)."""
    cols = grid.geometry.cols
    keys: List[str] = []
    parts: List[Tuple[np.ndarray, ...]] = []
    for key, a in layout.items():
        first, last = address_runs(np.asarray(a).ravel())
        if first.size <= MAX_RUNS_PER_KEY:
            rect = runs_to_rects(first, last, cols)
        else:
            reg = np.unique(grid.region_of(np.asarray(a).ravel()))
            ri, rj = reg // grid.shape[1], reg % grid.shape[1]
            rect = (rj * grid.rw, np.minimum((rj + 1) * grid.rw, cols), ri * grid.rh,
                    np.minimum((ri + 1) * grid.rh, grid.geometry.total_rows))
        keys += [key] * rect[0].size
        parts.append(rect)
    if not parts:
        z = np.zeros(0, np.int64)
        return Blocks([], z, z, z, z)
    return Blocks(keys, *(np.concatenate([p[i] for p in parts]) for i in range(4)))


def bad_marks(bad: np.ndarray, grid: MapGrid) -> Dict[str, np.ndarray]:
    """Where to mark the known-bad devices: one mark per device (x, y at its centre), or,
    past MAX_BAD_MARKS, one per region with the count of bad devices in it."""
    b = np.unique(np.asarray(bad, dtype=np.int64))
    b = b[(b >= 0) & (b < grid.geometry.n_devices)]
    cols = grid.geometry.cols
    if b.size <= MAX_BAD_MARKS:
        return {"x": b % cols + 0.5, "y": b // cols + 0.5, "address": b,
                "count": np.ones(b.size, np.int64)}
    reg, count = np.unique(grid.region_of(b), return_counts=True)
    ri, rj = reg // grid.shape[1], reg % grid.shape[1]
    return {"x": (rj + 0.5) * grid.rw, "y": (ri + 0.5) * grid.rh, "address": reg,
            "count": count}
