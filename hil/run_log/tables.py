"""The buffered append-only tables a run log is made of (struct-of-arrays, one 1-D dataset
per column, growing along an unlimited dimension).

Rows are buffered as Python lists and appended in bulk at each commit: a per-event HDF5 call
would cost more than the training step it records, and a list append (~0.1 µs) is cheaper
than a numpy scalar store (~1 µs). A typical step sends one or two commands of 1-10
devices, so the fixed cost per row is what counts.
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from hil.run_log.schema import BATCH_CHUNK, EVENT_CHUNK, NAME_BYTES, SNAPSHOT_CHUNK, Column, \
    RunLogError, filter_kwargs
from hil.trainer_state import StateLayout

_h5s: Any = None   # h5py.h5s, imported at first use (importing hil.run_log stays cheap)


def h5s_module() -> Any:
    """h5py's dataspace module (h5py itself is imported lazily, like everywhere here)."""
    global _h5s
    from h5py import h5s
    _h5s = h5s
    return h5s


def extend(dsid: Any, row: int, data: np.ndarray, width: Optional[int] = None) -> None:
    """Write `data` at `row` of a dataset (h5py DatasetID), growing it to `row + len(data)`
    rows (of `width` columns, for a 2-D dataset; `data` may fill fewer of them).

    Through h5py's low-level calls, with the extent known: the high-level `resize` + slice
    assignment costs ~40 µs more per column, and a commit writes some 25 columns."""
    h5s = _h5s or h5s_module()
    data = np.ascontiguousarray(data)
    n = data.shape[0]
    dsid.set_extent((row + n,) if width is None else (row + n, width))
    fspace = dsid.get_space()
    fspace.select_hyperslab((row,) + (0,) * (data.ndim - 1), data.shape)
    dsid.write(h5s.create_simple(data.shape), fspace, data)


class CommandTable:
    """The two tables of one command type (/reads or /pulses): `batches`, one row per
    command, and `events`, one row per device, both struct-of-arrays and append-only.

    A command is buffered as one Python list: its batch row followed by the bytes of its two
    per-device event columns (`per_device`, in their stored dtypes; the same bytes the
    journal gets, and immutable, so a caller reusing its arrays cannot change what is
    logged). The event columns a command shares by all its devices (step, purpose, kind)
    are its batch row's, repeated `count` times at write. A command thus costs one list
    append, where per-column numpy stores cost ~1 µs each, which dominated the logging of a
    typical 1-10 device step."""

    def __init__(self, group: Any, batch_columns: Sequence[Column],
                 event_columns: Sequence[Column], per_device: Tuple[str, str]) -> None:
        self.batch_columns = tuple(batch_columns)
        self.event_columns = tuple(event_columns)
        bnames = [c.name for c in self.batch_columns]
        nb = len(bnames)
        self.batch_dtypes = [np.dtype(c.dtype) for c in self.batch_columns]
        self.event_dtypes = [np.dtype(c.dtype) for c in self.event_columns]
        #: where each event column comes from: ("device", field) or ("batch", field)
        self.event_source = [("device", nb + per_device.index(c.name))
                             if c.name in per_device else ("batch", bnames.index(c.name))
                             for c in self.event_columns]
        self.count_field = bnames.index("count")
        self.index = {name: i for i, name in enumerate(bnames)}
        self.batch_ds = self._create(group.create_group("batches"), self.batch_columns,
                                     BATCH_CHUNK)
        self.event_ds = self._create(group.create_group("events"), self.event_columns,
                                     EVENT_CHUNK)
        self.batch_ids = [ds.id for ds in self.batch_ds]
        self.event_ids = [ds.id for ds in self.event_ds]
        self.pending: List[list] = []
        self.batch_rows = 0   # on disk
        self.event_rows = 0   # on disk
        self.n = 0            # events buffered

    @staticmethod
    def _create(group: Any, columns: Sequence[Column], chunk: int) -> List[Any]:
        return [group.create_dataset(c.name, shape=(0,), maxshape=(None,), dtype=c.dtype,
                                     chunks=(chunk,), **filter_kwargs(c.filter))
                for c in columns]

    @property
    def event_total(self) -> int:
        return self.event_rows + self.n

    def write(self) -> None:
        """Append the buffered commands to both tables (bulk, one write per column)."""
        rows = self.pending
        if not rows:
            return
        cols = list(zip(*rows))
        r = self.batch_rows
        for dsid, dt, col in zip(self.batch_ids, self.batch_dtypes, cols):
            extend(dsid, r, np.fromiter(col, dt, len(col)))
        n = self.n
        if n:
            counts = np.fromiter(cols[self.count_field], np.int64, len(rows))
            r = self.event_rows
            for dsid, dt, (src, i) in zip(self.event_ids, self.event_dtypes,
                                          self.event_source):
                if src == "device":
                    col = np.frombuffer(b"".join(cols[i]), dtype=dt)
                else:
                    col = np.repeat(np.fromiter(cols[i], dt, len(rows)), counts)
                if col.size != n:
                    raise RunLogError(f"internal error: an event column has {col.size} "
                                      f"buffered rows, expected {n}")
                extend(dsid, r, col)
            self.event_rows = r + n
        self.batch_rows += len(rows)
        self.n = 0
        self.pending = []

    def set_value(self, column: str, row: int, value: Any) -> None:
        """Change one cell of a batch row, in the buffer if it is still there, else on
        disk."""
        i = self.index[column]
        if row >= self.batch_rows:
            self.pending[row - self.batch_rows][i] = value
        else:
            self.batch_ds[i][row] = value


