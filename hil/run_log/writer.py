"""RunLogWriter: the Recorder the trainer writes a run log through.

Why it is built this way:
- Events are buffered in memory and appended in bulk at each commit (hil.run_log.tables),
  because a per-event HDF5 call would cost more than the training step it records. A
  typical step sends one or two commands of 1-10 devices, so the fixed cost per hook call
  is what counts: a command is buffered as one list holding its batch row and the bytes it
  journals, and turned into columns at commit.
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
- Commits are periodic, but a command that reached the chip must never be unknown: each is
  also appended to the write-ahead journal (hil.run_log.journal) before it is sent.
"""
from __future__ import annotations

import logging
import os
import re
import time
import zlib
from array import array
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from drivers.pulse import PulseKind, PulseSpec
from hil.recorder import Recorder
from hil.run_log.header import (PART_SUFFIX, create_log, remove_quietly, to_json,
                                write_header_file, write_text, yaml_text)
from hil.run_log.journal import JOURNAL_SUFFIX, JournalWriter
from hil.run_log.packing import F32, I64_FAST, SMALL, address_bytes, pulse_count_bytes
from hil.run_log.provenance import ARITHMETIC, environment_provenance
from hil.run_log.schema import (BATCH_ACKED, BATCH_SENT, COMMIT_FIELDS, EVENT_COLUMNS,
                                EVENT_KINDS, MATVEC_BATCH_COLUMNS, MATVEC_EVENT_COLUMNS,
                                PULSE_BATCH_COLUMNS, PULSE_EVENT_COLUMNS, PURPOSE_BYTES,
                                PURPOSES, READ_BATCH_COLUMNS, READ_EVENT_COLUMNS,
                                SNAPSHOT_COLUMNS, SNAPSHOT_POSITION_COLUMNS,
                                STATUS_CODE, STATUS_COLUMNS, RunLogError)
from hil.run_log.tables import (CodeTable, CommandTable, DocumentTable, MetricsTable,
                                SnapshotTable, overwrite)
from hil.run_state import RunState, can_transition
from hil.trainer_state import StateLayout, TrainerState

log = logging.getLogger("pcm_hil.run_log")

_I32 = (-(1 << 31), (1 << 31) - 1)
_KIND_CODE = {k: int(k) for k in PulseKind}
#: Positions in a buffered /pulses/batches row (CommandTable keeps rows as lists).
_PULSE_FIELDS = [c.name for c in PULSE_BATCH_COLUMNS]
_P_BATCH_ID = _PULSE_FIELDS.index("batch_id")
_P_STEP = _PULSE_FIELDS.index("step")
_P_COUNT = _PULSE_FIELDS.index("count")
_P_STATUS = _PULSE_FIELDS.index("status")


