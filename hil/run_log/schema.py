"""The run-log format: version, tables and their columns, code tables, /commit, RunLogError.

What writer and reader must agree on, in one place; docs/run-log.md describes every item.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from drivers.errors import HilError
from hil.run_state import RunState

FORMAT = "pcm-hil-run-log"
#: 1.1: /matvec (on-chip weighted sums). 1.2: files any HDF5 >= 1.10 tool reads (format
#: bounds of 1.10, deflate instead of LZF), /events. Files of 1.0 and 1.1 are still read.
SCHEMA_VERSION = "1.2"
SCHEMA_MAJOR = 1
SCHEMA_MINOR = 2


class RunLogError(HilError):
    """A run log that cannot be written or read: names the file and the problem."""

    def __init__(self, message: str, *, path: Optional[str] = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --- code tables -------------------------------------------------------------------------------
#: Well-known purpose tags and their fixed codes (0 is never used). Other tags get the next
#: free code at first use; /meta/purposes maps every code to its name.
PURPOSES: Tuple[str, ...] = ("init_reset", "init_set", "update", "readback", "refresh_reset",
                             "refresh_set", "refresh_readback", "full_read")
#: Run statuses; /status/code is the position + 1.
STATUSES: Tuple[str, ...] = tuple(s.value for s in RunState)
STATUS_CODE: Dict[str, int] = {name: i + 1 for i, name in enumerate(STATUSES)}
#: Well-known kinds of run event (/events) and their fixed codes; like purposes, another kind
#: gets the next free code at first use and /meta/event_kinds names every code.
EVENT_KINDS: Tuple[str, ...] = ("run_paused", "run_resumed", "command_refused",
                                "segment_started")
BATCH_SENT = 1     # written before the command went out (write-ahead)
BATCH_ACKED = 2    # the chip acknowledged the batch
BATCH_STATUS = {BATCH_SENT: "sent", BATCH_ACKED: "acked"}

#: Fields of /commit, in order. Readers read only rows below these counts.
COMMIT_FIELDS: Tuple[str, ...] = (
    "commits", "read_batches", "read_events", "pulse_batches", "pulse_events", "snapshots",
    "step_metrics", "step_metric_columns", "epoch_metrics", "epoch_metric_columns",
    "status_rows", "status_doc_bytes", "purposes", "last_step", "complete_step", "time_us",
    "monitor_rows", "monitor_columns", "matvec_batches", "matvec_values",
    "event_rows", "event_doc_bytes", "event_kinds")

NAME_BYTES = 64          # metric names (fixed-length, SWMR cannot grow variable-length data)
PURPOSE_BYTES = 32       # purpose tags and event kinds
EVENT_CHUNK = 1 << 12    # rows per chunk of the event tables (a commit recompresses the
BATCH_CHUNK = 1 << 10    # last, partial chunk of every column: small chunks keep that cheap)
SNAPSHOT_CHUNK = 1 << 16  # devices per chunk of a snapshot row


# --- tables ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column of an append-only table: dtype and the HDF5 filter it is stored with.

    Filters: "gzip" = shuffle + deflate level 1, which every HDF5 build has (schema 1.2 on,
    every compressed column; 1.0 and 1.1 logs stored addresses and values with LZF, a codec
    only h5py decodes, and are still read); None = stored as is."""

    name: str
    dtype: str
    filter: Optional[str] = "gzip"


def filter_kwargs(name: Optional[str]) -> Dict[str, Any]:
    """h5py create_dataset arguments of a Column filter name."""
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if name is None:
        return {}
    raise ValueError(f"unknown column filter {name!r}")


READ_BATCH_COLUMNS = (Column("seq", "<i8"), Column("step", "<i8"), Column("purpose", "u1"),
                      Column("offset", "<i8"), Column("count", "<i8"))
READ_EVENT_COLUMNS = (Column("step", "<i4"), Column("address", "<u4"),
                      Column("value", "<f4"), Column("purpose", "u1"))
PULSE_BATCH_COLUMNS = (Column("batch_id", "<i8"), Column("seq", "<i8"), Column("step", "<i8"),
                       Column("kind", "u1"), Column("amplitude_v", "<f8"),
                       Column("width_ns", "<f8"), Column("purpose", "u1"),
                       Column("offset", "<i8"), Column("count", "<i8"),
                       Column("status", "u1"))
