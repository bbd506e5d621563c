"""The run log: one self-describing HDF5 file per run (schema in docs/run-log.md).

`RunLogWriter` is the Recorder the trainer writes through; `RunLog` is the analyst's reader.
One role per module:

- `schema`      format tag and version, table columns, code tables, /commit, RunLogError
- `packing`     hook arguments checked and packed into stored bytes (addresses, pulse counts)
- `tables`      the buffered append-only tables the writer appends at each commit
- `h5file`      creating the HDF5 file, and opening one for reading (live, crashed, damaged)
- `writer`      RunLogWriter
- `journal`     the write-ahead journal: its records, the writer side, the reader side
- `records`     the named records readers return (RunStatus, RunEvent, PulseBatch)
- `reader`      RunLog
- `provenance`  software versions, git commit and host of the run
"""
from hil.run_log.journal import (JOURNAL_MAGIC, JOURNAL_MAGIC_V1, JOURNAL_SUFFIX, NOT_SENT,
                                 BatchAcked,
                                 BatchSent, JournalCommand, JournalHeader, JournalTail,
                                 JournalWriter, ReadSent, ReadValues, read_journal)
from hil.run_log.provenance import ARITHMETIC, arithmetic_mismatch, environment_provenance
from hil.run_log.reader import RunLog
from hil.run_log.records import PulseBatch, RunEvent, RunStatus
from hil.run_log.schema import (BATCH_ACKED, BATCH_CHUNK, BATCH_SENT, BATCH_STATUS,
                                COMMIT_FIELDS, EVENT_CHUNK, EVENT_COLUMNS, EVENT_KINDS,
                                EVENT_TABLES, FORMAT,
                                MATVEC_BATCH_COLUMNS, MATVEC_EVENT_COLUMNS, NAME_BYTES,
                                PULSE_BATCH_COLUMNS, PULSE_EVENT_COLUMNS, PURPOSE_BYTES,
                                PURPOSES, READ_BATCH_COLUMNS, READ_EVENT_COLUMNS,
                                SCHEMA_MAJOR, SCHEMA_MINOR, SCHEMA_VERSION, SNAPSHOT_CHUNK,
                                SNAPSHOT_COLUMNS, STATUS_CODE, STATUS_COLUMNS, STATUSES,
                                Column, EventTable, RunLogError, is_wall_clock)
from hil.run_log.writer import RunLogWriter

__all__ = ["ARITHMETIC", "BATCH_ACKED", "BATCH_CHUNK", "BATCH_SENT", "BATCH_STATUS", "BatchAcked",
           "BatchSent", "COMMIT_FIELDS", "Column", "EVENT_CHUNK", "EVENT_COLUMNS",
           "EVENT_KINDS", "EVENT_TABLES",
           "EventTable", "FORMAT", "JOURNAL_MAGIC", "JOURNAL_MAGIC_V1", "JOURNAL_SUFFIX",
           "JournalCommand", "JournalHeader", "JournalTail", "JournalWriter",
           "MATVEC_BATCH_COLUMNS", "MATVEC_EVENT_COLUMNS", "NAME_BYTES", "NOT_SENT",
           "PULSE_BATCH_COLUMNS", "PULSE_EVENT_COLUMNS", "PURPOSES", "PURPOSE_BYTES",
           "PulseBatch", "READ_BATCH_COLUMNS", "READ_EVENT_COLUMNS", "ReadSent", "ReadValues",
           "RunEvent", "RunLog", "RunLogError", "RunLogWriter", "RunStatus", "SCHEMA_MAJOR",
           "SCHEMA_MINOR", "SCHEMA_VERSION", "SNAPSHOT_CHUNK", "SNAPSHOT_COLUMNS",
           "STATUSES", "STATUS_CODE", "STATUS_COLUMNS", "arithmetic_mismatch",
           "environment_provenance", "is_wall_clock", "read_journal"]
