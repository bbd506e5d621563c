"""The torch experiment end to end (hil.torch.experiment): a small LeNet through the real
run stack - in process, through the firmware emulator over a socket, killed and resumed -
logged in the MLP's run-log schema and verified by replay."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="hil.torch needs the torch extra "
                                            "(pip install 'pcm-hil[torch]')")

from drivers.errors import ConfigError  # noqa: E402
from drivers.fpga import FpgaChip  # noqa: E402
from hil.backend_url import open_backend  # noqa: E402
from hil.config import config_from_dict, load_config, with_overrides  # noqa: E402
from hil.replay.verify import verify_run  # noqa: E402
from hil.run_log import RunLog, RunLogWriter  # noqa: E402
from hil.torch.experiment import TorchBaseline, TorchTrainer, torch_dataset  # noqa: E402
from hil.training import run_experiment  # noqa: E402
from sim_backend import EmulatorServer, Firmware  # noqa: E402

KEYS = ("test_accuracy", "train_accuracy", "epochs", "examples", "steps", "set_pulses",
        "reset_pulses", "update_set_pulses", "refreshes", "program_commands", "read_commands",
        "devices_read", "state_digest")
TINY = """name: tiny-cnn
seed: 3
model: {{kind: lenet5, channels: [2, 3], hidden: [8]}}
data: {{train_examples: {train}, test_examples: 60}}
optimizer: {{beta: [0.05, 0.03, 0.02, 0.05], learning_rate: 0.1, batch_size: 4,
            refresh: {{period_steps: 10, high_us: 5.0, check_thresholds: false}}}}
