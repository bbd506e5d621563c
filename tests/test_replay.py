"""Replay (hil.replay_backend, `pcm-hil replay`): serving a log back, divergence detection,
verify against the real trainer, the CLI summary and plots."""
from __future__ import annotations

import json
import os
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_log_fakes import as_schema_1_0, fake_layout, fake_run, small_cfg  # noqa: E402

from drivers.errors import ChipFaultError, HilError  # noqa: E402
from drivers.pulse import DEFAULT_SET  # noqa: E402
from hil.backend_url import open_backend  # noqa: E402
from hil.cli import main as cli_main  # noqa: E402
from hil.recorder import NullRecorder  # noqa: E402
from hil.replay_backend import (ReplayBackend, ReplayDivergence, VerifyRecorder,  # noqa: E402
                                is_wall_clock)
from hil.run_log import RunLog, RunLogError, RunLogWriter  # noqa: E402


@pytest.fixture
def logged(tmp_path):
    path = str(tmp_path / "run.h5")
    w = RunLogWriter(path, small_cfg())
    fake_run(w, steps=90)
    return path


def test_replay_serves_the_log_and_reproduces_the_run(logged):
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        rec = VerifyRecorder(log)
        fake_run(rec, steps=90, backend=be)
        assert be.remaining() == 0 and be.commands_served == be.commands_logged
        assert rec.si == rec.n_step == 90 and rec.ki == rec.n_snap
        info = be.info()
        assert info.geometry.cols == 64 and "exact_read" not in info.capabilities
        assert "exact_read" in be.logged_capabilities


def test_a_different_run_diverges_at_the_first_difference(logged):
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        with pytest.raises(ReplayDivergence) as e:
            fake_run(NullRecorder(), steps=90, seed=5, backend=be)
        d = e.value
        assert d.step == 1 and d.command_index == 2 and d.device is not None
        assert "step 1, command #2 (PROGRAM_SET update)" in str(d)
        assert f"device {d.device}" in str(d)


def _tamper_one_pulse(path: str, batch: int = 10, delta: int = 1) -> tuple:
    """Change n_pulses of the first device of a logged batch; returns (step, seq, device)."""
    with h5py.File(path, "r+") as f:
        off = int(f["pulses/batches/offset"][batch])
        f["pulses/events/n_pulses"][off] = int(f["pulses/events/n_pulses"][off]) + delta
        return (int(f["pulses/batches/step"][batch]), int(f["pulses/batches/seq"][batch]),
                int(f["pulses/events/address"][off]))


def test_tampered_pulse_is_named(logged):
    step, seq, dev = _tamper_one_pulse(logged)
    with RunLog(logged) as log:
        with pytest.raises(ReplayDivergence) as e:
            fake_run(NullRecorder(), steps=90, backend=ReplayBackend(log))
    d = e.value
    assert (d.step, d.command_index, d.device) == (step, seq, dev)
    assert "pulses on the device, the log has" in str(d)


def test_read_of_other_devices_and_end_of_log(logged):
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        a = np.concatenate([x.ravel() for x in fake_layout().values()])
        be.program(a, np.ones(a.size, np.int64),
                   __import__("drivers.pulse", fromlist=["x"]).DEFAULT_RESET)
        bad = a.copy()
        bad[7] = 4000
        with pytest.raises(ReplayDivergence, match="device 4000") as e:
            be.read(bad)
        assert e.value.command_index == 1 and e.value.step == 0
        with pytest.raises(ReplayDivergence, match="the log has READ"):
            be.program(a[:3], np.ones(3), DEFAULT_SET)
        v = be.read(a)
        assert np.array_equal(v, log.read_events(0, 1)["value"][:a.size])
        be.close()
    # a log that ends: the next command diverges with the log's end named
    with RunLog(logged) as log:
        be = ReplayBackend(log)
        fake_run(NullRecorder(), steps=90, backend=be)
        with pytest.raises(ReplayDivergence, match="log ends after"):
            be.read(a[:2])


