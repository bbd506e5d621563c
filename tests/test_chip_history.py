"""drivers.chip_history: a chip continues a record of commands only if it is the record's boot,
exactly as far as the record's commands take it, give or take the one uncertain command;
everything else is refused with one error naming what differs."""
import pytest

from drivers.chip_history import (HistoryExpectation, HistoryMismatch, HistoryPosition,
                                  SessionHistory, UncertainCommand, check_history,
                                  chip_position)
from drivers.errors import ChipHistoryError
from firmware_interface.messages import HistoryReply
from firmware_interface.protocol import Opcode

START = HistoryPosition("00000000000000aa", commands=10, reads=4, programs=3, program_reads=2,
                        matvecs=1, last_seq=99, last_command="READ")


def moved(by_reads=0, by_programs=0, by_program_reads=0, by_matvecs=0, last_seq=None,
          boot="00000000000000aa"):
    return HistoryPosition(boot, START.commands + by_reads + by_programs + by_program_reads
                           + by_matvecs, START.reads + by_reads, START.programs + by_programs,
                           START.program_reads + by_program_reads, START.matvecs + by_matvecs,
                           0, last_seq, "PROGRAM_READ")


def expect(programs=5, reads=5, uncertain=None):
    return HistoryExpectation("run log r.h5", START, programs, reads, 0, uncertain)


def refused(found, expected):
    with pytest.raises(ChipHistoryError) as e:
        check_history(found, expected)
    return e.value


def test_operations_count_a_program_read_as_both():
    """A log holds a PROGRAM_READ as a program batch and a read: so do operations."""
    assert START.operations == (5, 6, 1)
    assert moved(by_program_reads=2, by_reads=1).operations == (7, 9, 1)


def test_exactly_where_the_record_left_it():
    # 5 program and 5 read operations: 4 PROGRAM_READs, a PROGRAM and a READ
    assert check_history(moved(1, 1, 4), expect()) is False


def test_the_uncertain_command_counts_only_under_its_own_sequence_number():
    u = UncertainCommand.of(Opcode.PROGRAM_READ, 1234)
    assert (u.programs, u.reads, u.others) == (1, 1, 0)
    assert check_history(moved(1, 1, 4), expect(uncertain=u)) is False      # never executed
    assert check_history(moved(1, 1, 5, last_seq=1234), expect(uncertain=u)) is True
    e = refused(moved(1, 1, 5, last_seq=77), expect(uncertain=u))
    assert e.mismatch is HistoryMismatch.LAST_COMMAND
    assert "seq 1234" in str(e) and "seq 77" in str(e)


def test_an_uncertain_command_sent_in_parts_may_have_any_first_parts_executed():
    """A station guard sends a large command as consecutive commands: a kill leaves some
    first k of them executed, the last under seq wire_seq + k - 1 (wrapping at 2^32)."""
    u = UncertainCommand(2 ** 32 - 2, programs=1, parts=3)   # seqs 2^32-2, 2^32-1, 0
    assert check_history(moved(1, 1, 4), expect(uncertain=u)) is False
    for k, last in ((1, 2 ** 32 - 2), (2, 2 ** 32 - 1), (3, 0)):
        assert check_history(moved(1, 1 + k, 4, last_seq=last), expect(uncertain=u)) is True
    e = refused(moved(1, 3, 4, last_seq=2 ** 32 - 2), expect(uncertain=u))   # 2 parts, seq 1st
    assert e.mismatch is HistoryMismatch.LAST_COMMAND
    assert "sent in 3 parts, seq 4294967294..0" in str(e)
    e = refused(moved(1, 5, 4, last_seq=1), expect(uncertain=u))   # a fourth program
    assert e.mismatch is HistoryMismatch.FURTHER and "+1 program operations" in str(e)


def test_another_boot_is_refused_naming_both():
    e = refused(moved(1, 1, 4, boot="00000000000000bb"), expect())
    assert e.mismatch is HistoryMismatch.BOOT and e.found.boot_id == "00000000000000bb"
    msg = str(e)
    assert "00000000000000aa" in msg and "00000000000000bb" in msg
    assert "power-cycled" in msg and "run log r.h5" in msg


def test_a_history_further_than_the_record_names_the_difference_and_why():
    e = refused(moved(1, 1, 7), expect(uncertain=UncertainCommand.of(Opcode.READ, 5)))
    assert e.mismatch is HistoryMismatch.FURTHER
    msg = str(e)
    assert "+3 program, +2 read operations" in msg and "another client" in msg
    assert refused(moved(1, 1, 4, by_matvecs=1), expect()).mismatch is HistoryMismatch.FURTHER


def test_a_history_shorter_than_the_record_is_refused_too():
    e = refused(moved(0, 1, 4), expect())
    assert e.mismatch is HistoryMismatch.BEHIND and "-1 read operations" in str(e)


def test_positions_from_the_wire_and_the_log():
    reply = HistoryReply(0xAA, 99, int(Opcode.READ), 10, 4, 3, 2, 1, 0)
    pos = HistoryPosition.from_reply(reply)
    assert pos == START and HistoryPosition.from_dict(pos.to_dict()) == pos
    assert HistoryPosition.from_reply(HistoryReply(0xAA)).last_seq is None
    with pytest.raises(ValueError, match="not a chip history position"):
        HistoryPosition.from_dict({"boot_id": "aa"})


def test_a_session_expects_its_own_commands_from_its_start():
    s = SessionHistory()
    assert s.expectation() is None               # no start seen: nothing exact to expect
    s.observe(START)
    done = s.sending(Opcode.PROGRAM_READ, 7)
    s.settled(done, executed=True)
    s.observe(moved(by_reads=9))                 # after the first command: not a start
    nacked = s.sending(Opcode.PROGRAM, 8)
    s.settled(nacked, executed=False)          # NACKed: applied nothing
    pending = s.sending(Opcode.READ, 9)
    e = s.expectation()
    assert e.base == START and (e.programs, e.reads, e.others) == (1, 1, 0)
    assert e.uncertain == pending and "while the link was down" in e.further
    s.sending(Opcode.READ, 10)                   # two outcomes unknown: no exact expectation
    assert s.expectation() is None


def test_a_chip_that_cannot_report_its_history_is_refused_not_assumed():
    from sim_backend import SimChipSpec
    chip = SimChipSpec(rows=8, cols=8).build()
    with pytest.raises(ChipHistoryError) as e:
        chip_position(chip, "run log r.h5")
    assert e.value.mismatch is HistoryMismatch.UNREPORTED
    assert "cannot report its boot and command history" in str(e.value)
    assert "run log r.h5" in str(e.value) and "sim-1" in str(e.value)


def test_a_resent_command_counts_only_if_it_had_not_run_before_the_session():
    s = SessionHistory()
    s.observe(START)                                   # its last command: seq 99
    assert s.resending(Opcode.READ, 99) is None        # answered from memory: no count
    other = SessionHistory()
    other.observe(START)
    u = other.resending(Opcode.PROGRAM, 100)           # had not run: executed now
    other.settled(u, executed=True)
    assert other.expectation().programs == 1
    other.settled(other.resending(Opcode.PROGRAM, 98), executed=True)   # after others:
    assert other.expectation() is None                 # whether it had run is unknown
