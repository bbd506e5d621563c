"""The write-ahead journal (hil.run_log.journal): the byte layout of each record, what the
writer journals and when, and what a reader makes of a journal a kill cut short.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_log_fakes import fake_layout, small_cfg  # noqa: E402

from drivers.pulse import DEFAULT_RESET, DEFAULT_SET, PulseKind  # noqa: E402
from hil.run_log import RunLogError, RunLogWriter  # noqa: E402
from hil.run_log.journal import (JOURNAL_MAGIC_V1, BatchAcked, BatchSent,  # noqa: E402
                                 JournalHeader, ReadSent, ReadValues, decode_records,
                                 read_journal)

A2 = np.array([1, 258], np.uint32)
BATCH = BatchSent(batch_id=7, seq=12, step=4, kind=1, purpose=3, amplitude_v=1.5,
                  width_ns=100.0, wire_seq=21, addresses=A2,
                  n_pulses=np.array([2, 0], np.uint16))
ACK = BatchAcked(batch_id=7)
READ = ReadSent(seq=13, step=4, purpose=4, wire_seq=-1, addresses=A2)
VALUES = ReadValues(seq=13, values=np.array([1.0, -2.5], np.float32))

#: Each record's bytes, field by field as its docstring (and docs/run-log.md) lays it out.
GOLDEN = [
    (JournalHeader(commit=3), "50484a32" "0300000000000000"),   # "PHJ2", commit 3
    (BATCH, "01" "0700000000000000" "0c00000000000000" "0400000000000000"   # type, id, seq, step
            "01" "03" "000000000000f83f" "0000000000005940"      # SET, purpose, 1.5 V, 100 ns
            "0200000000000000" "1500000000000000"               # count 2, wire_seq 21
            "01000000" "02010000" "0200" "0000"),               # addresses 1, 258; pulses 2, 0
    (ACK, "02" "0700000000000000"),
    (READ, "03" "0d00000000000000" "0400000000000000" "04"       # type, seq 13, step 4, purpose
           "ffffffffffffffff" "0200000000000000"                 # wire_seq -1, count 2
           "01000000" "02010000"),
    (VALUES, "04" "0d00000000000000" "0200000000000000"          # type, seq 13, count 2
             "0000803f" "000020c0"),                             # 1.0, -2.5
]


def _same(a, b) -> bool:
    """Records compare by their fields (numpy arrays by value)."""
    return type(a) is type(b) and a.to_bytes() == b.to_bytes()


@pytest.mark.parametrize("record, hexbytes", GOLDEN,
                         ids=[type(r).__name__ for r, _ in GOLDEN])
def test_golden_bytes_of_each_record(record, hexbytes):
    assert record.to_bytes() == bytes.fromhex(hexbytes)


@pytest.mark.parametrize("record", [BATCH, ACK, READ, VALUES], ids=lambda r: type(r).__name__)
def test_each_record_kind_round_trips(record):
    data = JournalHeader(commit=1).to_bytes() + record.to_bytes()
    header, records = decode_records(data)
    assert header == JournalHeader(commit=1)
    assert len(records) == 1 and _same(records[0], record)


def test_a_torn_record_is_ignored_wherever_the_cut_falls():
    """A kill in the middle of a write leaves a prefix of it: every whole record before the
    cut is read, the torn one never (whatever byte the cut falls on)."""
    recs = [BATCH, ACK, READ, VALUES]
    whole = [r.to_bytes() for r in recs]
    data = JournalHeader(commit=0).to_bytes() + b"".join(whole)
    ends = np.cumsum([len(JournalHeader(0).to_bytes())] + [len(b) for b in whole])
    for cut in range(ends[0], len(data) + 1):
        _, got = decode_records(data[:cut])
        n_whole = int(np.searchsorted(ends, cut, "right")) - 1
        assert len(got) == n_whole, cut
        assert all(_same(g, r) for g, r in zip(got, recs))
    # garbage after a torn write ends the journal too
    _, got = decode_records(data[:ends[2]] + b"\x09garbage" + data[ends[2]:])
    assert len(got) == 2


def test_read_journal_settles_each_command(tmp_path):
    """Acknowledged batches are 'acked', the last one without an ack is 'sent'; a read is
    done once its values are journaled; an ack of a batch committed as 'sent' is reported
    in acked_rows; commands below the committed counts are skipped."""
    b0 = BatchSent(0, 0, 1, int(PulseKind.SET), 3, 1.0, 50.0, 5, A2, np.array([1, 1], np.uint16))
    r1 = ReadSent(1, 1, 4, 6, A2)
    b1 = BatchSent(1, 2, 2, int(PulseKind.RESET), 5, 2.0, 30.0, 7, A2[:1],
                   np.array([1], np.uint16))
    path = tmp_path / "run.h5.journal"
    path.write_bytes(b"".join(r.to_bytes() for r in (
        JournalHeader(commit=4), BatchAcked(2), b0, BatchAcked(0), r1,
        ReadValues(1, np.array([3.0, 4.0], np.float32)), b1)))
    tail = read_journal(str(path), purpose_name=lambda c: f"p{c}")
    assert tail.commit == 4 and tail.acked_rows == (2,)
    assert [(b.batch_id, b.status, b.purpose) for b in tail.batches] == \
        [(0, "acked", "p3"), (1, "sent", "p5")]
    assert tail.batches[1].pulse.kind is PulseKind.RESET and tail.batches[1].wire_seq == 7
    assert [(c.kind, c.seq, c.done, c.wire_seq) for c in tail.commands] == \
        [("program", 0, True, 5), ("read", 1, True, 6), ("program", 2, False, 7)]
    assert np.array_equal(tail.commands[1].values, [3.0, 4.0])
    assert tail.last.seq == 2 and not tail.last.done
    later = read_journal(str(path), committed_batches=1, committed_commands=2)
    assert [b.batch_id for b in later.batches] == [1]
    assert [c.seq for c in later.commands] == [2] and later.last.seq == 2


def test_a_record_seen_again_starts_its_command_over(tmp_path):
    """Records a kill left behind a restarted journal's header are of committed commands;
    one written again is the command's latest state (its old result no longer counts)."""
    path = tmp_path / "j.journal"
    path.write_bytes(b"".join(r.to_bytes() for r in (
        JournalHeader(commit=2), BATCH, ACK, READ, VALUES, BATCH, READ)))
    tail = read_journal(str(path))
    assert [b.status for b in tail.batches] == ["sent"]
    assert [c.done for c in tail.commands] == [False, False]


