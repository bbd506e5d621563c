"""The character-level LSTM on the chip (hil.char_lstm_experiment): the reference's weights
and data order, every weight matrix on the chip, a small run logged, verified by replay and
plotted, through `pcm-hil train` too."""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the LSTM experiment needs the torch extra")

from drivers.errors import ConfigError  # noqa: E402
from hil.backend_url import open_backend  # noqa: E402
from hil.char_lstm_experiment import (ChipLstmTrainer, LstmBaseline, TextData,  # noqa: E402
                                      epoch_windows, initial_model)
from hil.config import CharLstmExperimentConfig, Holdout, config_from_dict  # noqa: E402
from hil.models import char_lstm as ref  # noqa: E402
from hil.replay.plots import make_plots  # noqa: E402
from hil.replay.verify import verify_run  # noqa: E402
from hil.run_log import RunLog, RunLogWriter  # noqa: E402
from hil.training import run_experiment  # noqa: E402

TINY = {"name": "tiny-lstm", "seed": 2,
        "char_lstm": {"hidden": 12, "seq_len": 8, "batch": 4},
        "data": {"holdout": "validation", "train_chars": 320, "holdout_chars": 400},
        "optimizer": {"learning_rate": 2.0, "beta": [0.07, 0.07, 0.07],
                      "refresh": {"period_steps": 5, "high_us": 5.0,
                                  "check_thresholds": False}},
        "training": {"epochs": 2},
        "log": {"flush_every_steps": 4, "snapshot_every_steps": 10}}


@pytest.fixture(scope="module")
def text():
    full = TextData.load(Holdout.VALIDATION)
    return TextData([p[:200] for p in full.train_plays[:5]], full.holdout[:1000])


def _tiny(**over):
    d = json.loads(json.dumps(TINY))
    for k, v in over.items():
        d[k].update(v)
    return config_from_dict(d)


def test_a_char_lstm_section_makes_the_experiment_and_bad_keys_are_named():
    assert isinstance(_tiny(), CharLstmExperimentConfig)
    with pytest.raises(ConfigError, match=r"optimizer.beta: needs one value per weight block "
                                          r"\(lstm_ih_l0, lstm_hh_l0, out\), got 2"):
        _tiny(optimizer={"beta": [0.1, 0.1]})
    with pytest.raises(ConfigError, match="training.matvec: the LSTM's gate matrices"):
        _tiny(training={"matvec": "chip"})
    with pytest.raises(ConfigError, match="char_lstm: hidden must be >= 1, got 0"):
        _tiny(char_lstm={"hidden": 0})
    d = dict(TINY, gan={})
    with pytest.raises(ConfigError, match="gan: a config describes one experiment; it has "
                                          "the sections char_lstm, gan"):
        config_from_dict(d)


def test_the_chip_run_starts_from_the_fp32_references_weights_and_walks_its_windows(text):
    cfg = config_from_dict({"char_lstm": {}})           # the shipped defaults, seed 0
    ours, theirs = initial_model(cfg).state_dict(), ref.build_model(ref.CharLstmConfig())
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours[k], v), k
    tiny = _tiny()
    s, wins = epoch_windows(tiny, text, 1)
    assert np.array_equal(s, ref.epoch_streams(text.train_plays, 4, 2, 2)[:, :80])
    assert len(wins) == 10 and all(x.shape == (8, 4) for x, _ in wins[:-1])
    assert np.array_equal(wins[0][1][:-1], wins[0][0][1:])   # targets: the next characters


def test_every_weight_matrix_is_on_the_chip_and_the_biases_stay_on_the_host():
    cfg = _tiny()
    trainer = ChipLstmTrainer(cfg, open_backend("sim://", cfg.sim_chip_spec()))
    assert [b.block_name for b in trainer.chip.bindings] == ["lstm_ih_l0", "lstm_hh_l0", "out"]
    assert sorted(trainer.chip.host_parameter_names) == ["lstm.bias_hh_l0", "lstm.bias_ih_l0",
                                                         "out.bias"]
    assert trainer.chip.n_weights == 79 * 48 + 12 * 48 + 12 * 79
    base = LstmBaseline(cfg)
    for (name, p), (_, q) in zip(trainer.model.named_parameters(),
                                 base.model.named_parameters()):
        assert torch.equal(p, q), name


def test_a_small_run_learns_is_logged_verifies_by_replay_and_plots(tmp_path, text):
    cfg = _tiny()
    path = str(tmp_path / "lstm.h5")
    s = run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()),
                       RunLogWriter(path, cfg), data=text)
    assert s["steps"] == 20 and s["examples"] == 2 * 4 * 79
    assert s["update_set_pulses"] == sum(e["set_pulses"] for e in s["per_epoch"]) > 0
    first, last = s["per_epoch"]
    assert last["train_bpc"] < first["train_bpc"] < np.log2(79) + 0.5
    assert s["holdout_bpc"] < np.log2(79) and s["baseline_holdout_bpc"] < np.log2(79)
    assert s["bpc_gap_percent"] == pytest.approx(
        100 * (s["holdout_bpc"] / s["baseline_holdout_bpc"] - 1))
    assert len(s["sample"]) == 300
    assert s["programming_reduction"] == pytest.approx(
        s["weights"] * s["steps"] / s["update_set_pulses"])
    report = verify_run(path, data=text)
    assert report.ok, report.message
    with RunLog(path) as lg:
        assert list(lg.epoch_metrics()["holdout_bpc"]) == [e["holdout_bpc"]
                                                           for e in s["per_epoch"]]
        written = make_plots(lg, str(tmp_path / "plots"), [0, s["steps"]])
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"loss.png", "bpc.png", "pulses.png"} <= names and "fid.png" not in names


def test_pcm_hil_train_runs_the_config_and_replay_plots_it(tmp_path):
    d = json.loads(json.dumps(TINY))
    d["training"]["epochs"] = 1
    cfg_path = tmp_path / "lstm.yaml"
    cfg_path.write_text(json.dumps(d))           # JSON is YAML
    run = str(tmp_path / "run.h5")
    r = subprocess.run([sys.executable, "-m", "hil.cli", "train", "--config", str(cfg_path),
                        "--run", run, "--no-progress", "--summary-json",
                        str(tmp_path / "s.json")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "training tiny-lstm: Shakespeare's training plays x 1 epochs" in r.stdout
    assert "epoch   1/1  train " in r.stdout and " bpc  holdout " in r.stdout
    assert "done: validation " in r.stdout and "bits per character, fp32 " in r.stdout
    r = subprocess.run([sys.executable, "-m", "hil.cli", "replay", run, "--verify",
                        "--plot", str(tmp_path / "plots")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "plots" / "bpc.png").stat().st_size > 0
