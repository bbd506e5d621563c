"""The buffered append-only tables (hil.run_log.tables): what is buffered lands on disk, in
columns, at each write, on a real HDF5 file."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from hil.run_log import READ_BATCH_COLUMNS, READ_EVENT_COLUMNS, RunLogError
from hil.run_log.tables import CommandTable, MetricsTable


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