def test_an_early_writers_journal_still_reads(tmp_path):
    """PHJ1 journals (schema 1.0 writers before resume) have batch records without wire_seq."""
    b = BatchSent.LAYOUT_V1.pack(1, 0, 0, 3, int(PulseKind.SET), 3, 1.0, 50.0, 2)
    path = tmp_path / "old.journal"
    path.write_bytes(JournalHeader(commit=1, magic=JOURNAL_MAGIC_V1).to_bytes() + b
                     + A2.tobytes() + np.array([4, 5], "<u2").tobytes()
                     + BatchAcked(0).to_bytes())
    tail = read_journal(str(path))
    assert [(x.step, x.status, x.wire_seq) for x in tail.batches] == [(3, "acked", -1)]
    assert np.array_equal(tail.batches[0].n_pulses, [4, 5])


def test_the_writer_journals_each_command_before_it_is_sent(tmp_path):
    """What RunLogWriter's hooks put in the journal, record by record: one write per
    command, results riding on the next write, both halves of a combined command in one."""
    w = RunLogWriter(str(tmp_path / "w.h5"), small_cfg(flush_every=1000))
    w.begin(config={}, provenance={}, layout=fake_layout())
    a = np.arange(3, dtype=np.uint32)

    def journal() -> bytes:
        return open(w.journal_path, "rb").read()

    w.before_program(1, a, np.array([2, 0, 1]), DEFAULT_SET, "update", wire_seq=40)
    w.on_program(1, a, np.array([2, 0, 1]), DEFAULT_SET, "update")
    after_batch = journal()
    w.before_read(1, a, "readback", wire_seq=41)
    w.on_read(1, a, np.array([1.0, 2.0, 3.0]), "readback")
    w.before_program_read(2, a[:2], np.array([1, 1]), DEFAULT_RESET, "refresh_reset",
                          "refresh_readback", wire_seq=42)
    data = journal()
    set_code, reset_code = 3, 5
    expected = [
        JournalHeader(commit=1),
        BatchSent(0, 0, 1, int(PulseKind.SET), set_code, DEFAULT_SET.amplitude_v,
                  DEFAULT_SET.width_ns, 40, a, np.array([2, 0, 1], np.uint16)),
        BatchAcked(0),
        ReadSent(1, 1, 4, 41, a),
        ReadValues(1, np.array([1.0, 2.0, 3.0], np.float32)),
        BatchSent(1, 2, 2, int(PulseKind.RESET), reset_code, DEFAULT_RESET.amplitude_v,
                  DEFAULT_RESET.width_ns, 42, a[:2], np.array([1, 1], np.uint16)),
        ReadSent(3, 2, 7, 42, a[:2]),
    ]
    assert data == b"".join(r.to_bytes() for r in expected)
    # the batch went out before the ack existed; the ack waits for the next write
    assert after_batch == b"".join(r.to_bytes() for r in expected[:2])
    w.flush()                         # committed: the journal starts afresh
    assert open(w.journal_path, "rb").read() == JournalHeader(commit=2).to_bytes()
    w.finish("completed")
    assert not os.path.exists(w.journal_path)


