"""Mixed-precision training end to end on the in-process simulated chip."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers.errors import ConfigError
from drivers.geometry import Geometry
from hil.backend_url import open_backend
from hil.epoch_loop import learning_rate
from hil.recorder import Recorder
from hil.mixed_precision import TrainingDiverged
from hil.training import Dataset, MixedPrecisionTrainer, run_experiment, split_indices
from sim_backend import PcmModel, SimChipSpec, SimulatedChip

from conftest import small_config

ROOT = Path(__file__).resolve().parents[1]


class CommandLog(Recorder):
    """Counts commands per step, as the run log would see them."""

    def __init__(self):
        self.by_step = {}

    def _add(self, step, kind, purpose):
        self.by_step.setdefault(step, []).append((kind, purpose))

    def on_read(self, step, addresses, values, purpose):
        self._add(step, "read", purpose)

    def on_program(self, step, addresses, n_pulses, pulse, purpose):
        self._add(step, "program", purpose)


def _chip(cfg):
    return open_backend("sim://", SimChipSpec(seed=cfg.chip_seed))


def test_short_run_learns_and_batches_io(small_data):
    cfg = small_config(optimizer={"refresh": {"period_steps": 50}})
    rec = CommandLog()
    s = run_experiment(cfg, _chip(cfg), rec, data=small_data)
    # 3,000 examples of one epoch: well above chance (10 %) on 1,000 held-out digits
    assert s["test_accuracy"] > 0.80
    assert s["examples"] == 3000 and s["steps"] == 3000
    assert s["set_pulses"] > 0 and s["refreshes"] >= 0
    for step, cmds in rec.by_step.items():
        if step == 0:
            continue
        normal = [c for c in cmds if not c[1].startswith("refresh") and c[1] != "full_read"]
        assert normal in ([], [("program", "update"), ("read", "readback")]), (step, cmds)
        refresh = [c for c in cmds if c[1].startswith("refresh")]
        # the candidates re-read (when there are any); then, for those that still qualify,
        # RESET batch, SET batch (absent when every difference rounds to 0 pulses), read-back
        check = [("read", "refresh_check")]
        assert refresh in ([], check,
                           check + [("program", "refresh_reset"), ("read", "refresh_readback")],
                           check + [("program", "refresh_reset"), ("program", "refresh_set"),
                                    ("read", "refresh_readback")]), (step, refresh)
        if refresh:
            assert step % 50 == 0
    # the reduction against programming every weight on every example
    assert s["programming_reduction"] > 100


def test_same_seed_same_digest_other_seed_differs(small_data):
    cfg = small_config(data={"train_examples": 500, "test_examples": 200})
    runs = [run_experiment(cfg, _chip(cfg), data=small_data) for _ in range(2)]
    assert runs[0]["state_digest"] == runs[1]["state_digest"]
    assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"]
    other = small_config(seed=8, data={"train_examples": 500, "test_examples": 200})
    assert run_experiment(other, _chip(other), data=small_data)["state_digest"] != \
        runs[0]["state_digest"]


def test_validation_is_the_last_of_the_training_digits(mnist):
    train, val = split_indices(60000, 50000, 10000)   # the standard 50k/10k split
    assert np.array_equal(train, np.arange(50000)) and np.array_equal(val,
                                                                      np.arange(50000, 60000))
    d = Dataset.from_mnist(mnist, 300, 100, 200)
    assert np.array_equal(d.train_x[:, :-1], mnist.train_x[:300])
    assert np.array_equal(d.val_x[:, :-1], mnist.train_x[59800:])
    assert np.array_equal(d.val_y, mnist.train_y[59800:]) and (d.val_x[:, -1] == 1).all()
    assert np.array_equal(d.test_x[:, :-1], mnist.test_x[:100])
    # the config's sizes: the first training and test digits, the last validation digits
    # (those a run loading its own data holds out), never a digit of the other set
    h = d.head(100, 50, 20)
    assert np.array_equal(h.val_x[:, :-1], mnist.train_x[59980:]) and h.train_x.shape[0] == 100
    assert d.head(100, 50).n_validation == 0
    with pytest.raises(ConfigError, match="data.validation_examples: 500 validation"):
        d.head(100, 50, 500)
    with pytest.raises(ConfigError, match="data.train_examples"):
        split_indices(60000, 50001, 10000)


def test_learning_rate_schedules():
    exp = small_config(optimizer={"learning_rate": 0.2, "lr_decay": 0.5})
    inv = small_config(optimizer={"learning_rate": 0.2, "lr_schedule": "inverse"})
    assert [learning_rate(exp, e) for e in range(3)] == [0.2, 0.1, 0.05]
    assert [learning_rate(inv, e) for e in range(3)] == [0.2, 0.1, 0.2 / 3]


def test_the_baseline_takes_its_own_rate_on_the_same_schedule(small_data):
    from hil.training import BaselineTrainer
    own = small_config(optimizer={"learning_rate": 0.2, "lr_decay": 0.5},
                       training={"baseline": True, "baseline_learning_rate": 0.05})
    assert [learning_rate(own, e) for e in range(2)] == [0.2, 0.1]          # the chip's
    assert [learning_rate(own, e, baseline=True) for e in range(2)] == [0.05, 0.025]
    assert learning_rate(small_config(), 1, baseline=True) == learning_rate(small_config(), 1)
    # the baseline trained so is the baseline of a config whose rate is that one
    same = small_config(optimizer={"learning_rate": 0.05, "lr_decay": 0.5},
                        training={"baseline": True})
    a, b = BaselineTrainer(own), BaselineTrainer(same)
    ra, rb = a.train_epoch(small_data, 0), b.train_epoch(small_data, 0)
    assert ra == rb and all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights))
    ref = BaselineTrainer(small_config(training={"baseline": True}))
    ref.train_epoch(small_data, 0)
    assert not np.array_equal(ref.weights[0], a.weights[0])
    with pytest.raises(ValueError, match="baseline_learning_rate must be > 0"):
        small_config(training={"baseline_learning_rate": 0.0})


def test_mini_batch_and_measured_chi_and_chip_matvec(small_data):
    cfg = small_config(data={"train_examples": 600, "test_examples": 300},
                       optimizer={"batch_size": 4, "chi_update": "measured"})
    s = run_experiment(cfg, _chip(cfg), data=small_data)
    assert s["steps"] == 150 and s["examples"] == 600
    cfg = small_config(data={"train_examples": 200, "test_examples": 300},
                       training={"matvec": "chip"})
    s = run_experiment(cfg, _chip(cfg), data=small_data)
    assert s["matvec_commands"] == 200 * 6  # 2 blocks × (2 forward + 1 backward layer)


def test_ideal_devices_lose_no_update(small_data):
    """With ideal devices (ΔG = ε exactly) and no refresh, W + χ is the initial weights plus
    every update the optimizer was given: nothing is lost between χ and the chip."""
    from hil import network
    cfg = small_config(data={"train_examples": 300, "test_examples": 300},
                       chip={"model": "ideal"},
                       optimizer={"epsilon_us": 0.5, "refresh": {"period_steps": 0}})
    chip = SimulatedChip(PcmModel.preset("ideal"), Geometry(1, 512, 2048), seed=1)
    t = MixedPrecisionTrainer(cfg, chip)
    t.initialize()
    expect = [w.copy() for w in t.weights]
    for i in range(100):
        xb, yb = small_data.train_x[i:i + 1], small_data.train_y[i:i + 1]
        _, _, grads = network.train_step(t.weights, xb, yb, 0.1)
        for e, g in zip(expect, grads):
            network.apply_gradient(e, g)
        t.train_step(xb, yb, 0.1)
    assert t.io.counters.set_pulses > 1000
    for w, chi, e in zip(t.weights, t.core.chi.chi, expect):
        # each read passes a 16-bit ADC: at most a few code steps of β·0.0004 µS per weight
        assert np.abs(w + chi - e).max() < 2e-3


def test_chip_matvec_drives_read_voltages_and_matches_the_host(small_data):
    """matvec: chip turns each input vector into line voltages peaking at matvec_read_v and
    scales the currents back: the sums equal the host's from the same conductances, and no
    line exceeds the chip's limit even when that limit is the read voltage itself (0.3 V
    has no float32 of its own: the nearest one is above it)."""
    from hil import network
    from sim_backend.sim_chip import SimLimits
    cfg = small_config(data={"train_examples": 300, "test_examples": 300},
                       chip={"model": "ideal"},
                       training={"matvec": "chip", "matvec_read_v": 0.3})
    chip = SimulatedChip(PcmModel.preset("ideal"), Geometry(1, 512, 2048), seed=1,
                         limits=SimLimits(read_v_max=0.3))
    t = MixedPrecisionTrainer(cfg, chip)
    t.initialize()
    for i in range(20):   # move the weights off their initial values
        t.train_step(small_data.train_x[i:i + 1], small_data.train_y[i:i + 1], 0.1)
    host, on_chip = network.HostMatmul(t.weights), t._matmul
    x = small_data.train_x[100:104] * np.array([[1.0], [0.01], [-3.0], [0.0]], np.float32)
    for got, want in ((on_chip.forward(0, x, None), host.forward(0, x, None)),
                      (on_chip.backward(1, x[:, :10]), host.backward(1, x[:, :10]))):
        assert got.shape == want.shape
        # per example, within float32 current resolution of the row's largest sum (the
        # difference of two ~100 µA currents); a wrong scale would be off by 3× or 100×
        err = np.abs(got - want).max(axis=1)
        assert (err[:3] <= 1e-3 * np.abs(want[:3]).max(axis=1)).all(), err
        assert not got[3].any()   # an all-zero input stays all zero
    v, scale = on_chip.matvec.line_voltages(x.T)
    assert v.dtype == np.float32 and float(np.abs(v).max()) <= 0.3
    assert np.allclose(np.abs(v).max(axis=0)[:3], 0.3) and np.allclose(scale[:3] * 0.3,
                                                                        [1.0, 0.01, 3.0])
    with pytest.raises(ConfigError, match=r"training\.matvec_read_v.*exceeds the chip's "
                                           r"read_v_max of 0.3 V"):
        MixedPrecisionTrainer(replace_training(cfg, matvec_read_v=0.35), chip)
    # the station's limit is checked as early, before anything is programmed
    from drivers.safety import LimitedBackend, PulseLimits, SafetyLimits
    station = SafetyLimits(PulseLimits(2.0, 1e4), PulseLimits(4.0, 1e4), 255, 10**6, 10**6,
                           read_v_max=0.25)
    before = chip.counters["commands"]
    with pytest.raises(ConfigError, match=r"training\.matvec_read_v.*exceeds the station's "
                                           r"safety\.read_v_max of 0.25 V"):
        MixedPrecisionTrainer(cfg, LimitedBackend(chip, station))
    assert chip.counters["commands"] == before
    # a diverged network never reaches the chip: NaN or inf inputs are refused by name
    for bad in (np.nan, np.inf):
        x[1, 5] = bad
        with pytest.raises(TrainingDiverged, match="NaN or infinite: training diverged"):
            on_chip.forward(0, x, None)
    assert chip.counters["commands"] == before


def replace_training(cfg, **kw):
    from hil.config import replace
    return replace(cfg, training=replace(cfg.training, **kw))


def test_cli_train_writes_summary(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("name: tiny\ndata: {train_examples: 300, test_examples: 200}\n"
                   "training: {epochs: 1, baseline: true}\n")
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "hil.cli", "train", "--config", str(cfg),
                        "--summary-json", str(out), "--no-progress",
                        "--run", str(tmp_path / "run.h5"), "--seed", "3"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    for key in ("test_accuracy", "baseline_test_accuracy", "epochs", "examples", "set_pulses",
                "reset_pulses", "refreshes", "program_commands", "read_commands",
                "train_seconds", "state_digest"):
        assert key in s, key
    assert s["seed"] == 3 and s["examples"] == 300 and len(s["state_digest"]) == 64
    # train, validation and test accuracy per epoch: printed, in the summary, in the log
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("epoch   1/1"))
    e = s["per_epoch"][0]
    assert f"train {100 * e['train_accuracy']:6.2f}%  val {100 * e['validation_accuracy']:6.2f}%" \
        f"  test {100 * e['test_accuracy']:6.2f}%" in line
    assert f"(val {100 * e['baseline_validation_accuracy']:6.2f}%)" in line
    assert s["validation_accuracy"] == e["validation_accuracy"]
    from hil.run_log import RunLog
    with RunLog(str(tmp_path / "run.h5")) as log:
        em = log.epoch_metrics()
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy",
                "baseline_validation_accuracy", "baseline_test_accuracy"):
        assert em[key].tolist() == [e[key]], key


@pytest.mark.parametrize("args,match", [
    (["--config", "nope.yaml"], "file not found"),
    (["--epochs", "x"], "expected an integer"),
    (["--epochs", "0"], "--epochs"),
    (["--backend", "gopher://x"], "unknown backend URL scheme"),
    (["--backend", "sim://?colour=red"], "unknown sim:// option"),
])
def test_cli_bad_arguments_give_one_clear_error(args, match, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("data: {train_examples: 10, test_examples: 10}\ntraining: {epochs: 1}\n")
    argv = ["--config", str(cfg), "--no-log", *args] if args[0] != "--config" else \
        [*args, "--no-log"]
    r = subprocess.run([sys.executable, "-m", "hil.cli", "train", *argv],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0
    assert match in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("sig, rc, said", [
    ("SIGINT", 130, "interrupted by the operator (Ctrl-C)"),
    ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_stops_after_the_step(tmp_path, sig, rc, said):
    """Ctrl-C, and SIGTERM (what `kill` and a supervisor send), finish the step in flight,
    leave the chip safe and the log marked aborted; the exit status says which signal."""
    import signal
    import time
    from hil.run_log import RunLog
    cfg = tmp_path / "long.yaml"
    cfg.write_text("data: {train_examples: 50000, test_examples: 100}\n"
                   "training: {epochs: 5, baseline: false}\n")
    log = tmp_path / "r.h5"
    p = subprocess.Popen([sys.executable, "-m", "hil.cli", "train", "--config", str(cfg),
                          "--no-progress", "--run", str(log)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while not (tmp_path / "r.h5.journal").exists():   # the run has begun
        assert p.poll() is None and time.monotonic() < end, p.communicate()
        time.sleep(0.02)
    time.sleep(0.5)
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=120)
    assert p.returncode == rc, err
    assert f"aborted: {said} after step" in err and f"run log {log} is marked aborted" in err
    assert "Traceback" not in err
    with RunLog(str(log)) as lg:
        assert lg.status.status == "aborted" and said in lg.status.reason
        assert lg.complete_step == lg.status.step > 0


def test_stopped_twice_while_loading_says_nothing_was_sent(tmp_path):
    """Two Ctrl-C before the first command (the data still loading): the run stops at once,
    and says what is true - nothing reached the chip, its log holds only the config - not
    that a run log was 'marked aborted'; --resume starts it from step 0."""
    import signal
    import time
    from hil.run_log import RunLogError, read_header
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {train_examples: 50000, test_examples: 100}\n"
                   "training: {epochs: 1, baseline: false}\n")
    log = tmp_path / "r.h5"
    p = subprocess.Popen([sys.executable, "-m", "hil.cli", "train", "--config", str(cfg),
                          "--no-progress", "--run", str(log)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("run log:")     # created; the data loads next
    p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "nothing was sent to the chip; run log" in err and "holds only the run's config" \
        in err and "marked aborted" not in err and "Traceback" not in err
    head = read_header(str(log))
    assert not head.began and head.final_status == "aborted"
    with pytest.raises(RunLogError, match="never started"):
        from hil.run_log import RunLog
        RunLog(str(log))


def test_an_unwritable_summary_path_fails_before_the_run(tmp_path, readonly_dir, capsys):
    """--summary-json is tried for writing first: not after hours of training."""
    import re
    from hil.cli import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {train_examples: 10, test_examples: 10}\ntraining: {epochs: 1}\n")
    for bad, why in ((readonly_dir / "s.json", "(read-only file system|Permission denied)"),
                     (tmp_path, "is a folder")):
        assert main(["train", "--config", str(cfg), "--run", str(tmp_path / "r.h5"),
                     "--summary-json", str(bad)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(f"--summary-json: .*{why}", err[0]), err
        assert not (tmp_path / "r.h5").exists()


def _station(tmp_path, **over):
    """A copy of the simulated station with some entries replaced."""
    import yaml
    st = yaml.safe_load((ROOT / "configs" / "station_sim.yaml").read_text())
    for k, v in over.items():
        st[k] = v
    p = tmp_path / "station.yaml"
    p.write_text(yaml.safe_dump(st))
    return p


def _train(tmp_path, *args, timeout=300):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("data: {train_examples: 300, test_examples: 100}\n"
                   "training: {epochs: 1, baseline: false}\n")
    return subprocess.run([sys.executable, "-m", "hil.cli", "train", "--config", str(cfg),
                           "--no-progress", "--no-log", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_monitor_out_of_band_aborts_the_run(tmp_path):
    st = _station(tmp_path, monitors=[
        {"instrument": "socket", "quantity": "temperature_c", "every_n_steps": 5,
         "low": 100.0, "high": 200.0, "action": "abort"}])
    r = _train(tmp_path, "--station", str(st))
    assert r.returncode == 130, r.stderr
    assert "monitor: socket.temperature_c" in r.stderr and "at step 5" in r.stderr


def test_dry_run_never_touches_the_configured_chip(tmp_path):
    st = _station(tmp_path)
    # nothing listens on this port: a dry run must not try it
    r = _train(tmp_path, "--station", str(st), "--backend", "socket://127.0.0.1:9",
               "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would send:" in r.stdout and "within the limits" in r.stdout


def test_station_limits_refuse_before_sending(tmp_path):
    import yaml
    safety = yaml.safe_load((ROOT / "configs" / "station_sim.yaml").read_text())["safety"]
    safety["max_pulses_per_device"] = 2
    st = _station(tmp_path, safety=safety)
    r = _train(tmp_path, "--station", str(st), "--dry-run")
    assert r.returncode == 1
    assert "safety.max_pulses_per_device" in r.stderr and "PROGRAM_SET" in r.stderr
    assert "Traceback" not in r.stderr


# --- the station's limits, before and during a run ----------------------------------------
def _limits(**over):
    from drivers.safety import PulseLimits, SafetyLimits
    kw = dict(set=PulseLimits(1.5, 1000.0), reset=PulseLimits(3.5, 200.0),
              max_pulses_per_device=32, max_pulses_per_step=500_000,
              max_batch_devices=1 << 20)
    kw.update(over)
    return SafetyLimits(**kw)


@pytest.mark.parametrize("over, match", [
    ({"set": (0.9, 1000.0)}, r"\[PROGRAM_SET\] SET amplitude 1\.0 V exceeds "
                             r"safety\.set\.amplitude_v_max = 0\.9 V"),
    ({"max_pulses_per_device": 4}, r"an update \(optimizer\.max_pulses_per_update\) may send "
                                   r"8 pulses to one device, more than "
                                   r"safety\.max_pulses_per_device = 4"),
    ({"max_pulses_per_device": 12}, r"a refresh's re-programming .* may send 20 pulses to "
                                    r"one device, more than safety\.max_pulses_per_device"),
    ({"max_batch_devices": 1000, "read_v_max": 0.1}, None),
])
def test_every_limit_the_config_decides_is_checked_before_the_first_command(
        small_data, over, match):
    """What a dry run would refuse, a real run refuses before its first command - not
    after a RESET of every mapped device, not 88 commands into training."""
    from drivers.errors import SafetyLimitError
    from drivers.safety import LimitedBackend, PulseLimits
    over = {k: PulseLimits(*v) if k in ("set", "reset") else v for k, v in over.items()}
    cfg = small_config(data={"train_examples": 30, "test_examples": 10})
    chip = _chip(cfg)
    if match is None:   # within the limits (the batches split): the run goes on
        s = run_experiment(cfg, LimitedBackend(chip, _limits(**over)), data=small_data)
        assert s["steps"] == 30
        return
    with pytest.raises(SafetyLimitError, match=match):
        run_experiment(cfg, LimitedBackend(chip, _limits(**over)), data=small_data)
    assert chip.commands_executed == 0


def test_a_step_refused_mid_run_is_recorded_as_refused_and_never_as_sent(tmp_path,
                                                                         small_data):
    """A training step whose pulses pass max_pulses_per_step is refused before it is
    written ahead: the log's pulse totals are what reached the chip (replay's totals are
    right), and the log's /events holds one 'command_refused' event naming the limit."""
    from drivers.errors import SafetyLimitError
    from drivers.safety import LimitedBackend
    from hil.run_log import RunLog, RunLogWriter

    cfg = small_config(data={"train_examples": 300, "test_examples": 10})
    chip = _chip(cfg)
    path = str(tmp_path / "r.h5")
    with pytest.raises(SafetyLimitError, match=r"pulses in step \d+ exceed "
                                               r"safety\.max_pulses_per_step = 12"):
        run_experiment(cfg, LimitedBackend(chip, _limits(max_pulses_per_step=12)),
                       RunLogWriter(path, cfg), data=small_data)
    with RunLog(path) as lg:
        (event,) = lg.events()
        step, detail = event.step, event.detail
        assert event.kind == "command_refused" and detail["pulses"] > 12
        assert detail["command"].startswith("PROGRAM") and \
            "max_pulses_per_step" in detail["reason"]
        assert lg.status.status == "failed" and "max_pulses_per_step" in lg.status.reason
        pb = lg.pulse_batches()
        assert (pb["status"] == 2).all()                      # every logged batch acked
        ev = lg.pulse_events(columns=("n_pulses", "kind"))
        n = ev["n_pulses"].astype(np.int64)
        assert int(n[ev["kind"] == 1].sum()) == chip.counters["set_pulses"]
        assert int(n[ev["kind"] == 2].sum()) == chip.counters["reset_pulses"]
        assert (pb["step"] < step).all()     # nothing of the refused step was sent


