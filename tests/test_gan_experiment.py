"""The MLP GAN on the chip (hil.gan_experiment): the reference's players, digits and latents,
both players on one chip, a generator step that leaves the discriminator alone, a small run
logged, verified by replay and plotted, through `pcm-hil train` too."""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the GAN experiment needs the torch extra")

from drivers.errors import ConfigError  # noqa: E402
from hil.backend_url import open_backend  # noqa: E402
from hil.config import GanExperimentConfig, config_from_dict  # noqa: E402
from hil.gan_experiment import (ChipGanTrainer, GanBaseline, GanData,  # noqa: E402
                                epoch_batches, initial_players, sample_grid)
from hil.models import mnist_gan as ref  # noqa: E402
from hil.replay.plots import make_plots  # noqa: E402
from hil.replay.verify import verify_run  # noqa: E402
from hil.run_log import RunLog, RunLogWriter  # noqa: E402
from hil.training import run_experiment  # noqa: E402

TINY = {"name": "tiny-gan", "seed": 1,
        "gan": {"latent": 6, "g_hidden": 12, "d_hidden": 8, "batch": 8, "eval_samples": 120,
                "biases_on_chip": True},
        "data": {"train_examples": 96, "holdout": "validation", "holdout_examples": 300},
        "optimizer": {"learning_rate": 0.1, "beta": [0.1, 0.07, 0.03, 0.09],
                      "refresh": {"period_steps": 6, "high_us": 5.0,
                                  "check_thresholds": False}},
        "training": {"epochs": 2},
        "log": {"flush_every_steps": 4, "snapshot_every_steps": 10}}


def _tiny(**over):
    d = json.loads(json.dumps(TINY))
    for k, v in over.items():
        d[k].update(v)
    return config_from_dict(d)


def test_a_gan_section_makes_the_experiment_and_bad_keys_are_named():
    assert isinstance(_tiny(), GanExperimentConfig)
    with pytest.raises(ConfigError, match=r"optimizer.beta: needs one value per weight block "
                                          r"\(generator_fc1, generator_fc2, discriminator_fc1, "
                                          r"discriminator_fc2\), got 3"):
        _tiny(optimizer={"beta": [0.1, 0.1, 0.1]})
    with pytest.raises(ConfigError, match="data: train_examples must be in 1..50000, got 50001"):
        _tiny(data={"train_examples": 50001})
    with pytest.raises(ConfigError, match="gan: eval_samples must be >= 2, got 1"):
        _tiny(gan={"eval_samples": 1})


def test_the_chip_run_starts_from_the_fp32_references_players_and_sees_its_data(mnist):
    cfg = config_from_dict({"gan": {}})                  # the shipped defaults, seed 0
    ours = initial_players(cfg)
    for mine, theirs in zip((ours.generator, ours.discriminator),
                            ref.build_players(ref.GanConfig())):
        for k, v in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[k], v), k
    tiny = _tiny()
    data = GanData.from_mnist(mnist, tiny)
    batches = epoch_batches(tiny, data, 0)
    order = np.random.default_rng([1, 1]).permutation(96)
    assert len(batches) == 12
    assert np.array_equal(batches[0][0], mnist.train_x[order[:8]])
    assert np.array_equal(batches[1][1], np.random.default_rng([1, 1]).standard_normal(
        (96, 6), dtype=np.float32)[8:16])


def test_both_players_are_on_the_chip_and_the_baseline_starts_where_the_chip_does():
    cfg = _tiny()
    trainer = ChipGanTrainer(cfg, open_backend("sim://", cfg.sim_chip_spec()))
    assert [b.block_name for b in trainer.chip.bindings] == [
        "generator_fc1", "generator_fc2", "discriminator_fc1", "discriminator_fc2"]
    assert trainer.chip.host_parameter_names == []
    assert trainer.chip.n_weights == 7 * 12 + 13 * 784 + 785 * 8 + 9 * 1
    host = ChipGanTrainer(_tiny(gan={"biases_on_chip": False}),
                          open_backend("sim://", cfg.sim_chip_spec()))   # the default
    assert host.chip.host_parameter_names == [
        f"{p}.fc{i}.bias" for p in ("generator", "discriminator") for i in (1, 2)]
    assert host.chip.n_weights == 6 * 12 + 12 * 784 + 784 * 8 + 8 * 1
    base = GanBaseline(cfg)
    for (name, p), (_, q) in zip(trainer.players.named_parameters(),
                                 base.players.named_parameters()):
        assert torch.equal(p, q), name


def test_a_small_run_is_logged_verifies_by_replay_and_plots_both_players(tmp_path, mnist):
    cfg = _tiny()
    path = str(tmp_path / "gan.h5")
    data = GanData.from_mnist(mnist, cfg)
    s = run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()),
                       RunLogWriter(path, cfg), data=data)
    assert s["steps"] == 2 * 2 * 12 and s["examples"] == 2 * 96
    assert s["update_set_pulses"] == sum(e["set_pulses"] for e in s["per_epoch"]) > 0
    assert s["fid"] > 0 and s["baseline_fid"] > 0 and 1 <= s["inception_score"] <= 10
    assert s["fid_gap_percent"] == pytest.approx(100 * (s["fid"] / s["baseline_fid"] - 1))
    report = verify_run(path, data=data)
    assert report.ok, report.message
    with RunLog(path) as lg:
        sm = lg.step_metrics()
        assert list(sm["step"][:3]) == [2, 4, 6]          # one row per batch: D, then G step
        assert np.all(sm["d_set_pulses"] + sm["g_set_pulses"] == sm["set_pulses"])
        # the generator's steps (even steps) pulse generator devices only
        g_devices = np.concatenate([lg.layout[f"generator_fc{i}.{s}"].ravel()
                                    for i in (1, 2) for s in ("plus", "minus")])
        ev = lg.pulse_events(columns=("step", "address", "purpose"))
        upd = (ev["purpose"] == lg.purpose_code("update")) & (ev["step"] > 0)
        g_step = upd & (ev["step"] % 2 == 0)
        assert g_step.any() and np.isin(ev["address"][g_step], g_devices).all()
        assert not np.isin(ev["address"][upd & (ev["step"] % 2 == 1)], g_devices).any()
        em = lg.epoch_metrics()
        assert list(em["fid"]) == [e["fid"] for e in s["per_epoch"]]
        written = make_plots(lg, str(tmp_path / "plots"), [0, s["steps"]])
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"loss.png", "fid.png", "gan_losses.png"} <= names and "bpc.png" not in names


def test_the_sample_grid_is_eight_by_eight_digits_in_0_1():
    cfg = _tiny()
    grid = sample_grid(initial_players(cfg), cfg)
    assert grid.shape == (224, 224) and 0 <= grid.min() and grid.max() <= 1


def test_pcm_hil_train_runs_the_config(tmp_path):
    d = json.loads(json.dumps(TINY))
    d["training"]["epochs"] = 1
    cfg_path = tmp_path / "gan.yaml"
    cfg_path.write_text(json.dumps(d))           # JSON is YAML
    r = subprocess.run([sys.executable, "-m", "hil.cli", "train", "--config", str(cfg_path),
                        "--run", str(tmp_path / "run.h5"), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "training tiny-gan: 96 digits x 1 epochs" in r.stdout
    assert "epoch   1/1  D " in r.stdout and " FID " in r.stdout
    assert "done: classifier-FID " in r.stdout and "; fp32 " in r.stdout
