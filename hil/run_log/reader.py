"""RunLog: read access to a run log, complete, live, or cut short by a crash.

Everything is read up to the last commit (/commit holds the row counts a reader may trust);
the small per-command tables are loaded whole at opening, the long per-device event tables
are read in slices on demand.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from drivers.pulse import PulseKind
from hil.run_log.h5file import open_file
from hil.run_log.journal import JOURNAL_SUFFIX, JournalTail, read_journal
from hil.run_log.records import LogHeader, PulseBatch, RunEvent, RunStatus
from hil.run_log.schema import (BATCH_STATUS, COMMIT_FIELDS, EVENT_COLUMNS, EVENT_TABLES,
                                FORMAT, MATVEC_BATCH_COLUMNS, MATVEC_EVENT_COLUMNS,
                                PULSE_BATCH_COLUMNS, PULSE_EVENT_COLUMNS, READ_BATCH_COLUMNS,
                                READ_EVENT_COLUMNS, REQUIRED, SCHEMA_MAJOR, SCHEMA_MINOR,
                                SCHEMA_VERSION, SNAPSHOT_COLUMNS, SNAPSHOT_POSITION_COLUMNS,
                                STATE_GROUP, STATUS_COLUMNS, Column, EventTable, RunLogError,
                                is_wall_clock, parse_version)
from hil.run_log.snapshots import SnapshotReader
from hil.run_state import RunState
from hil.trainer_state import StateLayout

#: The per-command tables by name (RunLog.batch_rows): group, columns, /commit count field.
_BATCH_TABLES = {"reads": ("reads/batches", READ_BATCH_COLUMNS, "read_batches"),
                 "pulses": ("pulses/batches", PULSE_BATCH_COLUMNS, "pulse_batches"),
                 "matvec": ("matvec/batches", MATVEC_BATCH_COLUMNS, "matvec_batches")}

log = logging.getLogger("pcm_hil.run_log")


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

    seen = set()
    for klass in cls.__mro__[:-1]:          # RunLog and the parts it inherits
        for name, value in list(vars(klass).items()):
            if name in seen or name.startswith("_") or name in ("open", "close"):
                continue
            seen.add(name)
            if isinstance(value, property):
                setattr(cls, name, property(wrap(value.fget)))
            elif callable(value):
                setattr(cls, name, wrap(value))
    return cls


@_guarded
class RunLog(SnapshotReader):
    """Read access to a run log, complete or cut short by a crash.

    Everything is read up to the last commit; a file being written can be opened too (it
    shows the state of the last commit when opened). Arrays come back as numpy arrays;
    addresses are flat uint32 device addresses, conductances float32 µS.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._f = open_file(self.path)
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
            major, minor = parse_version(ver)
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
            raise RunLogError(_not_begun(f), path=self.path)
        required = list(REQUIRED)
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
        #: /events exists from schema 1.2 on.
        self.has_events = (major, minor) >= (1, 2)
        if self.has_events:
            required += [f"events/{c.name}" for c in EVENT_COLUMNS]
            required += ["events/doc", "meta/event_kinds"]
        #: Snapshot positions and trainer state records exist from schema 1.3 on.
        self.has_positions = (major, minor) >= (1, 3)
        if self.has_positions:
            required += [f"snapshots/{c.name}" for c in SNAPSHOT_POSITION_COLUMNS]
            required.append(STATE_GROUP)
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
        if self.has_events:
            checks += [("events/step", "event_rows"), ("events/doc", "event_doc_bytes"),
                       ("meta/event_kinds", "event_kinds")]
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
        if not self.has_events:   # before 1.2: no events, whatever /commit may hold
            c["event_rows"] = c["event_doc_bytes"] = c["event_kinds"] = 0
        #: Names of the event kind codes ("" for code 0, never used).
        self.event_kinds: List[str] = [""] + ([k.decode("utf-8").rstrip("\0") for k in
                                               f["meta/event_kinds"][:c["event_kinds"]]]
                                              if self.has_events else [])
        # The snapshot table, loaded whole (one row per snapshot); the per-command tables
        # (one row per command) are loaded whole at first use, or read a slice at a time
        # (batch_rows), so that a reader starting at a snapshot reads nothing before it.
        self._snap = self._table("snapshots", SNAPSHOT_COLUMNS + (
            SNAPSHOT_POSITION_COLUMNS if self.has_positions else ()), c["snapshots"])
        if not self.has_matvec:   # a 1.0 log: no MATVECs, whatever /commit may hold
            c["matvec_batches"] = c["matvec_values"] = 0
        self._batch_cache: Dict[str, Dict[str, np.ndarray]] = {}
        #: The layout of the trainer state records (schema 1.3, written by a trainer that
        #: declared one), else None.
        self.state_layout: Optional[StateLayout] = None
        if self.has_positions:
            g = f[STATE_GROUP]
            text = _attr_str(g.attrs.get("layout", ""))
            if text:
                try:
                    self.state_layout = StateLayout.from_json(text)
                except (ValueError, KeyError, TypeError) as e:
                    raise RunLogError(f"corrupted run log: /{STATE_GROUP} layout: {e}",
                                      path=self.path) from None
                for fld in self.state_layout.fields:
                    if fld.name not in g or g[fld.name].shape[0] < c["snapshots"]:
                        raise RunLogError(f"corrupted run log: /{STATE_GROUP}/{fld.name} is "
                                          "missing or shorter than /snapshots", path=self.path)

    def _batches(self, table: str) -> Dict[str, np.ndarray]:
        """A per-command table, whole (loaded at first use)."""
        t = self._batch_cache.get(table)
        if t is None:
            group, columns, count = _BATCH_TABLES[table]
            if table == "matvec" and not self.has_matvec:
                t = {col.name: np.zeros(0, col.dtype) for col in columns}
            else:
                t = self._table(group, columns, self.counts[count])
            self._batch_cache[table] = t
        return t

    @property
    def _rb(self) -> Dict[str, np.ndarray]:
        return self._batches("reads")

    @property
    def _pb(self) -> Dict[str, np.ndarray]:
        return self._batches("pulses")

    @property
    def _mb(self) -> Dict[str, np.ndarray]:
        return self._batches("matvec")

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
        """The logged config as an ExperimentConfig (validated like a config file; keys added
        after the log was written take the values that kept its behaviour)."""
        from hil.config import logged_config
        return logged_config(self.config, source=f"{self.path}:/meta/config_yaml")

    @property
    def provenance(self) -> Dict[str, Any]:
        return json.loads(_attr_str(self._f["meta/provenance_json"][()]))

    @property
    def arithmetic(self) -> Optional[str]:
        """The arithmetic version the run computed with (drivers.portable_math.ARITHMETIC),
        None for a log written before it was recorded (machine-dependent arithmetic)."""
        v = self.provenance.get("arithmetic")
        return None if v is None else str(v)

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

    def _documents(self, group: str, columns: Sequence[Column], rows: str,
                   doc_bytes: str) -> Tuple[Dict[str, np.ndarray], List[Dict[str, Any]]]:
        """A document table's rows and each row's JSON document (status, events)."""
        n = self.counts[rows]
        t = self._table(group, columns, n)
        doc = self._read(self._f[f"{group}/doc"], slice(0, self.counts[doc_bytes]))
        docs = []
        for i in range(n):
            o, ln = int(t["doc_offset"][i]), int(t["doc_length"][i])
            try:
                docs.append(json.loads(doc[o:o + ln].tobytes().decode("utf-8")))
            except (ValueError, UnicodeDecodeError) as e:
                raise RunLogError(f"corrupted {group} record {i}: {e}", path=self.path) \
                    from None
        return t, docs

    def status_history(self) -> List[RunStatus]:
        t, docs = self._documents("status", STATUS_COLUMNS, "status_rows", "status_doc_bytes")
        out = []
        for i, d in enumerate(docs):
            code = int(t["code"][i])
            states = list(RunState)
            state = states[code - 1] if 1 <= code <= len(states) else f"code {code}"
            out.append(RunStatus(state, d.get("reason"), d.get("summary"), int(t["step"][i]),
                                 float(t["time_unix"][i])))
        return out

    def events(self) -> List[RunEvent]:
        """Everything that happened to the run, in order (empty before schema 1.2)."""
        if not self.has_events:
            return []
        t, docs = self._documents("events", EVENT_COLUMNS, "event_rows", "event_doc_bytes")
        kinds = self.event_kinds
        return [RunEvent(int(t["step"][i]), float(t["time_unix"][i]),
                         kinds[c] if 0 < c < len(kinds) else f"kind#{c}", d)
                for i, (c, d) in enumerate(zip(t["kind"].tolist(), docs))]

    @property
    def status(self) -> RunStatus:
        """The current status (the last committed status record)."""
        h = self.status_history()
        if not h:
            return RunStatus(RunState.RUNNING, None, None, 0, 0.0)
        return h[-1]

    @property
    def summary(self) -> Optional[Dict[str, Any]]:
        return self.status.summary

    # --- metrics ---------------------------------------------------------------------------
    def _metrics(self, group: str, key: str, nrows: int, ncols: int, start: int = 0,
                 stop: Optional[int] = None) -> Dict[str, np.ndarray]:
        g = self._f[f"metrics/{group}"]
        names = [n.decode("utf-8").rstrip("\0") for n in self._read(g["names"],
                                                                     slice(0, ncols))]
        stop = nrows if stop is None else min(int(stop), nrows)
        start = min(max(int(start), 0), stop)
        rows = slice(start, stop)
        out: Dict[str, np.ndarray] = {key: self._read(g[key], rows)}
        if stop > start and ncols:
            vals = self._read(g["values"], (rows, slice(0, ncols)))
        else:
            vals = np.zeros((stop - start, ncols))
        for i, n in enumerate(names):
            if n != key:   # a metric named like the key column (e.g. "epoch") is the key
                out[n] = vals[:, i]
        return out

    def step_metrics(self, start: int = 0, stop: Optional[int] = None
                     ) -> Dict[str, np.ndarray]:
        """{'step': int64[n], name: float64[n], ...}; NaN where a metric was not logged.
        `start`, `stop`: only those rows (a snapshot's `step_metric_row` is where the rows
        after it begin)."""
        c = self.counts
        return self._metrics("step", "step", c["step_metrics"], c["step_metric_columns"],
                             start, stop)

    def monitor_readings(self) -> Dict[str, np.ndarray]:
        """{'step': int64[n], instrument reading: float64[n], ...} from the station monitors
        (empty in logs without them)."""
        c = self.counts
        if "metrics/monitor" not in self._f:
            return {"step": np.zeros(0, dtype=np.int64)}
        return self._metrics("monitor", "step", c["monitor_rows"], c["monitor_columns"])

    def epoch_metrics(self, start: int = 0, stop: Optional[int] = None
                      ) -> Dict[str, np.ndarray]:
        """{'epoch': int64[n], name: float64[n], ...}; `start`, `stop` as for step_metrics."""
        c = self.counts
        return self._metrics("epoch", "epoch", c["epoch_metrics"], c["epoch_metric_columns"],
                             start, stop)

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

    def batch_rows(self, table: str, start: int, stop: Optional[int] = None
                   ) -> Dict[str, np.ndarray]:
        """Rows [start, stop) of a per-command table ('reads', 'pulses' or 'matvec': the
        columns of read_batches, pulse_batches, matvec_batches), one bulk read per column;
        rows past the last commit are never returned."""
        if table not in _BATCH_TABLES:
            raise RunLogError(f"no command table {table!r} (the command tables are "
                              f"{', '.join(_BATCH_TABLES)})", path=self.path)
        group, columns, count = _BATCH_TABLES[table]
        n = self.counts[count]
        stop = n if stop is None else min(int(stop), n)
        start = min(max(int(start), 0), stop)
        if start == stop or (table == "matvec" and not self.has_matvec):
            return {col.name: np.zeros(0, col.dtype) for col in columns}
        whole = self._batch_cache.get(table)
        if whole is not None:
            return {k: v[start:stop] for k, v in whole.items()}
        g = self._f[group]
        return {col.name: self._read(g[col.name], slice(start, stop)) for col in columns}

    def matvec_values(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """The currents (µA, float32) of MATVEC rows start..stop-1, concatenated."""
        mb, n = self._mb, self._mb["step"].size
        stop = n if stop is None else min(stop, n)
        if start >= stop:
            return np.zeros(0, np.float32)
        r0, r1 = int(mb["offset"][start]), int(mb["offset"][stop - 1] + mb["count"][stop - 1])
        return self.event_rows("matvec", r0, r1, ("value",))["value"]

    # --- sequential access to the event tables ------------------------------------------------
    def _event_table(self, table: str) -> EventTable:
        t = EVENT_TABLES.get(table)
        if t is None:
            raise RunLogError(f"no event table {table!r} (the event tables are "
                              f"{', '.join(EVENT_TABLES)})", path=self.path)
        return t

    def event_count(self, table: str) -> int:
        """Committed rows of an event table: 'reads' (one per device read), 'pulses' (one
        per device of a program batch) or 'matvec' (one per current a MATVEC returned)."""
        return self.counts[self._event_table(table).count_field]

    def event_rows(self, table: str, start: int, stop: int,
                   columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Columns (all by default) of rows [start, stop) of an event table ('reads',
        'pulses' or 'matvec', see event_count), one bulk read per column; rows past the last
        commit are never returned. A batch table's `offset` and `count` say which rows are
        a command's: this is how replay walks a log of any length in large blocks."""
        t = self._event_table(table)
        known = [c.name for c in t.columns]
        names = known if columns is None else list(columns)
        for name in names:
            if name not in known:
                raise RunLogError(f"event table {table!r} has no column {name!r} (it has "
                                  f"{', '.join(known)})", path=self.path)
        stop = min(int(stop), self.counts[t.count_field])
        start = min(max(int(start), 0), stop)
        if start == stop or (table == "matvec" and not self.has_matvec):
            dtypes = {c.name: c.dtype for c in t.columns}
            return {n: np.zeros(0, dtypes[n]) for n in names}
        g = self._f[t.group]
        return {n: self._read(g[n], slice(start, stop)) for n in names}

    def _event_range(self, batches: Dict[str, np.ndarray], n_events: int,
                     start_step: Optional[int], stop_step: Optional[int]) -> Tuple[int, int]:
        steps, offsets = batches["step"], batches["offset"]
        lo = 0 if start_step is None else int(np.searchsorted(steps, start_step, "left"))
        hi = steps.size if stop_step is None else int(np.searchsorted(steps, stop_step,
                                                                      "left"))
        r0 = int(offsets[lo]) if lo < steps.size else n_events
        r1 = int(offsets[hi]) if hi < steps.size else n_events
        return r0, max(r0, r1)

    def read_events(self, start_step: Optional[int] = None, stop_step: Optional[int] = None,
                    columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Read events with start_step <= step < stop_step: step, address, value, purpose."""
        rows = self._event_range(self._rb, self.counts["read_events"], start_step, stop_step)
        return self.event_rows("reads", *rows, columns)

    def pulse_events(self, start_step: Optional[int] = None, stop_step: Optional[int] = None,
                     columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Pulse events with start_step <= step < stop_step: step, address, n_pulses, kind,
        purpose."""
        rows = self._event_range(self._pb, self.counts["pulse_events"], start_step, stop_step)
        return self.event_rows("pulses", *rows, columns)

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
        ev = self.event_rows("pulses", r0, r1, ("address", "n_pulses"))
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
        events, every MATVEC with its currents (when there are any), every snapshot (its
        trainer state record too, wall-clock fields excepted), the step
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
        events = ["reads", "pulses"]
        if c["matvec_batches"]:   # absent, the digest is the one schema 1.0 defined
            tables.append(("matvec", self._mb))
            events.append("matvec")
        for name, t in tables:
            for col, a in t.items():
                if col != "time_unix":
                    add(f"{name}/{col}", a)
        step = 1 << 22
        for table in events:
            et = EVENT_TABLES[table]
            n = c[et.count_field]
            for col in et.columns:
                for r in range(0, n, step):
                    add(f"{et.group}/{col.name}",
                        self.event_rows(table, r, r + step, (col.name,))[col.name])
        state = self._f[STATE_GROUP] if self.has_state else None
        for i in range(c["snapshots"]):
            add("g_us", self.snapshot_g(i))
            add("chi", self._read(self._f["snapshots/chi"], i))
            if state is not None and self._snap["has_state"][i]:
                for fld in self.state_layout.fields:   # type: ignore[union-attr]
                    if not fld.wall_clock:
                        add(f"state/{fld.name}", self._read(state[fld.name], i))
        for kind, m in (("step", self.step_metrics()), ("epoch", self.epoch_metrics())):
            for k in sorted(m):
                if not is_wall_clock(k):
                    add(f"{kind}/{k}", m[k])
        h.update("\n".join(self.purposes).encode())
        return h.hexdigest()

    def journal(self) -> JournalTail:
        """Pulse batches sent after the last commit, from the write-ahead journal a killed
        writer leaves next to the log (empty when there is none)."""
        c = self.counts
        return read_journal(self.path + JOURNAL_SUFFIX, c["pulse_batches"],
                            self.purpose_name, c["pulse_batches"] + c["read_batches"])


def _not_begun(f: Any) -> str:
    """Why a log without tables holds nothing of its run."""
    final = f.attrs.get("final_status")
    if final is not None:
        return (f"the run never started: it ended before its first command (final status "
                f"{_attr_str(final)}: {_attr_str(f.attrs.get('final_reason', ''))})")
    return ("nothing of the run is logged yet: it has not begun (it is starting up, or it "
            "was killed before its first command; `pcm-hil train --resume` starts it again "
            "from step 0)")


def read_header(path: str | os.PathLike) -> LogHeader:
    """The config and provenance of any run log, begun or not (RunLog refuses a log whose
    run never began; resume needs to know what such a run was)."""
    import yaml
    p = os.fspath(path)
    f = open_file(p)
    try:
        fmt = _attr_str(f.attrs.get("format", ""))
        if fmt != FORMAT:
            raise RunLogError(f"not a pcm-hil run log (HDF5 file without format tag "
                              f"{FORMAT!r}; found {fmt!r})", path=p)
        meta = f.get("meta")
        if meta is None or "config_yaml" not in meta:
            raise RunLogError("corrupted run log: /meta/config_yaml is missing", path=p)
        config = yaml.safe_load(_attr_str(meta["config_yaml"][()])) or {}
        prov = (json.loads(_attr_str(meta["provenance_json"][()]))
                if "provenance_json" in meta else {})
        final = f.attrs.get("final_status")
        return LogHeader(path=p, began="commit" in f, config=config, provenance=prov,
                         final_status=None if final is None else _attr_str(final),
                         final_reason=(None if final is None
                                       else _attr_str(f.attrs.get("final_reason", ""))))
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise RunLogError(f"corrupted run log: {e}", path=p) from None
    finally:
        f.close()


def _attr_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _attr_str(v[()])
    return str(v)


__all__ = ["RunLog", "read_header"]