def test_unacknowledged_batch_replays_as_a_chip_fault(tmp_path):
    path = str(tmp_path / "wal.h5")
    w = RunLogWriter(path, small_cfg())
    chip_info = __import__("sim_backend.sim_chip", fromlist=["x"]).SimulatedChip(
        geometry=__import__("drivers.geometry", fromlist=["x"]).Geometry(1, 64, 64)).info()
    w.begin(config={}, provenance={"chip": chip_info.to_dict()}, layout=fake_layout())
    a = np.arange(4, dtype=np.uint32)
    w.before_program(1, a, np.ones(4, np.int64), DEFAULT_SET, "update")
    w.finish("failed", "LinkError: timeout")
    with ReplayBackend(path) as be:
        with pytest.raises(ChipFaultError, match="never got an acknowledgement"):
            be.program(a, np.ones(4, np.int64), DEFAULT_SET)


def test_backend_url_and_bad_urls(logged, tmp_path):
    with open_backend(f"replay://{logged}") as be:
        assert isinstance(be, ReplayBackend) and be.commands_logged > 0
    with pytest.raises(RunLogError, match="no such file"):
        open_backend(f"replay://{tmp_path}/missing.h5")
    with pytest.raises(RunLogError, match="names no run log"):
        open_backend("replay://")
    assert issubclass(ReplayDivergence, HilError)


def test_verify_recorder_names_a_metric_difference(logged):
    with h5py.File(logged, "r+") as f:
        names = [n.decode() for n in f["metrics/step/names"][:]]
        f["metrics/step/values"][41, names.index("loss")] += 1e-6
    with RunLog(logged) as log:
        with pytest.raises(ReplayDivergence, match="metric 'loss' at step 42") as e:
            fake_run(VerifyRecorder(log), steps=90, backend=ReplayBackend(log))
        assert e.value.step == 42


