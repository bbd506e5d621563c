"""The run-log format (hil.run_log.schema): documented item by item, code tables that match
the run states, version parsing, the wall-clock naming rule.
"""
from __future__ import annotations

import os
import sys

import h5py
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
from run_log_fakes import fake_log  # noqa: E402

from hil.run_log import COMMIT_FIELDS, STATUS_CODE, STATUSES, is_wall_clock  # noqa: E402
from hil.run_log.schema import EVENT_TABLES, parse_version  # noqa: E402
from hil.run_state import RunState  # noqa: E402


def test_schema_doc_lists_every_dataset(tmp_path):
    """docs/run-log.md documents every dataset and attribute the writer creates."""
    path, _ = fake_log(tmp_path)
    doc = open(os.path.join(TESTS, "..", "docs", "run-log.md"), encoding="utf-8").read()
    names = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
        names += [f"@{a}" for a in f.attrs]
        names += [f"@{a}" for a in f["commit"].attrs] + [f"@{a}" for a in f["layout"].attrs]
        names += [f"@{a}" for a in f["snapshots/chi"].attrs]
    for n in names:
        if n.startswith("layout/"):
            continue   # one dataset per layout key
        if n.startswith("@"):
            assert f"`{n[1:]}`" in doc, n
            continue
        parent, _, leaf = n.rpartition("/")
        assert f"/{n}" in doc or f"`{n}`" in doc or (f"`/{parent}" in doc and
                                                     f"| `{leaf}` |" in doc), n
    for field in COMMIT_FIELDS:
        assert f"`{field}`" in doc, field
    for table in EVENT_TABLES.values():
        assert table.count_field in COMMIT_FIELDS


def test_status_codes_are_the_run_states_in_order():
    """/status/code numbers the run states 1..4 (docs/run-log.md), as logs always had."""
    assert STATUSES == ("running", "completed", "aborted", "failed")
    assert [STATUS_CODE[s] for s in RunState] == [1, 2, 3, 4]


def test_schema_versions_parse():
    assert parse_version("1.1") == (1, 1) and parse_version("2") == (2, 0)
    for bad in ("x.1", "1.y", None):
        with pytest.raises((TypeError, ValueError)):
            parse_version(bad)


def test_wall_clock_metrics_are_named_by_rule():
    assert all(is_wall_clock(n) for n in ("seconds", "Elapsed", "train_seconds", "epoch_s",
                                          "step_ms", "wall_start", "time_per_step"))
    assert not any(is_wall_clock(n) for n in ("loss", "set_pulses", "sessions", "g_us"))
