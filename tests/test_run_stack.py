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
from hil.run_log import RunLog, RunLogError
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


def test_a_chip_that_cannot_be_opened_leaves_its_log_marked_failed_with_the_reason(tmp_path):
    log = str(tmp_path / "r.h5")
    with pytest.raises(LinkError):
        open_run_stack(RunRequest(small_config(), backend_url=DEAD_CHIP, log_path=log))
    with pytest.raises(RunLogError, match="never started.*final status failed: LinkError"):
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


def test_a_resumed_run_is_the_resume_layer_under_the_station_guard(tmp_path, small_data):
    """An aborted sim:// run with a chip state resumes as station guard → resume layer →
    chip, with the resume's segments in the new log's provenance and its default name."""
    cfg = small_config(data={"train_examples": 300, "test_examples": 100},
                       log={"flush_every_steps": 50})
    first = str(tmp_path / "r.h5")
    control = RunControl()
    req = RunRequest(cfg, log_path=first, chip_state=str(tmp_path / "r.state"))
    with open_run_stack(req) as stack:
        assert stack.provenance["chip_state"] == os.path.abspath(tmp_path / "r.state")
        control.request_stop("test")             # stops after the first step
        with pytest.raises(RunAborted):
            run_experiment(cfg, stack.backend, stack.recorder, data=small_data,
                           control=control, provenance=stack.provenance)
    notes = []
    again = RunRequest.resume(first, backend_url="sim://", station=load_station(STATION),
                              note=notes.append)
    assert again.log_path == str(tmp_path / "r-2.h5") and again.config == cfg
    with open_run_stack(again, note=notes.append) as stack:
        assert _layers(stack.backend) == [LimitedBackend, ResumeBackend, SimulatedChip]
        assert isinstance(find_ability(stack.backend, SequencedBackend), ResumeBackend)
        assert stack.provenance["resume"]["segment"] == 2
        assert any("resuming" in n for n in notes)
        s = run_experiment(cfg, stack.backend, stack.recorder, data=small_data,
                           provenance=stack.provenance)
    assert stack.resumed.committed > 0 and s["steps"] == 300


def test_default_log_path_is_under_runs_named_after_the_run():
    p = default_log_path(small_config(name="my-run"))
    assert p.startswith(os.path.join("runs", "my-run-")) and p.endswith(".h5")
    assert issubclass(RunLogError, HilError)