def test_journal_records_batches_before_they_are_sent(tmp_path):
    path = str(tmp_path / "j.h5")
    w = RunLogWriter(path, small_cfg(flush_every=1000))
    w.begin(config={}, provenance={}, layout=fake_layout())
    a = np.arange(5, dtype=np.uint32)
    w.before_program(1, a, np.full(5, 2), DEFAULT_SET, "update")
    w.on_program(1, a, np.full(5, 2), DEFAULT_SET, "update")
    w.before_program(2, a[:3], np.ones(3), DEFAULT_RESET, "refresh_reset")
    data = open(w.journal_path, "rb").read()    # what a SIGKILL here would leave
    tail = read_journal(w.journal_path)
    assert [(b.step, b.status) for b in tail.batches] == [(1, "acked"), (2, "sent")]
    assert tail.batches[1].pulse == DEFAULT_RESET and tail.batches[1].purpose == "purpose#5"
    assert np.array_equal(tail.batches[0].n_pulses, [2] * 5)
    cut = tmp_path / "cut.journal"
    cut.write_bytes(data[:-3])                  # killed in the middle of the last write
    assert [b.step for b in read_journal(str(cut)).batches] == [1]
    bad = tmp_path / "bad.journal"
    bad.write_bytes(b"XXXX" + data[4:])
    with pytest.raises(RunLogError, match="not a pcm-hil run-log journal"):
        read_journal(str(bad))
    w.flush()                                   # committed: the journal starts afresh
    assert read_journal(w.journal_path).batches == []
    w.finish("completed")
    assert not os.path.exists(w.journal_path)


def test_a_missing_or_empty_journal_adds_nothing(tmp_path):
    assert read_journal(str(tmp_path / "none.journal")).batches == []
    empty = tmp_path / "empty.journal"
    empty.write_bytes(JournalHeader(commit=0).to_bytes()[:5])   # killed writing the header
    tail = read_journal(str(empty))
    assert tail.batches == [] and tail.commands == () and tail.last is None