def test_summary_of_a_failed_run_with_events(tmp_path, capsys):
    """`pcm-hil replay --json` of a run that did not complete: its events are listed, and it
    has no state digest (only a completed run's final status record carries one)."""
    path = str(tmp_path / "failed.h5")
    w = RunLogWriter(path, small_cfg())

    def pause(step):
        if step == 7:
            w.on_event(step, "run_paused", {"monitor": "temp_c", "reading": 41.0})
            w.on_event(step, "run_resumed", {})
    fake_run(w, steps=12, per_step=pause, finish=False)
    w.finish("failed", "LinkError: timeout", {"state_digest": "not from a completed run"})
    assert cli_main(["replay", path, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["status"] == "failed" and s["state_digest"] is None
    assert s["events"] == [{"step": 7, "kind": "run_paused",
                            "detail": {"monitor": "temp_c", "reading": 41.0}},
                           {"step": 7, "kind": "run_resumed", "detail": {}}]
    assert cli_main(["replay", path]) == 0
    out = capsys.readouterr().out
    assert "events      2 (run_paused, run_resumed)" in out and "digest" not in out


def test_wall_clock_names():
    assert all(is_wall_clock(n) for n in ("seconds", "train_seconds", "step_ms",
                                          "examples_per_s", "wall_time"))
    assert not any(is_wall_clock(n) for n in ("loss", "set_pulses", "g_us", "refreshes"))


# --- the real trainer and the CLI --------------------------------------------------------------
TINY = """\
name: tiny-e2e
seed: 3
data: {train_examples: 300, test_examples: 200}
chip: {rows: 512, cols: 2048}
training: {epochs: 1, baseline: false}
log: {flush_every_steps: 100, snapshot_every_steps: 150}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    cfg = d / "tiny.yaml"
    cfg.write_text(TINY)
    run = str(d / "tiny.h5")
    rc = cli_main(["train", "--config", str(cfg), "--run", run, "--no-progress"])
    assert rc == 0
    return run


def test_train_then_verify_then_tamper(trained, tmp_path, capsys):
    capsys.readouterr()
    assert cli_main(["replay", trained, "--verify", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "status      completed" in out and "replay matches the log" in out
    tampered = str(tmp_path / "tampered.h5")
    with open(trained, "rb") as src, open(tampered, "wb") as dst:
        dst.write(src.read())
    with RunLog(tampered) as log:
        pb = log.pulse_batches()
        batch = int(np.flatnonzero(pb["purpose"] == log.purpose_code("update"))[5])
    step, seq, dev = _tamper_one_pulse(tampered, batch)
    assert cli_main(["replay", tampered, "--verify", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"step {step}, command #{seq}" in out and f"device {dev}" in out


def test_summary_plots_and_bad_arguments(trained, tmp_path, capsys):
    figs = str(tmp_path / "figs")
    assert cli_main(["replay", trained, "--plot", figs, "--steps", "0,mid,last",
                     "--devices", "3"]) == 0
    for name in ("accuracy", "conductance_hist", "pulses", "refreshes", "traces"):
        assert os.path.getsize(os.path.join(figs, f"{name}.png")) > 1000
    capsys.readouterr()
    assert cli_main(["replay", trained, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    with RunLog(trained) as log:
        summary = log.summary
        assert s["set_pulses"] == summary["set_pulses"]
        assert s["reset_pulses"] == summary["reset_pulses"]
        assert s["refreshes"] == summary["refreshes"]
        assert s["test_accuracy"] == summary["test_accuracy"]
        # the state digest the trainer reported when the run completed
        assert s["state_digest"] == summary["state_digest"] and len(s["state_digest"]) == 64
        snaps = log.snapshots()["step"].tolist()
        assert snaps[0] == 0 and snaps[-1] == 300   # start and end (+ periodic, when taken)
        # the state reconstructed at the end equals the final snapshot
        assert np.array_equal(log.conductance(log.last_step), log.snapshot_g(-1))
    assert cli_main(["replay", trained, "--plot", figs, "--steps", "abc"]) == 1
    assert "--steps: 'abc' is not a step number" in capsys.readouterr().err
    assert cli_main(["replay", trained, "--plot", figs, "--steps", "99999"]) == 1
    assert "outside the logged steps" in capsys.readouterr().err
    assert cli_main(["replay", trained, "--plot", trained]) == 1
    assert "--plot: cannot create folder" in capsys.readouterr().err
    assert cli_main(["replay", str(tmp_path / "nope.h5")]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["replay", "--help"])
    assert e.value.code == 0
    assert "--verify" in capsys.readouterr().out


def test_same_run_through_the_emulator_logs_the_same_digest(small_data, tmp_path):
    """Invariant 1 at the log level: in-process and through the firmware emulator over TCP
    with a faulty link, the two logs have the same content digest, and each verifies."""
    from conftest import small_config
    from drivers.fpga import FpgaChip
    from drivers.geometry import Geometry
    from hil.commands.train import sim_defaults
    from hil.replay_backend import verify_run
    from hil.training import run_experiment
    from sim_backend import EmulatorServer, FaultConfig, Firmware, PcmModel, SimulatedChip

    cfg = small_config(seed=5, data={"train_examples": 200, "test_examples": 200},
                       optimizer={"refresh": {"period_steps": 40}})
    a, b = str(tmp_path / "inproc.h5"), str(tmp_path / "emulated.h5")
    run_experiment(cfg, open_backend("sim://", sim_defaults(cfg)), RunLogWriter(a, cfg),
                   data=small_data)
    chip = SimulatedChip(PcmModel.preset(cfg.chip.model), Geometry(1, 512, 2048),
                         seed=cfg.chip_seed)
    server = EmulatorServer(Firmware(chip), faults=FaultConfig(corrupt=0.002, drop=0.01, seed=3),
                            listen=("127.0.0.1", 0)).start()
    try:
        with FpgaChip(server.url, timeout_s=5.0, retries=20) as backend:
            run_experiment(cfg, backend, RunLogWriter(b, cfg), data=small_data)
    finally:
        server.stop()
    with RunLog(a) as la, RunLog(b) as lb:
        assert la.digest() == lb.digest()
    assert verify_run(b, data=small_data).ok


def test_on_chip_matvec_run_is_logged_replayed_and_verified(small_data, tmp_path,
                                                            monkeypatch):
    """Schema 1.1: a training.matvec: chip run logs every MATVEC's currents, so --verify can
    serve them back; a changed current or input is caught at its step; a 1.0 log of such a
    run is refused by name."""
    from conftest import small_config
    from hil.commands.train import sim_defaults
    from hil.replay_backend import verify_run
    from hil.training import run_experiment

    cfg = small_config(seed=3, data={"train_examples": 120, "test_examples": 100},
                       training={"matvec": "chip"}, log={"flush_every_steps": 50})
    path = str(tmp_path / "chip_mode.h5")
    s = run_experiment(cfg, open_backend("sim://", sim_defaults(cfg)), RunLogWriter(path, cfg),
                       data=small_data)
    with RunLog(path) as log:
        assert log.has_matvec
        mb = log.matvec_batches()
        assert mb["step"].size == s["matvec_commands"] == log.counts["matvec_batches"]
        # per step: forward (active inputs of 785) → 250 and 251 → 10, each on G+ and G-,
        # then backward 10 → 250
        assert mb["rows"][:6].tolist() == [250, 250, 10, 10, 250, 250]
        assert mb["cols"][0] == mb["cols"][1] < 785
        assert mb["cols"][2:6].tolist() == [251, 251, 10, 10]
        assert int(mb["count"].sum()) == log.counts["matvec_values"]
        assert np.array_equal(mb["offset"][1:], np.cumsum(mb["count"])[:-1])
        values = log.matvec_values()
        assert values.dtype == np.float32 and np.isfinite(values).all() and values.any()
        step_of = {int(i): int(st) for i, st in enumerate(mb["step"])}
    # currents read in windows of ~5 steps' worth, so replay crosses many window edges
    monkeypatch.setattr(ReplayBackend, "MATVEC_WINDOW_VALUES", 5000)
    rep = verify_run(path, data=small_data)
    assert rep.ok, rep.message
    assert rep.matvecs_served == s["matvec_commands"] and "MATVECs" in rep.message

    def tampered(name: str, edit) -> str:
        p = str(tmp_path / name)
        with open(path, "rb") as src, open(p, "wb") as dst:
            dst.write(src.read())
        with h5py.File(p, "r+") as f:
            edit(f)
        return p

    target = 6 * 40 + 2             # step 40's first forward MATVEC of the output layer

    def bump_current(f):
        off = int(f["matvec/batches/offset"][target])
        f["matvec/events/value"][off] += 5.0
    rep = verify_run(tampered("current.h5", bump_current), data=small_data)
    assert not rep.ok and f"step {step_of[target]}" in rep.message, rep.message

    def other_inputs(f):
        f["matvec/batches/x_crc32"][target] ^= 1
    rep = verify_run(tampered("inputs.h5", other_inputs), data=small_data)
    assert not rep.ok
    assert isinstance(rep.divergence, ReplayDivergence) and rep.divergence.step == step_of[target]
    assert f"MATVEC #{target}: input CRC-32" in rep.message

    old = tampered("schema10.h5", as_schema_1_0)   # no /matvec, an 18-field /commit
    with RunLog(old) as log:
        assert not log.has_matvec and log.matvec_batches()["step"].size == 0
        assert log.counts["matvec_batches"] == 0 and log.pulse_batches()["seq"].size > 0
        assert len(log.digest()) == 64
    with pytest.raises(RunLogError, match=r"schema 1\.0\) has no MATVEC results"):
        verify_run(old, data=small_data)