training: {{epochs: {epochs}, baseline: {baseline}}}
log: {{flush_every_steps: 4, snapshot_every_steps: 20}}
"""


def _config_file(tmp_path, train=48, epochs=1, baseline="false"):
    path = tmp_path / "cnn.yaml"
    path.write_text(TINY.format(train=train, epochs=epochs, baseline=baseline))
    return str(path)


def _in_process(cfg, mnist, log_path=None):
    rec = RunLogWriter(log_path, cfg) if log_path else None
    return run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()), rec, data=mnist)


def test_a_small_cnn_learns_and_its_baseline_starts_from_the_same_weights(tmp_path, mnist):
    cfg = load_config(_config_file(tmp_path, train=400, epochs=2, baseline="true"))
    trainer = TorchTrainer(cfg, open_backend("sim://", cfg.sim_chip_spec()))
    baseline = TorchBaseline(cfg)
    for (name, p), (_, q) in zip(trainer.model.named_parameters(),
                                 baseline.model.named_parameters()):
        assert torch.equal(p, q), name   # the chip's targets are the baseline's start
    s = _in_process(cfg, mnist)
    assert s["weights"] == 2 * 26 + 3 * 51 + 8 * 76 + 10 * 9 and s["devices"] == 2 * s["weights"]
    assert s["steps"] == 200 and s["examples"] == 800
    assert s["test_accuracy"] > 0.3 and s["baseline_test_accuracy"] > 0.3   # chance: 0.1
    assert s["update_set_pulses"] == sum(e["set_pulses"] for e in s["per_epoch"]) > 0


def test_holdout_validation_is_the_last_10k_training_digits(tmp_path, mnist):
    d = load_config(_config_file(tmp_path)).to_dict()
    d["data"]["holdout"] = "validation"
    data = torch_dataset(mnist, config_from_dict(d))
    assert np.array_equal(data.test_x, mnist.train_x[50000:50060])
    assert np.array_equal(data.train_x, mnist.train_x[:48])
    d["data"]["train_examples"] = 50001
    with pytest.raises(ConfigError, match=r"train_examples must be in 1\.\.50000 \(with holdout: validation"):
        config_from_dict(d)
    d["data"]["train_examples"] = 48
    d["optimizer"]["beta"] = [0.1, 0.1]
    with pytest.raises(ConfigError, match=r"optimizer.beta: needs one value per weight layer "
                                          r"of the model \(4\), got 2"):
        config_from_dict(d)


def test_through_the_emulator_over_a_socket_equals_in_process_and_verifies(tmp_path, mnist):
    cfg = load_config(_config_file(tmp_path))
    ref_log, emu_log = str(tmp_path / "ref.h5"), str(tmp_path / "emu.h5")
    ref = _in_process(cfg, mnist, ref_log)
    server = EmulatorServer(Firmware(cfg.sim_chip_spec().build()),
                            listen=("127.0.0.1", 0)).start()
    try:
        with FpgaChip(server.url, timeout_s=5.0, retries=5) as chip:
            got = run_experiment(cfg, chip, RunLogWriter(emu_log, cfg), data=mnist)
    finally:
        server.stop()
    for k in KEYS:
        assert got[k] == ref[k], k
    with RunLog(ref_log) as a, RunLog(emu_log) as b:
        assert a.digest() == b.digest()
        assert list(a.layout) == ["conv1.plus", "conv1.minus", "conv2.plus", "conv2.minus",
                                  "fc1.plus", "fc1.minus", "fc2.plus", "fc2.minus"]
        assert a.chi_layers == ["conv1", "conv2", "fc1", "fc2"]
    report = verify_run(ref_log, data=mnist)
    assert report.ok, report.message


def _train(cwd, *args):
    return subprocess.Popen([sys.executable, "-m", "hil.cli", "train", "--no-progress", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_through_the_emulator_and_resumed_equals_uninterrupted(tmp_path, mnist):
    cfg_path = _config_file(tmp_path, train=160)
    state = str(tmp_path / "emu.state")
    with open(tmp_path / "emu.err", "w") as err:
        emu = subprocess.Popen([sys.executable, "-m", "hil.cli", "emulate", "--listen",
                                "127.0.0.1:0", "--seed", "3", "--state", state],
                               stdout=subprocess.PIPE, stderr=err, text=True)
    p = None
    try:
        url = emu.stdout.readline().strip()
        assert url.startswith("socket://")
        cfg = with_overrides(load_config(cfg_path), backend=url)
        ref = _in_process(cfg, mnist, str(tmp_path / "ref.h5"))
        run = str(tmp_path / "run.h5")
        p = _train(tmp_path, "--config", cfg_path, "--backend", url, "--run", run)
        end = time.monotonic() + 300
        while True:   # kill it once the log has committed a few training steps
            if os.path.exists(run + ".journal"):
                with RunLog(run) as lg:
                    if lg.complete_step >= 8:
                        break
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < end, "the run never got going"
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.communicate()
        with RunLog(run) as lg:   # killed mid-run: no final status, steps left to do
            assert lg.status.status == "running" and lg.complete_step < ref["steps"]
        p = _train(tmp_path, "--resume", run, "--backend", url, "--summary-json",
                   str(tmp_path / "s.json"))
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.communicate()
        emu.send_signal(signal.SIGTERM)
        emu.communicate(timeout=60)
    summary = json.loads((tmp_path / "s.json").read_text())
    for k in KEYS:
        assert summary[k] == ref[k], k
    with RunLog(str(tmp_path / "run-2.h5")) as a, RunLog(str(tmp_path / "ref.h5")) as b:
        assert a.status.status == b.status.status == "completed"
        assert a.digest() == b.digest()


def test_the_docs_example_loop_runs_and_its_log_reads(tmp_path):
    """docs/torch.md's runnable example: a user's own loop, logged and summarised."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = str(tmp_path / "my.h5")
    r = subprocess.run([sys.executable, os.path.join(root, "docs", "examples",
                                                     "torch_on_chip.py"),
                        "--examples", "64", "--run", log],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "SET pulses for 18,898 weights" in r.stdout
    with RunLog(log) as lg:
        assert lg.status.status == "completed" and lg.complete_step == 4
        assert list(lg.layout)[:2] == ["1.plus", "1.minus"]


def test_the_station_preflight_refuses_a_torch_run_before_its_first_command(tmp_path, mnist):
    """The shared epoch loop's pre-flight holds for a torch model too: its initial
    programming, checked command for command against a per-device pulse limit it exceeds,
    is refused with nothing sent to the chip (not after the RESET of every device)."""
    from drivers.errors import SafetyLimitError
    from drivers.safety import LimitedBackend, PulseLimits, SafetyLimits
    cfg = load_config(_config_file(tmp_path))
    chip = open_backend("sim://", cfg.sim_chip_spec())
    limits = SafetyLimits(set=PulseLimits(1.5, 1000.0), reset=PulseLimits(3.5, 200.0),
                          max_pulses_per_device=4, max_pulses_per_step=500_000,
                          max_batch_devices=1 << 20)
    with pytest.raises(SafetyLimitError, match=r"\[PROGRAM_SET\] pulses per device "
                                               r"\(safety\.max_pulses_per_device\) must be "
                                               r"in 0\.\.4"):
        run_experiment(cfg, LimitedBackend(chip, limits), data=mnist)
    assert chip.commands_executed == 0


def test_the_preflight_refuses_an_on_chip_matvec_block_the_station_cannot_take(tmp_path,
                                                                                mnist):
    """With `matvec: chip` every training step sends each block whole as one MATVEC, which
    the guard cannot split: a block larger than safety.max_batch_devices is refused before
    the first command, not after the initial programming of every device."""
    from drivers.errors import SafetyLimitError
    from drivers.safety import LimitedBackend, PulseLimits, SafetyLimits
    d = load_config(_config_file(tmp_path)).to_dict()
    d["training"]["matvec"] = "chip"
    cfg = config_from_dict(d)
    chip = open_backend("sim://", cfg.sim_chip_spec())
    limits = SafetyLimits(set=PulseLimits(1.5, 1000.0), reset=PulseLimits(3.5, 200.0),
                          max_pulses_per_device=1000, max_pulses_per_step=500_000,
                          max_batch_devices=500)   # the 76 x 8 block of the hidden layer: 608
    with pytest.raises(SafetyLimitError, match=r"\[MATVEC\] block of 608 devices exceeds "
                                               r"safety\.max_batch_devices = 500"):
        run_experiment(cfg, LimitedBackend(chip, limits), data=mnist)
    assert chip.commands_executed == 0
    d["training"]["matvec"] = "host"   # the same limits pass where no MATVEC is sent
    s = run_experiment(config_from_dict(d), LimitedBackend(
        open_backend("sim://", cfg.sim_chip_spec()), limits), data=mnist)
    assert s["matvec_commands"] == 0 and s["steps"] == 12


def test_a_torch_log_verifies_serially_under_workers_saying_why(tmp_path, mnist):
    """A torch trainer declares no trainer state record, so `--verify --workers` cannot
    split its log: it re-runs it once, with the serial verdict and a note."""
    from hil.replay.parallel import verify_parallel
    cfg = load_config(_config_file(tmp_path))
    path = str(tmp_path / "r.h5")
    _in_process(cfg, mnist, path)
    with RunLog(path) as log:
        assert not log.has_state
    report = verify_parallel(path, workers=2, data=mnist)
    assert report.ok, report.message
    assert report.note == "verified in one re-run: its trainer declared no state record"
