"""The run stack (hil.run_stack): what a run talks to, built in one place, in an order that
leaves nothing behind when a run cannot start."""
from __future__ import annotations

import os

import pytest

from conftest import small_config
from drivers.abilities import GuardedBackend, SequencedBackend, find_ability
from drivers.errors import ConfigError, HilError, LinkError
from drivers.layers import BackendLayer
from drivers.safety import LimitedBackend
from hil.replay import ResumeBackend
from hil.run_control import RunAborted, RunControl
from hil.run_log import RunLog, RunLogError, read_header
from hil.run_stack import RunRequest, default_log_path, open_run_stack
from hil.station import load_station
from hil.training import run_experiment
from sim_backend.sim_chip import SimulatedChip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATION = os.path.join(ROOT, "configs", "station_sim.yaml")
#: Nothing listens here: opening this chip fails with a LinkError.
DEAD_CHIP = "socket://127.0.0.1:9?timeout=0.2&retries=0"


def _layers(backend):
    out = [backend]
    while isinstance(out[-1], BackendLayer):
        out.append(out[-1].inner)
    return [type(b) for b in out]


def test_a_bench_run_is_the_chip_under_the_station_guard_with_its_log_and_monitors(tmp_path,
                                                                                  small_data):
    station = load_station(STATION)
    log = str(tmp_path / "r.h5")
    req = RunRequest(small_config(), station=station, log_path=log)
    assert req.url == station.chip.url            # the station's chip link by default
    with open_run_stack(req) as stack:
        assert _layers(stack.backend) == [LimitedBackend, SimulatedChip]
        guard = find_ability(stack.backend, GuardedBackend)
        assert guard.station_limits == station.safety
        assert stack.monitor is not None and stack.log_path == log
        assert set(stack.provenance) >= {"station", "instruments"}
        s = run_experiment(req.config, stack.backend, stack.recorder, data=small_data,
                           monitor=stack.monitor, provenance=stack.provenance)
    with RunLog(log) as lg:
        assert lg.status.status == "completed"
        assert lg.summary["state_digest"] == s["state_digest"]
        assert lg.provenance["station"]["name"] == station.name


def test_a_dry_run_is_a_simulated_stand_in_under_the_limits_touching_nothing(tmp_path):
    station = load_station(STATION)
    req = RunRequest(small_config(), backend_url=DEAD_CHIP, station=station, dry_run=True)
    with open_run_stack(req) as stack:            # the dead chip is never opened
        assert _layers(stack.backend) == [LimitedBackend, SimulatedChip]
        assert stack.recorder is None and stack.monitor is None
        assert "instruments" not in stack.provenance


def test_a_bad_log_path_fails_before_the_chip_is_opened(tmp_path):
    log = tmp_path / "exists.h5"
    log.write_bytes(b"")
    with pytest.raises(RunLogError, match="refusing to overwrite"):
        open_run_stack(RunRequest(small_config(), backend_url=DEAD_CHIP, log_path=str(log)))


def test_a_chip_that_cannot_be_opened_leaves_no_log(tmp_path):
    """The log is created only once the chip has accepted the run: a dead (or refusing)
    chip leaves nothing that would make the same --run refuse once the chip is back."""
    log = str(tmp_path / "r.h5")
    with pytest.raises(LinkError):
        open_run_stack(RunRequest(small_config(), backend_url=DEAD_CHIP, log_path=log))
    assert os.listdir(tmp_path) == []


def test_a_stack_that_fails_after_the_chip_opened_marks_its_log_failed(tmp_path,
                                                                       tiny_trained_log):
    log = str(tmp_path / "r.h5")
    with pytest.raises(ConfigError, match="only the in-process simulated chip"):
        open_run_stack(RunRequest(small_config(), backend_url=f"replay://{tiny_trained_log}",
                                  log_path=log, chip_state=str(tmp_path / "c.state")))
    with pytest.raises(RunLogError, match="never started.*final status failed: ConfigError"):
        RunLog(log)


def test_combinations_that_cannot_work_are_one_error_naming_the_option(tmp_path):
    cfg = small_config()
    with pytest.raises(ConfigError, match="--chip-state: needs a run log"):
        open_run_stack(RunRequest(cfg, chip_state=str(tmp_path / "c.state")))
    existing = tmp_path / "old.state"
    existing.write_bytes(b"x")
    with pytest.raises(ConfigError, match="--chip-state: .*exists"):
        open_run_stack(RunRequest(cfg, log_path=str(tmp_path / "r.h5"),
                                  chip_state=str(existing)))
    with pytest.raises(ConfigError, match="--resume: a dry run"):
        RunRequest(cfg, resume_from="r.h5", dry_run=True, log_path="x.h5").validate()


def test_a_chip_state_file_is_for_the_in_process_chip_only(tmp_path, tiny_trained_log):
    with pytest.raises(ConfigError, match="only the in-process simulated chip"):
        open_run_stack(RunRequest(small_config(), backend_url=f"replay://{tiny_trained_log}",
                                  log_path=str(tmp_path / "r.h5"),
                                  chip_state=str(tmp_path / "c.state")))