class RowTable:
    """An append-only table with one row per command: rows are kept as Python lists (an
    append costs ~0.1 µs, against ~1 µs per numpy scalar store) and converted at write."""

    def __init__(self, group: Any, columns: Sequence[Column], chunk: int) -> None:
        self.columns = tuple(columns)
        self.dtypes = [np.dtype(c.dtype) for c in self.columns]
        self.datasets = [group.create_dataset(c.name, shape=(0,), maxshape=(None,),
                                              dtype=c.dtype, chunks=(chunk,),
                                              **filter_kwargs(c.filter))
                         for c in self.columns]
        self.pending: List[list] = []
        self.rows = 0

    @property
    def total(self) -> int:
        return self.rows + len(self.pending)

    def write(self) -> None:
        rows = self.pending
        if not rows:
            return
        n, r = len(rows), self.rows
        for ds, dt, col in zip(self.datasets, self.dtypes, zip(*rows)):
            extend(ds.id, r, np.asarray(col, dtype=dt))
        self.rows = r + n
        self.pending = []


class DocumentTable(RowTable):
    """A RowTable whose rows each own a JSON document, stored back to back in the byte
    dataset `doc` of the same group; a row ends with the document's `doc_offset` and
    `doc_length` (the run status, the run events). A byte dataset rather than variable-length
    strings: SWMR cannot grow variable-length data."""

    def __init__(self, group: Any, columns: Sequence[Column], chunk: int) -> None:
        super().__init__(group, columns, chunk)
        self.doc = group.create_dataset("doc", shape=(0,), maxshape=(None,), dtype="u1",
                                        chunks=(4096,))
        self.doc_bytes = 0

    def add(self, row: list, doc: bytes) -> None:
        """Append `row` (every column but the last two) with its document `doc`."""
        off = self.doc_bytes
        self.doc.resize((off + len(doc),))
        self.doc_bytes = off + len(doc)
        if doc:
            self.doc[off:off + len(doc)] = np.frombuffer(doc, dtype=np.uint8)
        self.pending.append(row + [off, len(doc)])


