"""hil.run_history: a run's log records where the chip's history stood when the run began, and
a resume continues the log only on that boot, exactly where the log's commands left it."""
import numpy as np
import pytest

from drivers.chip_history import HistoryMismatch, HistoryPosition, UncertainCommand
from drivers.errors import ChipHistoryError
from drivers.fpga import FpgaChip
from drivers.pulse import DEFAULT_SET
from hil.backend_url import open_backend
from hil.run_control import RunAborted, RunControl
from hil.run_history import check_log_chip, expected_history
from hil.run_log import RunLog, RunLogWriter
from hil.training import run_experiment
from sim_backend import EmulatorServer, Firmware

from conftest import small_config


class StopAt(RunControl):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.at = step

    def check(self, step: int) -> None:
        if step >= self.at:
            raise RunAborted(f"test stop at step {step}")


def _cfg():
    return small_config(data={"train_examples": 200, "test_examples": 100},
                        log={"flush_every_steps": 7})


def _aborted_run(tmp_path, small_data, server, stop=25):
    cfg = _cfg()
    path = str(tmp_path / "r.h5")
    with FpgaChip(server.url, timeout_s=2.0) as chip:
        with pytest.raises(RunAborted):
            run_experiment(cfg, chip, RunLogWriter(path, cfg), data=small_data,
                           control=StopAt(stop))
    return path


def test_a_run_records_the_chip_history_it_began_at(tmp_path, small_data):
    server = EmulatorServer(Firmware(_cfg().sim_chip_spec().build()),
                            listen=("127.0.0.1", 0)).start()
    try:
        with FpgaChip(server.url, timeout_s=2.0) as chip:   # an earlier session's commands
            chip.read(np.arange(5))
        path = _aborted_run(tmp_path, small_data, server)
        with RunLog(path) as lg:
            rec = lg.provenance["chip_history"]
            start = HistoryPosition.from_dict(rec["start"])
            assert rec["boot_id"] == start.boot_id == f"{server.firmware.boot_id:016x}"
            assert (start.commands, start.reads) == (1, 1)
            e = expected_history(lg)
            assert (e.programs, e.reads, e.uncertain) == (lg.counts["pulse_batches"],
                                                          lg.counts["read_batches"], None)
    finally:
        server.stop()


def test_the_chip_must_be_where_the_log_left_it(tmp_path, small_data):
    """Checked before anything is sent: the chip as the aborted run left it passes; one more
    command by another client, or a power cycle, is refused naming the log."""
    chip_spec = _cfg().sim_chip_spec()
    server = EmulatorServer(Firmware(chip_spec.build()), listen=("127.0.0.1", 0)).start()
    try:
        path = _aborted_run(tmp_path, small_data, server)
        with RunLog(path) as lg, FpgaChip(server.url, timeout_s=2.0) as chip:
            position, executed = check_log_chip(lg, chip)
            assert not executed and position.boot_id == chip.boot_id
            chip.read(np.arange(3))                       # another client's command
            with pytest.raises(ChipHistoryError) as e:
                check_log_chip(lg, chip)
            assert e.value.mismatch is HistoryMismatch.FURTHER
            assert "further than run log r.h5 knows (+1 read operations" in str(e.value)
            assert "a later segment of this run" in str(e.value)
    finally:
        server.stop()
    cycled = EmulatorServer(Firmware(chip_spec.build()), listen=("127.0.0.1", 0)).start()
    try:
        with RunLog(path) as lg, FpgaChip(cycled.url, timeout_s=2.0) as chip:
            with pytest.raises(ChipHistoryError) as e:
                check_log_chip(lg, chip)
            assert e.value.mismatch is HistoryMismatch.BOOT and "power-cycled" in str(e.value)
    finally:
        cycled.stop()


def test_a_log_without_the_chip_history_is_not_assumed_to_fit(tmp_path, small_data):
    """A run on a chip that reports no history (here the in-process simulator) says so in its
    log; such a log cannot be checked against a chip, so it is refused, naming it."""
    cfg = _cfg()
    path = str(tmp_path / "s.h5")
    with pytest.raises(RunAborted):
        run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()),
                       RunLogWriter(path, cfg), data=small_data, control=StopAt(5))
    with RunLog(path) as lg:
        assert "reports no boot or history" in lg.provenance["chip_history"]["unavailable"]
        with pytest.raises(ChipHistoryError) as e:
            expected_history(lg)
    assert e.value.mismatch is HistoryMismatch.UNREPORTED
    assert "s.h5 does not record where the chip's history stood" in str(e.value)


def test_a_command_that_failed_in_flight_is_the_one_uncertain(tmp_path):
    """A PROGRAM_READ whose reply never came (the run failed inside it): the log commits its
    batch as sent, the kept journal holds its read half; together they are one uncertain
    command, under the wire seq both were journaled with."""
    start = HistoryPosition("00000000000000aa", 3, reads=3)
    path = str(tmp_path / "f.h5")
    w = RunLogWriter(path, small_config(log={"flush_every_steps": 1000}))
    w.begin(config={}, provenance={"chip_history": {"boot_id": start.boot_id,
                                                    "start": start.to_dict()}},
            layout={"layer0.plus": np.arange(4, dtype=np.uint32)})
    a, n = np.arange(3, dtype=np.uint32), np.full(3, 2)
    w.before_program(1, a, n, DEFAULT_SET, "update", wire_seq=41)
    w.on_program(1, a, n, DEFAULT_SET, "update")
    w.before_read(1, a, "readback", wire_seq=42)
    w.on_read(1, a, np.array([1.5, 2.5, 3.5], np.float32), "readback")
    w.before_program_read(2, a[:2], n[:2], DEFAULT_SET, "update", "readback", wire_seq=43)
    w.finish("failed", "LinkError: no reply")
    with RunLog(path) as lg:
        e = expected_history(lg)
    assert e.base == start and (e.programs, e.reads) == (1, 1)
    assert e.uncertain == UncertainCommand(43, programs=1, reads=1)