class StopAfter(RunControl):
    """Asks the run to stop after step `n` (as a Ctrl-C during that step would)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def check(self, step):
        if step >= self.n:
            self.request_stop("test")
        super().check(step)


def test_a_resumed_run_is_the_resume_layer_over_the_station_guard(tmp_path, small_data):
    """An aborted sim:// run with a chip state resumes as resume layer → station guard →
    chip (what the resume serves from the log never reaches the guard's chip; what goes
    live passes the guard), with the resume's segments in the new log's provenance and its
    default name."""
    cfg = small_config(data={"train_examples": 300, "test_examples": 100},
                       log={"flush_every_steps": 50})
    first = str(tmp_path / "r.h5")
    control = StopAfter(1)
    req = RunRequest(cfg, log_path=first, chip_state=str(tmp_path / "r.state"))
    with open_run_stack(req) as stack:
        assert stack.provenance["chip_state"] == os.path.abspath(tmp_path / "r.state")
        with pytest.raises(RunAborted):
            run_experiment(cfg, stack.backend, stack.recorder, data=small_data,
                           control=control, provenance=stack.provenance)
    notes = []
    again = RunRequest.resume(first, backend_url="sim://", station=load_station(STATION),
                              note=notes.append)
    assert again.log_path == str(tmp_path / "r-2.h5") and again.config == cfg
    with open_run_stack(again, note=notes.append) as stack:
        assert _layers(stack.backend) == [ResumeBackend, LimitedBackend, SimulatedChip]
        assert isinstance(find_ability(stack.backend, SequencedBackend), ResumeBackend)
        assert stack.provenance["resume"]["segment"] == 2
        assert any("resuming" in n for n in notes)
        s = run_experiment(cfg, stack.backend, stack.recorder, data=small_data,
                           provenance=stack.provenance)
    assert stack.resumed.committed > 0 and s["steps"] == 300


def test_a_chip_state_file_that_cannot_be_written_is_refused_before_anything(tmp_path,
                                                                            readonly_dir):
    """--chip-state is saved at every commit of the log: a path that cannot be written is
    refused at once (not at the first commit, with the chip already programmed)."""
    log = str(tmp_path / "r.h5")
    with pytest.raises(ConfigError, match=r"--chip-state: cannot write .*c\.state: "
                                          r"(read-only file system|Permission denied)"):
        open_run_stack(RunRequest(small_config(), log_path=log,
                                  chip_state=str(readonly_dir / "c.state")))
    assert not os.path.exists(log)


def _aborted_run(tmp_path, small_data, station):
    """A sim:// run with a chip state under `station`, stopped after its first step."""
    cfg = small_config(data={"train_examples": 300, "test_examples": 100},
                       log={"flush_every_steps": 50})
    first = str(tmp_path / "r.h5")
    req = RunRequest(cfg, log_path=first, chip_state=str(tmp_path / "r.state"),
                     station=station)
    with open_run_stack(req) as stack:
        with pytest.raises(RunAborted):
            run_experiment(cfg, stack.backend, stack.recorder, data=small_data,
                           control=StopAfter(1), provenance=stack.provenance)
    return first


def test_a_resumed_run_keeps_the_station_it_was_started_under(tmp_path, small_data):
    """Without --station a resumed run is held to the logged station's limits, which the
    new log records again; a station given at resume may narrow them, never widen them."""
    import dataclasses
    station = load_station(STATION)
    first = _aborted_run(tmp_path, small_data, station)
    again = RunRequest.resume(first)
    assert again.station.safety == station.safety and again.station.name == station.name
    with open_run_stack(again) as stack:
        assert find_ability(stack.backend, GuardedBackend).station_limits == station.safety
        assert stack.provenance["station"]["safety"]["max_pulses_per_device"] == 32
        # stop before anything goes live: only the planning is under test here
    wider = dataclasses.replace(station, safety=dataclasses.replace(
        station.safety, max_pulses_per_device=64))
    with pytest.raises(ConfigError, match=r"safety\.max_pulses_per_device: 64 would widen "
                                          r"the station 'sim-bench' the run was started "
                                          r"under .*r\.h5\) limit of 32"):
        RunRequest.resume(first, station=wider)
    narrower = dataclasses.replace(station, safety=dataclasses.replace(
        station.safety, max_pulses_per_device=16))
    assert RunRequest.resume(first, station=narrower).station.safety.max_pulses_per_device \
        == 16
    # the stack opened above began nothing: a later resume goes back to r.h5
    assert not read_header(str(tmp_path / "r-2.h5")).began
    assert RunRequest.resume(first).resume_from == first


def test_default_log_path_is_under_runs_named_after_the_run():
    p = default_log_path(small_config(name="my-run"))
    assert p.startswith(os.path.join("runs", "my-run-")) and p.endswith(".h5")
    assert issubclass(RunLogError, HilError)