class CodeTable:
    """The names of a code column (purpose tags, event kinds): well-known names have fixed
    codes, another name gets the next free code at first use (0 is never used); the
    dataset (row i names code i + 1) grows at each write. Names are UTF-8, at most `width`
    bytes; codes fit a uint8."""

    def __init__(self, dataset: Any, known: Sequence[str], what: str, path: str) -> None:
        self.dataset = dataset
        self.width = int(dataset.dtype.itemsize)
        #: name -> code; hooks look names up here first (one dict lookup in the usual case)
        self.codes: Dict[str, int] = {name: i + 1 for i, name in enumerate(known)}
        self.what = what
        self.path = path
        self.on_disk = 0

    def code(self, name: str) -> int:
        """The code of `name`, giving it the next free one at first use."""
        code = self.codes.get(name)
        if code is None:
            if not isinstance(name, str) or not name or \
                    len(name.encode("utf-8")) > self.width:
                raise RunLogError(f"{self.what} {name!r} is not a string of 1..{self.width}"
                                  " bytes", path=self.path)
            code = len(self.codes) + 1
            if code > 255:
                raise RunLogError(f"more than 255 distinct {self.what}s", path=self.path)
            self.codes[name] = code
        return code

    def write(self) -> None:
        names = sorted(self.codes, key=self.codes.get)
        if len(names) > self.on_disk:
            self.dataset.resize((len(names),))
            self.dataset[self.on_disk:] = np.array(
                [n.encode("utf-8") for n in names[self.on_disk:]], dtype=f"S{self.width}")
            self.on_disk = len(names)


class MetricsTable:
    """Per-step or per-epoch metrics: a key column and a growable 2-D float64 value table.

    Rows are buffered as Python lists, in runs of rows with the same metric names (every
    step's, in practice), and scattered into the table's columns at write: a row then costs
    a tuple compare and a list append rather than numpy stores."""

    def __init__(self, group: Any, key: str, path: str) -> None:
        self.key = key
        self.path = path
        self.keys = group.create_dataset(key, shape=(0,), maxshape=(None,), dtype="<i8",
                                         chunks=(4096,), **filter_kwargs("gzip"))
        self.values = group.create_dataset(
            "values", shape=(0, 0), maxshape=(None, None), dtype="<f8", chunks=(1024, 8),
            fillvalue=np.nan, **filter_kwargs("gzip"))
        self.names_ds = group.create_dataset("names", shape=(0,), maxshape=(None,),
                                             dtype=f"S{NAME_BYTES}", chunks=(64,))
        self.names: List[str] = []
        self.index: Dict[str, int] = {}
        self.rows = 0
        self.width = 0   # columns of `values` on disk (h5py's .shape costs a query)
        self.names_on_disk = 0
        self.n = 0
        self._keys: List[int] = []
        self._vals: List[List[float]] = []
        #: (first buffered row, column of each value) for each run of rows with equal names
        self._runs: List[Tuple[int, List[int]]] = [(0, [])]
        self._last_names: Tuple[str, ...] = ()
        self._last_cols: List[int] = []

    @property
    def total(self) -> int:
        return self.rows + self.n

    def add(self, key: int, metrics: Mapping[str, Any], what: str) -> None:
        names = tuple(metrics)
        new = names != self._last_names
        if new:
            self._check_names(names, what)
        try:
            vals = list(map(float, metrics.values()))
        except (TypeError, ValueError):
            self._raise_bad_value(key, metrics, what)
            raise   # pragma: no cover - _raise_bad_value always raises
        if new:
            # Validated: only now may new names join the table (a bad row leaves no trace).
            for name in names:
                if name not in self.index:
                    self.index[name] = len(self.names)
                    self.names.append(name)
            self._last_names = names
            self._last_cols = [self.index[name] for name in names]
            self._runs.append((self.n, self._last_cols))
        self._keys.append(key)
        self._vals.append(vals)
        self.n += 1

    def _check_names(self, names: Tuple[Any, ...], what: str) -> None:
        for name in names:
            if not isinstance(name, str) or not name or "\n" in name:
                raise RunLogError(f"{what} metric name {name!r} is not a non-empty string",
                                  path=self.path)
            if name not in self.index and len(name.encode("utf-8")) > NAME_BYTES:
                raise RunLogError(f"{what} metric name {name!r} is longer than "
                                  f"{NAME_BYTES} bytes", path=self.path)

    def _raise_bad_value(self, key: int, metrics: Mapping[str, Any], what: str) -> None:
        for name, v in metrics.items():
            try:
                float(v)
            except (TypeError, ValueError):
                raise RunLogError(f"{what} metric {name!r} at {self.key} {key} is not a "
                                  f"number: {v!r}", path=self.path) from None

    def write(self) -> None:
        ncol = len(self.names)
        if ncol > self.names_on_disk:
            new = [s.encode("utf-8") for s in self.names[self.names_on_disk:]]
            self.names_ds.resize((ncol,))
            self.names_ds[self.names_on_disk:ncol] = np.array(new, dtype=f"S{NAME_BYTES}")
            self.names_on_disk = ncol
        if self.width < ncol:
            self.values.resize((self.rows, ncol))
            self.width = ncol
        n = self.n
        if not n:
            return
        buf = np.full((n, ncol), np.nan)
        ends = [i for i, _ in self._runs[1:]] + [n]
        for (i0, cols), i1 in zip(self._runs, ends):
            if i1 > i0 and cols:
                # Every row of a run has one value per column: flatten, then reshape.
                vals = chain.from_iterable(self._vals[i0:i1])
                buf[i0:i1, cols] = np.fromiter(vals, np.float64, (i1 - i0) * len(cols)) \
                    .reshape(i1 - i0, len(cols))
        r = self.rows
        extend(self.keys.id, r, np.fromiter(self._keys, np.int64, n))
        if ncol:
            extend(self.values.id, r, buf, self.width)
        else:
            self.values.resize((r + n, self.width))
        self.rows = r + n
        self.n = 0
        self._keys = []
        self._vals = []
        self._runs = [(0, self._last_cols)]


