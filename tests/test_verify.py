"""`pcm-hil replay --verify` (hil.replay.verify): a re-run checked against its log bit for
bit; every metric, snapshot, MATVEC and the summary must match."""
from __future__ import annotations

import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_log_fakes import (as_schema_1_0, fake_log, fake_run, set_arithmetic,  # noqa: E402
                           tamper_one_pulse)

from hil.backend_url import open_backend  # noqa: E402
from hil.cli import main as cli_main  # noqa: E402
from hil.replay import ReplayBackend, ReplayDivergence, VerifyRecorder, verify_run  # noqa: E402
from hil.run_log import (ARITHMETIC, RunLog, RunLogError, RunLogWriter,  # noqa: E402
                         is_wall_clock)


@pytest.fixture
def logged(tmp_path):
    return fake_log(tmp_path, steps=90)[0]


def test_verify_recorder_names_a_metric_difference(logged):
    with h5py.File(logged, "r+") as f:
        names = [n.decode() for n in f["metrics/step/names"][:]]
        f["metrics/step/values"][41, names.index("loss")] += 1e-6
    with RunLog(logged) as log:
        with pytest.raises(ReplayDivergence, match="metric 'loss' at step 42") as e:
            fake_run(VerifyRecorder(log), steps=90, backend=ReplayBackend(log))
        assert e.value.step == 42


def test_wall_clock_names():
    assert all(is_wall_clock(n) for n in ("seconds", "train_seconds", "step_ms",
                                          "examples_per_s", "wall_time"))
    assert not any(is_wall_clock(n) for n in ("loss", "set_pulses", "g_us", "refreshes"))


# --- the real trainer and the CLI --------------------------------------------------------------
def test_train_then_verify_then_tamper(tiny_trained_log, tmp_path, capsys):
    trained = tiny_trained_log
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
    step, seq, dev = tamper_one_pulse(tampered, batch)
    assert cli_main(["replay", tampered, "--verify", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"step {step}, command #{seq}" in out and f"device {dev}" in out


def test_same_run_through_the_emulator_logs_the_same_digest(small_data, tmp_path):
    """Invariant 1 at the log level: in-process and through the firmware emulator over TCP
    with a faulty link, the two logs have the same content digest, and each verifies."""
    from conftest import small_config
    from drivers.fpga import FpgaChip
    from hil.replay import verify_run
    from hil.training import run_experiment
    from sim_backend import EmulatorServer, FaultConfig, Firmware

    cfg = small_config(seed=5, data={"train_examples": 200, "test_examples": 200},
                       optimizer={"refresh": {"period_steps": 40}})
    a, b = str(tmp_path / "inproc.h5"), str(tmp_path / "emulated.h5")
    run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()), RunLogWriter(a, cfg),
                   data=small_data)
    chip = cfg.sim_chip_spec().build()
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
    from hil.replay import verify_run
    from hil.training import run_experiment

    cfg = small_config(seed=3, data={"train_examples": 120, "test_examples": 100},
                       training={"matvec": "chip"}, log={"flush_every_steps": 50})
    path = str(tmp_path / "chip_mode.h5")
    s = run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()), RunLogWriter(path, cfg),
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


# --- logs of another arithmetic --------------------------------------------------------------
def test_a_log_records_the_arithmetic_it_was_computed_with(tiny_trained_log):
    with RunLog(tiny_trained_log) as log:
        assert log.arithmetic == ARITHMETIC == log.provenance["arithmetic"]


@pytest.mark.parametrize("logged, says", [
    (None, "recorded before pcm-hil's arithmetic became portable"),
    ("portable-0", "recorded with arithmetic 'portable-0'"),
])
def test_a_log_of_another_arithmetic_cannot_verify_but_still_reads(tiny_trained_log, tmp_path,
                                                                   capsys, logged, says):
    """A log written before run logs recorded their arithmetic (numpy's and the BLAS
    kernel's machine-dependent rounding), or with another version of it, cannot be
    reproduced bit for bit: --verify says why in one error line instead of reporting a
    divergence, and nothing else about the log is lost."""
    old = str(tmp_path / "old.h5")
    shutil.copyfile(tiny_trained_log, old)
    set_arithmetic(old, logged)
    capsys.readouterr()
    assert cli_main(["replay", old, "--verify", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert len(err) == 1, err
    assert says in err[0] and repr(ARITHMETIC) in err[0] and "cannot be verified" in err[0]
    assert "diverged" not in out + err[0]
    assert "status      completed" in out and "arithmetic" in out   # the summary still prints
    assert cli_main(["replay", old, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    with RunLog(tiny_trained_log) as log:
        assert summary["state_digest"] == log.summary["state_digest"]
    assert summary["arithmetic"] == logged
    with pytest.raises(RunLogError, match="cannot be verified"):
        verify_run(old)
    assert cli_main(["replay", old, "--plot", str(tmp_path / "figs")]) == 0
    assert os.listdir(tmp_path / "figs")
