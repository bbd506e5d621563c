"""The snapshots of a run log and what is rebuilt from them: the trainer's state record,
χ, and the host's view of every conductance at any step (the nearest snapshot updated with
every read after it). RunLog (hil.run_log.reader) reads the tables; this is the part of it
that reconstructs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from hil.run_log.records import LogPosition
from hil.run_log.schema import STATE_GROUP, RunLogError
from hil.trainer_state import StateLayout, TrainerState


class SnapshotReader:
    """RunLog's snapshots, state records and conductance reconstruction. It reads what
    RunLog loads at opening (the snapshot table, the read batches, the layout) and its event
    tables through RunLog's own accessors."""

    path: str
    counts: Dict[str, int]
    schema_version: str
    has_positions: bool
    state_layout: Optional[StateLayout]
    chi_layers: List[str]
    addresses: np.ndarray
    layout: Dict[str, Any]
    _f: Any
    _snap: Dict[str, np.ndarray]
    _rb: Dict[str, np.ndarray]
    _chi_shapes: List[Tuple[int, ...]]
    _layout_lut: Optional[np.ndarray]

    if TYPE_CHECKING:   # RunLog's table accessors
        def _read(self, ds: Any, sel: Any) -> np.ndarray:
            ...

        def read_events(self, start_step: Optional[int] = None, stop_step: Optional[int] = None,
                        columns: Any = None) -> Dict[str, np.ndarray]:
            ...

        def _event_range(self, batches: Dict[str, np.ndarray], total: int,
                         start_step: Optional[int], stop_step: Optional[int]) -> Tuple[int, int]:
            ...

    def snapshots(self) -> Dict[str, np.ndarray]:
        """One row per snapshot: step, seq, read_row, pulse_row, time_unix."""
        return dict(self._snap)

    def snapshot_position(self, index: int) -> LogPosition:
        """Where snapshot `index` sits in every table (schema 1.3; RunLogError before)."""
        i = self._snapshot_index(index)
        if not self.has_positions:
            raise RunLogError(f"schema {self.schema_version} does not record where a snapshot "
                              "sits in the tables (1.3 does)", path=self.path)
        s = self._snap
        return LogPosition(int(s["step"][i]), int(s["seq"][i]), int(s["read_batch"][i]),
                           int(s["read_row"][i]), int(s["pulse_batch"][i]),
                           int(s["pulse_row"][i]), int(s["matvec_batch"][i]),
                           int(s["matvec_row"][i]), int(s["step_metric_row"][i]),
                           int(s["epoch_metric_row"][i]))

    def end_position(self) -> LogPosition:
        """The end of the committed log, as a LogPosition."""
        c = self.counts
        return LogPosition(c["last_step"], c["read_batches"] + c["pulse_batches"],
                           c["read_batches"], c["read_events"], c["pulse_batches"],
                           c["pulse_events"], c["matvec_batches"], c["matvec_values"],
                           c["step_metrics"], c["epoch_metrics"])

    @property
    def has_state(self) -> bool:
        """Whether the snapshots hold a trainer state record (schema 1.3, a trainer that
        declared one): what `replay --verify --workers` restarts segments from."""
        return self.state_layout is not None

    def snapshot_has_state(self, index: int) -> bool:
        i = self._snapshot_index(index)
        return self.has_state and bool(self._snap["has_state"][i])

    def snapshot_state(self, index: int) -> TrainerState:
        """The trainer's full state at snapshot `index` (RunLogError when the snapshot holds
        none: a log before schema 1.3, or a snapshot taken without a record)."""
        i = self._snapshot_index(index)
        if not self.snapshot_has_state(i):
            raise RunLogError(f"snapshot {i} holds no trainer state record" + (
                "" if self.has_positions else f" (schema {self.schema_version}; 1.3 logs "
                "hold it)"), path=self.path)
        layout = self.state_layout
        assert layout is not None
        g = self._f[STATE_GROUP]
        values = {fld.name: self._read(g[fld.name], i) for fld in layout.fields}
        return TrainerState(layout, int(self._snap["step"][i]), self.snapshot_g(i),
                            self.snapshot_chi(i), {k: np.asarray(v) for k, v in
                                                   values.items()})

    def _snapshot_index(self, index: int) -> int:
        n = self.counts["snapshots"]
        if not -n <= index < n:
            raise RunLogError(f"no snapshot {index} (the log has {n})", path=self.path)
        return index % n

    def snapshot_g(self, index: int) -> np.ndarray:
        """Conductance of every mapped device in snapshot `index` (layout order)."""
        return self._read(self._f["snapshots/g_us"], self._snapshot_index(index))

    def snapshot_chi(self, index: int) -> Dict[str, np.ndarray]:
        flat = self._read(self._f["snapshots/chi"], self._snapshot_index(index))
        out, pos = {}, 0
        for name, shape in zip(self.chi_layers, self._chi_shapes):
            k = int(np.prod(shape))
            out[name] = flat[pos:pos + k].reshape(shape)
            pos += k
        return out

    def _snapshot_for(self, step: int, end_row: int) -> int:
        s = self._snap
        k1 = int(np.searchsorted(s["read_row"], end_row, "right"))
        k2 = int(np.searchsorted(s["step"], step, "right"))
        return min(k1, k2) - 1

    def _read_end_row(self, step: int) -> int:
        b = int(np.searchsorted(self._rb["step"], step, "right"))
        return int(self._rb["offset"][b]) if b < self._rb["step"].size \
            else self.counts["read_events"]

    def _lut(self, addresses: np.ndarray) -> np.ndarray:
        lut = np.full(int(addresses.max()) + 1 if addresses.size else 0, -1, dtype=np.int32)
        lut[addresses] = np.arange(addresses.size, dtype=np.int32)
        return lut

    def conductance(self, step: int, addresses: Optional[np.ndarray] = None) -> np.ndarray:
        """The host's view of the conductances (µS) after step `step`.

        The nearest snapshot at or before the step, updated with every read after it up to
        and including that step: a device's conductance is the last value read from it.
        `addresses` defaults to every mapped device in layout order; a device never read and
        in no snapshot is NaN. Cost: one bulk read of the read events since the snapshot.
        """
        step = int(step)
        if addresses is None:
            target = self.addresses
            lut = self._layout_lut_get()
        else:
            target = np.asarray(addresses).ravel()
            if target.size and (target.dtype.kind not in "ui" or target.min() < 0):
                raise RunLogError("addresses must be non-negative integers", path=self.path)
            uniq, inv = np.unique(target, return_inverse=True)
            if uniq.size != target.size:
                return self.conductance(step, uniq)[inv]
            lut = self._lut(target)
        n = target.size
        out = np.full(n, np.nan, dtype=np.float32)
        if n == 0:
            return out
        end_row = self._read_end_row(step)
        k = self._snapshot_for(step, end_row)
        start_row = 0
        if k >= 0:
            g = self.snapshot_g(k)
            start_row = int(self._snap["read_row"][k])
            if addresses is None:
                out[:] = g
            else:
                pos = _lookup(self._layout_lut_get(), target)
                ok = pos >= 0
                out[ok] = g[pos[ok]]
        if end_row <= start_row:
            return out
        addr = self._read(self._f["reads/events/address"], slice(start_row, end_row))
        pos = _lookup(lut, addr)
        del addr
        # Last read of each device wins: the largest row index per device (ufunc.at is
        # defined for repeated indices, unlike fancy assignment).
        last = np.full(n, -1, dtype=np.int64)
        hit = pos >= 0
        if hit.all():
            np.maximum.at(last, pos, np.arange(pos.size, dtype=np.int64))
        else:
            rows = np.flatnonzero(hit)
            np.maximum.at(last, pos[rows], rows)
        del pos, hit
        seen = last >= 0
        if seen.any():
            r = last[seen]
            lo, hi = int(r.min()), int(r.max()) + 1
            vals = self._read(self._f["reads/events/value"],
                              slice(start_row + lo, start_row + hi))
            out[seen] = vals[r - lo]
        return out

    def _layout_lut_get(self) -> np.ndarray:
        if self._layout_lut is None:
            self._layout_lut = self._lut(self.addresses)
        return self._layout_lut

    def state(self, step: int) -> Dict[str, np.ndarray]:
        """conductance(step) split and shaped by layout key ('layer0.plus' → (n_in+1, n_out))."""
        g = self.conductance(step)
        out, pos = {}, 0
        for k, a in self.layout.items():
            out[k] = g[pos:pos + a.size].reshape(a.shape)
            pos += a.size
        return out

    def chi(self, step: int) -> Tuple[int, Dict[str, np.ndarray]]:
        """χ from the last snapshot at or before `step` (χ is logged only in snapshots):
        (the snapshot's step, {layer: array})."""
        k = int(np.searchsorted(self._snap["step"], int(step), "right")) - 1
        if k < 0:
            raise RunLogError(f"no snapshot at or before step {step}", path=self.path)
        return int(self._snap["step"][k]), self.snapshot_chi(k)

    def traces(self, addresses: np.ndarray, start_step: Optional[int] = None,
               stop_step: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Every read of the given devices, in time order: step, address, value."""
        ev = self.read_events(start_step, stop_step, ("step", "address"))
        want = np.asarray(addresses).ravel()
        sel = np.flatnonzero(np.isin(ev["address"], want))
        if sel.size:
            r0, _ = self._event_range(self._rb, self.counts["read_events"], start_step,
                                      stop_step)
            vals = self._read(self._f["reads/events/value"],
                              slice(r0 + int(sel[0]), r0 + int(sel[-1]) + 1))
            values = vals[sel - sel[0]]
        else:
            values = np.zeros(0, np.float32)
        return {"step": ev["step"][sel].astype(np.int64), "address": ev["address"][sel],
                "value": values}


def _lookup(lut: np.ndarray, addr: np.ndarray) -> np.ndarray:
    """Position of each address in a lookup table (-1: not there), vectorised."""
    if addr.size and int(addr.max()) < lut.size:
        return lut[addr]
    pos = np.full(addr.shape, -1, dtype=np.int32)
    inside = addr < lut.size
    pos[inside] = lut[addr[inside]]
    return pos
