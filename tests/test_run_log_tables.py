"""The buffered append-only tables (hil.run_log.tables): what is buffered lands on disk, in
columns, at each write, on a real HDF5 file."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from hil.run_log import READ_BATCH_COLUMNS, READ_EVENT_COLUMNS, STATUS_COLUMNS, RunLogError
from hil.run_log.tables import CodeTable, CommandTable, DocumentTable, MetricsTable


def test_a_command_table_turns_buffered_commands_into_columns(tmp_path):
    """A read is one buffered list (batch row + the bytes of its per-device columns); at
    write the batch columns are shared by all its devices in the event table."""
    with h5py.File(tmp_path / "t.h5", "w") as f:
        t = CommandTable(f.create_group("reads"), READ_BATCH_COLUMNS, READ_EVENT_COLUMNS,
                         ("address", "value"))
        cmds = [(0, 1, 4, [3, 1, 2], [1.5, 2.5, 3.5]), (1, 1, 8, [7], [9.0]),
                (2, 2, 4, [5, 6], [0.25, 0.5])]
        for seq, step, purpose, a, v in cmds:
            first = t.event_total
            t.n += len(a)
            t.pending.append([seq, step, purpose, first, len(a),
                              np.array(a, "<u4").tobytes(), np.array(v, "<f4").tobytes()])
            if seq == 1:
                t.write()          # two writes: the second appends
        t.write()
        assert (t.batch_rows, t.event_rows, t.n, t.pending) == (3, 6, 0, [])
        b, e = f["reads/batches"], f["reads/events"]
        assert b["seq"][:].tolist() == [0, 1, 2] and b["offset"][:].tolist() == [0, 3, 4]
        assert b["count"][:].tolist() == [3, 1, 2] and b["purpose"].dtype == np.uint8
        assert e["address"][:].tolist() == [3, 1, 2, 7, 5, 6]
        assert e["value"][:].tolist() == [1.5, 2.5, 3.5, 9.0, 0.25, 0.5]
        assert e["step"][:].tolist() == [1, 1, 1, 1, 2, 2]
        assert e["purpose"][:].tolist() == [4, 4, 4, 8, 4, 4]


def test_a_metrics_table_grows_columns_and_fills_the_gaps_with_nan(tmp_path):
    with h5py.File(tmp_path / "m.h5", "w") as f:
        m = MetricsTable(f.create_group("step"), "step", "m.h5")
        m.add(1, {"loss": 0.5}, "step")
        m.write()
        m.add(2, {"loss": 0.4, "pulses": 3}, "step")
        m.add(3, {"pulses": 4}, "step")
        m.write()
        names = [n.decode() for n in f["step/names"][:]]
        assert names == ["loss", "pulses"] and f["step/step"][:].tolist() == [1, 2, 3]
        v = f["step/values"][:]
        assert v.shape == (3, 2) and v[1].tolist() == [0.4, 3.0]
        assert np.isnan(v[0, 1]) and np.isnan(v[2, 0]) and v[2, 1] == 4.0
        with pytest.raises(RunLogError, match="metric 'loss' at step 4 is not a number"):
            m.add(4, {"loss": "high"}, "step")
        with pytest.raises(RunLogError, match="longer than 64 bytes"):
            m.add(4, {"x" * 65: 1.0}, "step")
        m.write()     # a refused row leaves nothing behind
        assert f["step/step"].shape == (3,) and f["step/names"].shape == (2,)


def test_a_code_table_gives_known_names_fixed_codes_and_others_the_next_free_one(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        ds = f.create_dataset("kinds", shape=(0,), maxshape=(None,), dtype="S8", chunks=(8,))
        t = CodeTable(ds, ("paused", "resumed"), "event kind", "c.h5")
        assert (t.code("resumed"), t.code("paused")) == (2, 1)
        t.write()
        assert [n for n in ds[:]] == [b"paused", b"resumed"]
        assert t.code("refused") == 3 == t.code("refused")
        for bad in ("", "x" * 9, 7):
            with pytest.raises(RunLogError, match="event kind .* is not a string of 1..8"):
                t.code(bad)
        t.write()
        assert ds[:].tolist() == [b"paused", b"resumed", b"refused"] and t.on_disk == 3
        for i in range(252):
            t.code(f"k{i}")
        with pytest.raises(RunLogError, match="more than 255 distinct event kinds"):
            t.code("one_more")


def test_a_document_table_keeps_each_rows_document_back_to_back(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        t = DocumentTable(f.create_group("status"), STATUS_COLUMNS, 64)
        t.add([1, 0, 10.5], b'{"a": 1}')
        t.add([2, 5, 11.5], b"")
        t.add([4, 9, 12.5], '{"why": "µ"}'.encode())
        t.write()
        g = f["status"]
        assert g["code"][:].tolist() == [1, 2, 4] and g["step"][:].tolist() == [0, 5, 9]
        off, ln = g["doc_offset"][:].tolist(), g["doc_length"][:].tolist()
        assert off == [0, 8, 8] and ln == [8, 0, 13] and t.doc_bytes == 21
        doc = g["doc"][:].tobytes()
        assert [doc[o:o + n] for o, n in zip(off, ln)] == \
            [b'{"a": 1}', b"", '{"why": "µ"}'.encode()]