class RunLogWriter(Recorder):
    """Writes one run to one HDF5 file (a Recorder; see hil.recorder).

    A header file (config, the provenance known so far) is created at construction, so a
    bad path fails before the chip is touched and a run that dies before begin() leaves a
    log that says what it was; begin() puts the full file in its place.
    Events are buffered and committed every `cfg.log.flush_every_steps` steps, after every
    snapshot and epoch, and at finish; a killed process loses at most the uncommitted steps.
    """

    #: SWMR on (the crash guarantee); off only to demonstrate what plain flushing risks.
    _swmr = True

    def __init__(self, path: str | os.PathLike, cfg: Any, *, overwrite: bool = False,
                 journal: bool = True, provenance: Optional[Mapping[str, Any]] = None) -> None:
        self.path = os.fspath(path)
        self.cfg = cfg
        every = int(getattr(getattr(cfg, "log", None), "flush_every_steps", 2000))
        if every < 1:
            raise RunLogError(f"log.flush_every_steps must be >= 1, got {every}",
                              path=self.path)
        self.flush_every_steps = every
        self.snapshot_every_steps = int(getattr(getattr(cfg, "log", None),
                                                "snapshot_every_steps", 0) or 0)
        self.check_path(self.path, overwrite=overwrite)
        cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
        self._config_text = yaml_text(cfg_dict)
        #: What the run's provenance holds before begin() (the station, the chip-state
        #: file, earlier segments): in the header file, so a run that never began can be
        #: started again as it was asked for.
        self._early_provenance = dict(provenance or {})
        self._f: Any = None
        self._broken = False
        self._write_header()
        self._state = "created"
        self._seq = 0
        self._last_step: Optional[int] = None
        self._next_flush: Optional[int] = None
        #: The /pulses/batches row (as buffered) of the batch announced by before_program and
        #: not yet acknowledged.
        self._pending: Optional[list] = None
        #: purpose tag -> code (CodeTable.codes once begin() made the table)
        self._purpose_codes: Dict[str, int] = {}
        self._commits = 0
        self._complete_step = -1
        self._journal_on = journal
        self._journal: Optional[JournalWriter] = None
        self.journal_path = self.path + JOURNAL_SUFFIX
        #: Called after every commit with the number of commands (reads + programs) the log
        #: then holds: resume keeps a simulated chip's state file in step with the log.
        self.commit_hooks: List[Callable[[int], None]] = []
        self._keep_journal = False

    @staticmethod
    def check_path(path: str, *, overwrite: bool = False) -> None:
        """Raise the RunLogError a writer at `path` would raise for its path (no folder, a
        log already there, a folder that cannot be written), without creating anything:
        a run checks its log's path before it opens the chip, and creates the log only
        once the chip has accepted it."""
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise RunLogError(f"folder {parent} does not exist", path=path)
        if os.path.isdir(path):
            raise RunLogError("is a folder; give a file name for the run log", path=path)
        if os.path.exists(path) and not overwrite:
            raise RunLogError("file exists; refusing to overwrite a run log (choose another "
                              "--run path or delete the old log)", path=path)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunLogError(f"folder {parent} cannot be written", path=path)

    @property
    def began(self) -> bool:
        """Whether begin() ran: the log holds the run's tables (else only its header)."""
        return self._commits > 0   # begin() ends with the first commit

    @property
    def commits(self) -> int:
        """Commits so far (the `commits` field of /commit)."""
        return self._commits

    @property
    def complete_step(self) -> int:
        """Every step up to this one is committed, whole (-1: none yet)."""
        return self._complete_step

    # --- helpers -------------------------------------------------------------------------
    def _write_header(self, final_status: Optional[str] = None,
                      final_reason: Optional[str] = None) -> None:
        write_header_file(self.path, getattr(self.cfg, "name", None), self._config_text,
                          self._early_provenance, final_status, final_reason)

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
        return self._purposes.code(purpose)

    # --- Recorder hooks ----------------------------------------------------------------------
    def begin(self, *, config: Mapping[str, Any], provenance: Mapping[str, Any],
              layout: Mapping[str, np.ndarray],
              state_layout: Optional[StateLayout] = None) -> None:
        """Write config, provenance and layout, create every table (a dataset per field of
        the trainer's `state_layout` among them), switch to SWMR, and put the file in place
        of the header file."""
        self._require("created", "begin")
        # Layout: one dataset per key, in the order given (the snapshot order). Validated
        # before anything is written, so a bad layout leaves the file as it was.
        if not layout:
            raise RunLogError("begin(): empty layout", path=self.path)
        keys = list(layout.keys())
        arrays = []
        for k in keys:
            if not isinstance(k, str) or "/" in k or not k:
                raise RunLogError(f"layout key {k!r} is not a valid name", path=self.path)
            a = np.asarray(layout[k])
            ab, _ = address_bytes(a, f"layout[{k!r}]", self.path)
            arrays.append(np.frombuffer(ab, dtype=np.uint32).reshape(a.shape))
        self._layout_flat = np.concatenate([a.ravel() for a in arrays])
        srt = np.sort(self._layout_flat)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if dup.size:
            raise RunLogError(f"layout names device {int(dup[0])} twice", path=self.path)
        prov = {**self._early_provenance, **dict(provenance or {})}
        prov.setdefault("environment", environment_provenance())
        prov["arithmetic"] = ARITHMETIC   # what a re-run must compute with to reproduce it
        if config:
            self._config_text = yaml_text(dict(config))
        # The whole file is built under a temporary name and renamed over the header file
        # once it is in SWMR mode: at every instant the path holds a file that opens.
        f, self._meta = create_log(self.path + PART_SUFFIX, getattr(self.cfg, "name", None),
                                   self._config_text)
        self._f = f
        write_text(self._meta, "provenance_json", to_json(prov))
        lay = f.create_group("layout")
        for k, a in zip(keys, arrays):
            lay.create_dataset(k, data=a)
        lay.attrs["order"] = np.array(keys, dtype=object)
        lay.attrs["n_devices"] = int(self._layout_flat.size)
        # Tables.
        self._reads = CommandTable(f.create_group("reads"), READ_BATCH_COLUMNS,
                                   READ_EVENT_COLUMNS, ("address", "value"))
        self._pulses = CommandTable(f.create_group("pulses"), PULSE_BATCH_COLUMNS,
                                    PULSE_EVENT_COLUMNS, ("address", "n_pulses"))
        self._matvec = CommandTable(f.create_group("matvec"), MATVEC_BATCH_COLUMNS,
                                    MATVEC_EVENT_COLUMNS, ("value",))
        self._snap = SnapshotTable(f.create_group("snapshots"),
                                   SNAPSHOT_COLUMNS + SNAPSHOT_POSITION_COLUMNS,
                                   {k: a.shape for k, a in zip(keys, arrays)}, state_layout,
                                   self.path)
        self._snapshots = self._snap.rows
        metrics = f.create_group("metrics")
        self._step_metrics = MetricsTable(metrics.create_group("step"), "step", self.path)
        self._epoch_metrics = MetricsTable(metrics.create_group("epoch"), "epoch", self.path)
        self._monitor = MetricsTable(metrics.create_group("monitor"), "step", self.path)
        self._status = DocumentTable(f.create_group("status"), STATUS_COLUMNS, 64)
        self._events = DocumentTable(f.create_group("events"), EVENT_COLUMNS, 64)
        self._purposes = CodeTable(self._meta.create_dataset(
            "purposes", shape=(0,), maxshape=(None,), dtype=f"S{PURPOSE_BYTES}", chunks=(64,)),
            PURPOSES, "purpose tag", self.path)
        self._purpose_codes = self._purposes.codes
        self._event_kinds = CodeTable(self._meta.create_dataset(
            "event_kinds", shape=(0,), maxshape=(None,), dtype=f"S{PURPOSE_BYTES}",
            chunks=(64,)), EVENT_KINDS, "event kind", self.path)
        self._commit_ds = f.create_dataset("commit", data=np.zeros(len(COMMIT_FIELDS),
                                                                   dtype="<i8"))
        self._commit_ds.attrs["fields"] = np.array(COMMIT_FIELDS, dtype=object)
        f.flush()
        if self._swmr:
            f.swmr_mode = True
        os.replace(self.path + PART_SUFFIX, self.path)
        self._state = "running"
        if self._journal_on:
            self._journal = JournalWriter(self.journal_path)
        self._append_status(RunState.RUNNING, None, None, step=0)
        self._commit()

    def on_read(self, step: int, addresses: np.ndarray, values: np.ndarray,
                purpose: str) -> None:
        if self._state != "running":
            self._require("running", "on_read")
        s = self._last_step
        if step != s:
            s = self._check_step(step, "on_read")
        ab, k = address_bytes(addresses, "on_read", self.path)
        v = values if type(values) is np.ndarray else np.asarray(values)
        if v.size != k:
            raise RunLogError(f"on_read at step {s}: {k} addresses but {v.size} values",
                              path=self.path)
        vb = v.tobytes() if v.dtype == F32 else v.astype(F32).tobytes()
        code = self._purpose_codes.get(purpose) or self._purpose(purpose)
        seq = self._seq
        t = self._reads
        first = t.event_rows + t.n
        t.n += k
        t.pending.append([seq, s, code, first, k, ab, vb])
        jw = self._journal
        if jw is not None:
            # The values ride on the next journal write (like acknowledgements), if the read
            # was journaled. After a combined PROGRAM_READ its acknowledgement is waiting too.
            jw.read_values(seq, k, vb)
        self._seq = seq + 1

    def before_read(self, step: int, addresses: np.ndarray, purpose: str, *,
                    wire_seq: int = -1) -> None:
        """Write-ahead of a read: journaled, so a read a kill cut off is re-sent under its
        wire sequence number (answered from the firmware's memory, not executed twice)."""
        if self._state != "running":
            self._require("running", "before_read")
        if step != self._last_step:
            self._check_step(step, "before_read")
        jw = self._journal
        if jw is None:
            return
        ab, k = address_bytes(addresses, "before_read", self.path)
        code = self._purpose_codes.get(purpose) or self._purpose(purpose)
        jw.read_sent(self._seq, self._last_step, code, int(wire_seq), k, ab)

    def before_program(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                       pulse: PulseSpec, purpose: str, *, wire_seq: int = -1) -> None:
        if self._state != "running":
            self._require("running", "before_program")
        s = self._last_step
        if step != s:
            s = self._check_step(step, "before_program")
        ab, k = address_bytes(addresses, "before_program", self.path)
        n = n_pulses
        if type(n) is np.ndarray and n.dtype is I64_FAST and k <= SMALL:
            # The trainer's few-device int64 counts: array('H') overflows outside 0..65535.
            try:
                nb = array("H", n.tolist()).tobytes()
            except (OverflowError, TypeError):          # TypeError: not 1-D
                nb = b""
            if len(nb) != 2 * k:
                nb = pulse_count_bytes(n, k, f"before_program at step {s}", self.path)
        else:
            nb = pulse_count_bytes(n, k, f"before_program at step {s}", self.path)
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
        jw = self._journal
        if jw is not None:
            # Before the command goes out; carries the previous command's result too.
            jw.batch_sent(row, seq, s, kind, code, amp, width, k, int(wire_seq), ab, nb)
        self._seq = seq + 1
        self._pending = rec

    def before_program_read(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                            pulse: PulseSpec, purpose: str, read_purpose: str, *,
                            wire_seq: int = -1) -> None:
        """Both write-aheads of a combined command in one write() (it is one command on the
        wire): the program record is held and goes out with the read record."""
        jw = self._journal
        if jw is not None:
            jw.hold_next_batch(True)
        try:
            self.before_program(step, addresses, n_pulses, pulse, purpose, wire_seq=wire_seq)
        finally:
            if jw is not None:
                jw.hold_next_batch(False)
        self.before_read(step, addresses, read_purpose, wire_seq=wire_seq)

    def on_program(self, step: int, addresses: np.ndarray, n_pulses: np.ndarray,
                   pulse: PulseSpec, purpose: str) -> None:
        if self._state != "running":
            self._require("running", "on_program")
        rec = self._pending
        size = addresses.size if type(addresses) is np.ndarray else np.asarray(addresses).size
        if rec is None or rec[_P_STEP] != int(step) or rec[_P_COUNT] != size:
            raise RunLogError(f"on_program at step {int(step)} ({size} devices) does not "
                              "acknowledge the batch announced by before_program",
                              path=self.path)
        row = rec[_P_BATCH_ID]
        if row >= self._pulses.batch_rows:
            rec[_P_STATUS] = BATCH_ACKED            # still buffered
        else:
            self._pulses.set_value("status", row, BATCH_ACKED)
        jw = self._journal
        if jw is not None:
            jw.batch_acked(row)
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
        vb = v.astype(F32).tobytes()
        t = self._matvec
        first = t.event_rows + t.n
        t.n += v.size
        t.pending.append([s, b.shape[0], b.shape[1], k, ends[0], ends[1],
                          zlib.crc32(xv.tobytes()), first, v.size, vb])

    def on_snapshot(self, step: int, g_us: np.ndarray, chi: Mapping[str, np.ndarray]) -> None:
        self._snapshot(step, g_us, chi, None)

    def on_state_snapshot(self, state: TrainerState) -> None:
        """A snapshot with the trainer's state record, which must be of the layout declared
        at begin()."""
        if self._state != "running":
            self._require("running", "on_state_snapshot")
        declared = self._snap.state.layout
        diff = ("no state layout was declared at begin()" if declared is None
                else state.layout.difference(declared))
        if diff is not None:
            raise RunLogError(f"on_state_snapshot at step {state.step}: the state record "
                              f"does not fit the declared layout: {diff}", path=self.path)
        self._snapshot(state.step, state.g_us, state.chi, state.values)

    def _snapshot(self, step: int, g_us: np.ndarray, chi: Mapping[str, np.ndarray],
                  state: Optional[Mapping[str, np.ndarray]]) -> None:
        if self._state != "running":
            self._require("running", "on_snapshot")
        g, chi_flat = self._snap.check(step, g_us, chi)
        s = self._check_step(step, "on_snapshot")
        self._check_space(g.nbytes + chi_flat.nbytes)
        rd, pl, mv = self._reads, self._pulses, self._matvec
        self._snapshots.pending.append([
            s, self._seq, rd.event_total, pl.event_total, time.time(),
            rd.batch_rows + len(rd.pending), pl.batch_rows + len(pl.pending),
            mv.batch_rows + len(mv.pending), mv.event_total, self._step_metrics.total,
            self._epoch_metrics.total, int(state is not None)])
        try:
            self._snap.write(g, chi_flat, state)
        except (OSError, RuntimeError) as e:
            raise self._fail(e) from None
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

    def on_event(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Something that happened to the run (a row of /events), committed at once: events
        are rare, and a live reader should see a pause when it happens."""
        if self._state != "running":
            self._require("running", "on_event")
        if not isinstance(detail, Mapping):
            raise RunLogError(f"on_event {kind!r} at step {int(step)}: detail must be a "
                              f"mapping, got {type(detail).__name__}", path=self.path)
        s = self._check_step(step, "on_event")
        code = self._event_kinds.code(kind)
        try:
            self._events.add([s, time.time(), code], to_json(dict(detail)).encode("utf-8"))
        except (OSError, RuntimeError) as e:
            raise self._fail(e) from None
        self._commit()

    def flush(self) -> None:
        """Commit everything recorded so far (durable against a killed process)."""
        if self._state == "running":
            self._commit()

    def finish(self, status: str, reason: Optional[str] = None,
               summary: Optional[Dict[str, Any]] = None) -> None:
        """Record the final status and close the file. A status the run cannot end in (not
        a RunState, or `running`) is recorded as failed, naming it in the reason."""
        if self._broken:
            return   # the log's file system refused a write: it stays at its last commit
        if self._state == "finished":
            log.warning("finish(%s) after the run log was finished; ignored", status)
            return
        if self._state == "created":
            # begin() never ran, or failed half way (the run ended before touching the
            # chip): drop what begin() built, and still say why in the header file.
            if self._f is not None:
                try:
                    self._f.close()
                except Exception:  # noqa: BLE001 - the reason below matters more
                    pass
                self._f = None
                remove_quietly(self.path + PART_SUFFIX)
            shown = status.value if isinstance(status, RunState) else str(status)
            self._state = "finished"
            self._write_header(shown, reason)
            return
        final = RunState.parse(status)
        if final is None or not can_transition(RunState.RUNNING, final):
            shown = status.value if isinstance(status, RunState) else status
            reason = f"finish() with unknown status {shown!r}" + (f": {reason}" if reason
                                                                 else "")
            final = RunState.FAILED
        self._complete_step = self._last_step if self._last_step is not None else -1
        self._append_status(final, reason, summary,
                            step=self._last_step if self._last_step is not None else 0)
        # A run that failed inside a command (e.g. the link died before the reply) keeps its
        # journal: the command's wire sequence number is what lets resume settle it.
        jw = self._journal
        self._keep_journal = final is not RunState.COMPLETED and (
            self._pending is not None or (jw is not None and jw.read_in_flight is not None))
        self._commit(final=True)
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
            self.finish(RunState.ABORTED, "interrupted by the operator")
        else:
            self.finish(RunState.FAILED, f"{exc_type.__name__}: {exc}")

    def snapshot_due(self, step: int) -> bool:
        """Whether the periodic snapshot (log.snapshot_every_steps) falls on this step."""
        n = self.snapshot_every_steps
        return bool(n) and int(step) % n == 0

    # --- internals -------------------------------------------------------------------------
    def _append_status(self, status: RunState, reason: Optional[str],
                       summary: Optional[Mapping[str, Any]], step: int) -> None:
        doc = to_json({"status": status.value, "reason": reason, "summary": summary})
        try:
            self._status.add([STATUS_CODE[status.value], step, time.time()], doc.encode("utf-8"))
        except (OSError, RuntimeError) as e:
            raise self._fail(e) from None

    def _commit(self, final: bool = False) -> None:
        """Write buffers, flush, then publish the new row counts and flush again.

        The second flush is what makes the commit atomic: /commit only ever names rows that
        were already on disk when it was written. The final commit (`final`) may use the
        free space every other commit leaves (DISK_MARGIN)."""
        if not final:
            self._check_space()
        try:
            self._write_commit()
        except (OSError, RuntimeError) as e:
            raise self._fail(e) from None
        if self._journal is not None and not self._keep_journal:
            self._journal.restart(self._commits)   # everything journaled is now in the log
        for hook in self.commit_hooks:
            hook(self._seq)

    def _write_commit(self) -> None:
        for t in (self._reads, self._pulses, self._matvec, self._snapshots, self._status,
                  self._events):
            t.write()
        self._step_metrics.write()
        self._epoch_metrics.write()
        self._monitor.write()
        self._purposes.write()
        self._event_kinds.write()
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
            "status_rows": self._status.rows, "status_doc_bytes": self._status.doc_bytes,
            "purposes": self._purposes.on_disk,
            "last_step": self._last_step if self._last_step is not None else -1,
            "complete_step": self._complete_step,
            "time_us": int(time.time() * 1e6),
            "monitor_rows": self._monitor.rows,
            "monitor_columns": len(self._monitor.names),
            "matvec_batches": self._matvec.batch_rows, "matvec_values": self._matvec.event_rows,
            "event_rows": self._events.rows, "event_doc_bytes": self._events.doc_bytes,
            "event_kinds": self._event_kinds.on_disk,
        }
        overwrite(self._commit_ds.id, np.array([counts[k] for k in COMMIT_FIELDS],
                                               dtype="<i8"))
        self._f.flush()

    def _check_space(self, extra_bytes: int = 0) -> None:
        """Stop the run, with its log whole, before a commit the disk may not hold: HDF5 has
        no way back from a write the file system refuses (see _fail)."""
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        # ~8 bytes per buffered event (its two per-device columns, before compression; the
        # columns it shares with its batch compress to almost nothing), a batch row ~128.
        pending = extra_bytes + sum(8 * t.n + 128 * len(t.pending)
                                    for t in (self._reads, self._pulses, self._matvec))
        need = DISK_MARGIN + 2 * pending
        if free < need:
            raise RunLogError(f"the disk holding the run log has {free / 2**20:.1f} MiB free, "
                              f"less than the {need / 2**20:.1f} MiB its next commit may need: "
                              f"the run stops here, its log {self._committed_through()}",
                              path=self.path)

    def _committed_through(self) -> str:
        s = self._complete_step
        return f"complete through step {s}" if s >= 0 else "holding no complete step yet"

    def _fail(self, error: BaseException) -> RunLogError:
        """A write the file system refused (a full disk, a file-size limit): stop writing.

        HDF5 cannot close a file whose writes fail - it retries at every flush and at exit,
        where it crashes the process - so the file's descriptor is pointed at /dev/null and
        the file closed through it. SWMR kept the file on disk readable, to its last commit;
        the journal stays (it holds the commands sent since, for --resume)."""
        m = re.search(r"error message = '([^']+)'", str(error))
        reason = m.group(1) if m else (getattr(error, "strerror", None) or str(error))
        self._broken = True
        self._keep_journal = True
        readable = f"readable to its last commit ({self._committed_through()})"
        try:
            fd = self._f.id.get_vfd_handle()
            expected = int(self._f.id.get_filesize())
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd)
            os.close(null)
            self._f.close()
            # HDF5 had already counted the space of the refused writes as the file's end;
            # a file shorter than that reads as truncated. Extending it with a hole (which
            # takes no disk space) makes it open, to its last commit.
            if os.path.getsize(self.path) < expected:
                try:
                    os.truncate(self.path, expected)
                except OSError as e:
                    readable = (f"cut short ({e.strerror}); `truncate -s {expected} "
                                f"{self.path}` makes it {readable}")
        except Exception as e:  # noqa: BLE001 - nothing more can be done for the file
            log.warning("closing the run log after a failed write: %s", e)
        self._state = "finished"
        if self._journal is not None:
            self._journal.close(keep=True)
            self._journal = None
        return RunLogError(f"cannot write the run log ({reason}): the run stops; the log is "
                           f"{readable}", path=self.path)

    def _close(self) -> None:
        begun = self._state != "created"
        try:
            if self._f is not None:
                self._f.close()
                if not begun:   # begin() failed half way: its file never took the path
                    remove_quietly(self.path + PART_SUFFIX)
        finally:
            self._state = "finished"
            if self._journal is not None:
                self._journal.close(keep=self._keep_journal)
                self._journal = None


#: Free space a commit leaves on the log's file system, at the least (beyond twice what
#: it writes): HDF5 rewrites the last chunk of every column, and the final status must fit.
DISK_MARGIN = 4 << 20

__all__ = ["RunLogWriter"]