class StateTable:
    """The trainer state records of the snapshots (/snapshots/state): one dataset per field
    of the layout the trainer declared, one row per snapshot (a snapshot without a record
    gets a row of zeros, and `has_state` 0 in /snapshots). Created whole at begin(): SWMR
    allows no dataset later. Rows are written at once, like the snapshot's conductances."""

    def __init__(self, group: Any, layout: Optional[StateLayout]) -> None:
        self.layout = layout
        group.attrs["kind"] = layout.kind if layout is not None else ""
        group.attrs["version"] = int(layout.version) if layout is not None else 0
        group.attrs["layout"] = layout.to_json() if layout is not None else ""
        self.datasets: Dict[str, Any] = {}
        for f in (layout.fields if layout is not None else ()):
            size = int(np.prod(f.shape, dtype=np.int64))
            # A chunk holds one snapshot's field, split along its first axis when large.
            if f.shape and size > SNAPSHOT_CHUNK:
                inner = int(np.prod(f.shape[1:], dtype=np.int64)) or 1
                chunks = (1, max(1, SNAPSHOT_CHUNK // inner)) + f.shape[1:]
            else:
                chunks = (1,) + tuple(max(1, n) for n in f.shape) if f.shape else (64,)
            self.datasets[f.name] = group.create_dataset(
                f.name, shape=(0,) + f.shape, maxshape=(None,) + f.shape, dtype=f.dtype,
                chunks=chunks, **filter_kwargs("gzip" if f.shape else None))

    def write(self, row: int, values: Optional[Mapping[str, np.ndarray]]) -> None:
        """Row `row` of every field: `values` (checked against the layout by the caller), or
        zeros when None."""
        for name, ds in self.datasets.items():
            ds.resize((row + 1,) + ds.shape[1:])
            ds[row] = values[name] if values is not None else np.zeros(ds.shape[1:], ds.dtype)


class SnapshotTable:
    """/snapshots: one row per snapshot (where it sits in every table: `rows`, a RowTable
    written at commit), the conductance of every mapped device (`g_us`), χ of every layer
    (`chi`, flat; the layers, sizes and shapes in its attributes) and the trainer's state
    record (`state`, a StateTable). A snapshot's arrays are written at once.

    χ has one layer per layout key prefix ("layer0.plus" → "layer0"), shaped like the
    layer's first key."""

    def __init__(self, group: Any, columns: Sequence[Column],
                 layout: Mapping[str, Tuple[int, ...]], state_layout: Optional[StateLayout],
                 path: str) -> None:
        import json
        self.path = path
        self.n_devices = int(sum(int(np.prod(shape)) for shape in layout.values()))
        self.layers: List[str] = []
        shapes: List[Tuple[int, ...]] = []
        for key, shape in layout.items():
            name = key.split(".", 1)[0]
            if name not in self.layers:
                self.layers.append(name)
                shapes.append(tuple(shape))
        self.sizes = [int(np.prod(s)) for s in shapes]
        n_chi = sum(self.sizes)
        self.rows = RowTable(group, columns, 256)
        self.state = StateTable(group.create_group("state"), state_layout)
        self._g = group.create_dataset(
            "g_us", shape=(0, self.n_devices), maxshape=(None, self.n_devices), dtype="<f4",
            chunks=(1, max(1, min(self.n_devices, SNAPSHOT_CHUNK))), **filter_kwargs("gzip"))
        self._chi = group.create_dataset(
            "chi", shape=(0, n_chi), maxshape=(None, n_chi), dtype="<f4",
            chunks=(1, max(1, min(max(n_chi, 1), SNAPSHOT_CHUNK))), **filter_kwargs("gzip"))
        self._chi.attrs["layers"] = np.array(self.layers, dtype=object)
        self._chi.attrs["sizes"] = np.array(self.sizes, dtype=np.int64)
        self._chi.attrs["shapes"] = json.dumps([list(s) for s in shapes])

    def check(self, step: int, g_us: np.ndarray, chi: Mapping[str, np.ndarray]
              ) -> Tuple[np.ndarray, np.ndarray]:
        """A snapshot's conductances and χ as the flat float32 vectors stored, checked
        against the layout (RunLogError names what does not fit)."""
        g = np.asarray(g_us, dtype=np.float32).ravel()
        if g.size != self.n_devices:
            raise RunLogError(f"on_snapshot at step {int(step)}: {g.size} conductances, the "
                              f"layout has {self.n_devices} devices", path=self.path)
        parts = []
        for name, size in zip(self.layers, self.sizes):
            if name not in chi:
                raise RunLogError(f"on_snapshot at step {int(step)}: chi has no layer "
                                  f"{name!r} (has {sorted(chi)})", path=self.path)
            c = np.asarray(chi[name], dtype=np.float32).ravel()
            if c.size != size:
                raise RunLogError(f"on_snapshot at step {int(step)}: chi[{name!r}] has "
                                  f"{c.size} values, expected {size}", path=self.path)
            parts.append(c)
        return g, (np.concatenate(parts) if parts else np.zeros(0, np.float32))

    def write(self, g: np.ndarray, chi_flat: np.ndarray,
              state: Optional[Mapping[str, np.ndarray]]) -> None:
        """The arrays of the snapshot whose row was last added to `rows`."""
        row = self.rows.total - 1
        self._g.resize((row + 1, g.size))
        self._g[row, :] = g
        self._chi.resize((row + 1, chi_flat.size))
        if chi_flat.size:
            self._chi[row, :] = chi_flat
        self.state.write(row, state)


def overwrite(dsid: Any, data: np.ndarray) -> None:
    """Write the whole of a fixed-size dataset in place (the /commit record)."""
    h5s = _h5s or h5s_module()
    dsid.write(h5s.ALL, h5s.ALL, data)


__all__ = ["CodeTable", "CommandTable", "DocumentTable", "MetricsTable", "RowTable",
           "SnapshotTable", "StateTable", "extend", "overwrite"]