def test_the_shipped_lab_station_runs_the_shipped_experiment(tmp_path):
    """configs/station_lab.yaml's limits and configs/mnist_mlp.yaml (its data cut to a few
    thousand examples, one epoch): the dry run passes, the 397,520-device batches going
    out in parts of at most 65,536."""
    import yaml
    pytest.importorskip("pymeasure")
    cfg = yaml.safe_load((ROOT / "configs" / "mnist_mlp.yaml").read_text())
    cfg["data"].update(train_examples=2000, test_examples=200)
    cfg["training"]["baseline"] = False
    path = tmp_path / "mnist_mlp_small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "hil.cli", "train", "--config", str(path),
                        "--station", str(ROOT / "configs" / "station_lab.yaml"), "--dry-run",
                        "--epochs", "1", "--no-progress"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "largest batch 397,520 devices (batches above safety.max_batch_devices = " \
           "65,536 go in parts" in r.stdout and "every command within the limits" in r.stdout


def test_a_torch_config_without_torch_is_one_clear_error(tmp_path):
    """A config with a model section needs the torch extra; without it, one line says so."""
    cfg = tmp_path / "cnn.yaml"
    cfg.write_text("model: {kind: lenet5}\ndata: {train_examples: 10, test_examples: 10}\n"
                   "optimizer: {beta: [0.1, 0.1, 0.1, 0.1, 0.1]}\ntraining: {epochs: 1}\n")
    code = ("import sys; sys.modules['torch'] = None\n"   # as if torch were not installed
            "from hil.cli import main\n"
            f"sys.exit(main(['train', '--config', {str(cfg)!r}, '--no-log', '--no-progress']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    assert "model: a config with a model section trains a PyTorch network, and torch is " \
           "not installed: pip install 'pcm-hil[torch]'" in r.stderr
    assert "Traceback" not in r.stderr