PULSE_EVENT_COLUMNS = (Column("step", "<i4"), Column("address", "<u4"),
                       Column("n_pulses", "<u2"), Column("kind", "u1"), Column("purpose", "u1"))
#: One row per MATVEC: the block's shape and corner addresses and a CRC-32 of its inputs
#: identify the command (so a replay that sends a different one is caught); its currents
#: are the events. k = 0: x was a vector and the reply (rows,); else x is (cols, k).
MATVEC_BATCH_COLUMNS = (Column("step", "<i8"), Column("rows", "<i8"), Column("cols", "<i8"),
                        Column("k", "<i8"), Column("first_address", "<u4"),
                        Column("last_address", "<u4"), Column("x_crc32", "<u4"),
                        Column("offset", "<i8"), Column("count", "<i8"))
MATVEC_EVENT_COLUMNS = (Column("value", "<f4"),)
SNAPSHOT_COLUMNS = (Column("step", "<i8"), Column("seq", "<i8"), Column("read_row", "<i8"),
                    Column("pulse_row", "<i8"), Column("time_unix", "<f8"))
STATUS_COLUMNS = (Column("code", "u1"), Column("step", "<i8"), Column("time_unix", "<f8"),
                  Column("doc_offset", "<i8"), Column("doc_length", "<i8"))
#: /events (1.2): one row per thing that happened to the run (a pause, a refused command, a
#: resumed segment starting), its detail a JSON document in /events/doc.
EVENT_COLUMNS = (Column("step", "<i8"), Column("time_unix", "<f8"), Column("kind", "u1"),
                 Column("doc_offset", "<i8"), Column("doc_length", "<i8"))


@dataclass(frozen=True)
class EventTable:
    """One of the long per-device tables, with the /commit field that counts its rows."""

    name: str                       # "reads", "pulses" or "matvec"
    group: str                      # HDF5 group of its columns
    columns: Tuple[Column, ...]
    count_field: str                # the /commit field of its committed rows


#: The event tables by name (RunLog.event_rows reads them sequentially).
EVENT_TABLES: Mapping[str, EventTable] = {
    "reads": EventTable("reads", "reads/events", READ_EVENT_COLUMNS, "read_events"),
    "pulses": EventTable("pulses", "pulses/events", PULSE_EVENT_COLUMNS, "pulse_events"),
    "matvec": EventTable("matvec", "matvec/events", MATVEC_EVENT_COLUMNS, "matvec_values"),
}

#: Objects every log (schema 1.0 on) has, besides the columns of its tables.
REQUIRED = ("meta/config_yaml", "meta/provenance_json", "meta/purposes", "layout", "commit",
            "reads/batches", "reads/events", "pulses/batches", "pulses/events", "snapshots",
            "snapshots/g_us", "snapshots/chi", "metrics/step/values", "metrics/step/names",
            "metrics/step/step", "metrics/epoch/values", "metrics/epoch/names",
            "metrics/epoch/epoch", "status", "status/doc")


def parse_version(text: str) -> Tuple[int, int]:
    """'1.1' → (1, 1); ValueError or TypeError for anything else."""
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def is_wall_clock(name: str) -> bool:
    """Metrics that measure wall time, so cannot replay exactly (docs/run-log.md)."""
    n = name.lower()
    return (n in ("seconds", "time", "elapsed") or n.endswith(("_seconds", "_s", "_ms"))
            or n.startswith(("wall_", "time_")))


__all__ = ["BATCH_ACKED", "BATCH_SENT", "BATCH_STATUS", "COMMIT_FIELDS", "Column",
           "EVENT_COLUMNS", "EVENT_KINDS", "EVENT_TABLES", "EventTable", "FORMAT",
           "MATVEC_BATCH_COLUMNS", "MATVEC_EVENT_COLUMNS", "PULSE_BATCH_COLUMNS",
           "PULSE_EVENT_COLUMNS", "PURPOSES", "READ_BATCH_COLUMNS", "READ_EVENT_COLUMNS",
           "REQUIRED", "RunLogError", "SCHEMA_MAJOR", "SCHEMA_MINOR", "SCHEMA_VERSION",
           "SNAPSHOT_COLUMNS", "STATUSES", "STATUS_CODE", "STATUS_COLUMNS", "filter_kwargs",
           "is_wall_clock", "parse_version"]
