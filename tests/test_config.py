"""Experiment configs: the shipped files load, bad ones get one error naming the key."""
from pathlib import Path

import pytest

from drivers import ConfigError
from hil.config import (CONFIG_VERSION, LEGACY_VALUES, ExperimentConfig, config_from_dict,
                        load_config, logged_config, with_legacy_values, with_overrides)

ROOT = Path(__file__).resolve().parents[1]
V1_LOG = ROOT / "tests" / "data" / "mlp-config-v1.h5"


@pytest.mark.parametrize("name", ["mnist_mlp.yaml", "mnist_mlp_nominal.yaml",
                                  "mnist_mlp_inverse.yaml", "quick.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.network.layers == [784, 250, 10]
    assert cfg.config_version == CONFIG_VERSION


def test_default_config_is_the_paper_experiment_with_a_validation_split():
    cfg = load_config(ROOT / "configs" / "mnist_mlp.yaml")
    assert cfg.optimizer.batch_size == 1 and cfg.training.baseline
    # the standard 50k/10k split of the 60,000 training digits; the 10,000 test digits
    assert cfg.data.train_examples == 50000 and cfg.data.validation_examples == 10000
    assert cfg.data.test_examples == 10000
    with pytest.raises(ConfigError, match=r"train_examples must be in 1\.\.50000"):
        config_from_dict({"data": {"train_examples": 60000}})
    assert config_from_dict({"data": {"train_examples": 60000,
                                      "validation_examples": 0}}).data.train_examples == 60000


def test_the_variants_change_one_thing_each():
    """The README's comparison: the paper's χ rule, and the paper-style schedule, each
    against the default with everything else equal."""
    main = load_config(ROOT / "configs" / "mnist_mlp.yaml").to_dict()
    for name, section, key, value in (("nominal", "optimizer", "chi_update", "nominal"),
                                      ("inverse", "optimizer", "lr_schedule", "inverse")):
        v = load_config(ROOT / "configs" / f"mnist_mlp_{name}.yaml").to_dict()
        assert v[section][key] == value != main[section][key]
        differ = {f"{s}.{k}" for s in main if isinstance(main[s], dict)
                  for k in main[s] if main[s][k] != v[s][k]}
        # the variant's key, and only the hyperparameters tuned for it on validation
        assert f"{section}.{key}" in differ
        assert differ <= {f"{section}.{key}", "optimizer.learning_rate",
                          "optimizer.epsilon_us", "optimizer.lr_decay", "training.epochs"}


# --- config formats: an old log keeps the behaviour it ran with -------------------------------
def test_keys_added_after_a_format_take_their_legacy_values():
    d = {"config_version": 1, "data": {"train_examples": 100}, "optimizer": {"refresh": {}}}
    out = with_legacy_values(d, 1)
    for dotted, value in LEGACY_VALUES[2].items():
        node = out
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted
    assert out["data"]["train_examples"] == 100 and d == {
        "config_version": 1, "data": {"train_examples": 100}, "optimizer": {"refresh": {}}}
    # a key the config does have is kept
    kept = with_legacy_values({"data": {"validation_examples": 5000}}, 1)
    assert kept["data"]["validation_examples"] == 5000
    # a config of the current format gets the defaults, not the legacy values
    cfg = config_from_dict({})
    assert cfg.config_version == CONFIG_VERSION and cfg.data.validation_examples == 10000
    assert cfg.optimizer.refresh.hold_until_updated and cfg.optimizer.refresh.fresh_read
    with pytest.raises(ConfigError, match="config_version: format 9 is not one"):
        config_from_dict({"config_version": 9})


def test_every_experiment_kind_records_its_format_and_takes_only_its_own_legacy_keys():
    """A torch, LSTM or GAN config logged before format 2 shares the optimizer's new keys with
    the MLP (their old behaviour comes back) but has no `data.validation_examples`: the
    legacy value of a key its kind lacks is not added (it would be an unknown key)."""
    from hil.config import (CharLstmExperimentConfig, GanExperimentConfig,
                            TorchExperimentConfig)
    for section, kind in (("model", TorchExperimentConfig), ("char_lstm",
                                                             CharLstmExperimentConfig),
                          ("gan", GanExperimentConfig)):
        old = logged_config({section: {}})
        assert isinstance(old, kind) and old.config_version == 1
        assert not old.optimizer.skip_saturated and not old.optimizer.refresh.fresh_read
        new = config_from_dict({section: {}})
        assert new.config_version == CONFIG_VERSION and new.optimizer.skip_saturated
        assert new.to_dict()["config_version"] == CONFIG_VERSION
        with pytest.raises(ConfigError, match="config_version: format 0 is not one"):
            config_from_dict({section: {}, "config_version": 0})


def test_an_old_logs_config_keeps_its_behaviour_and_its_log_still_verifies():
    """tests/data/mlp-config-v1.h5 was written before config format 2: its config has no
    config_version and none of the keys added since. Read back, it is format 1 with the old
    behaviour (no validation split, blind initial programming, the refresh rule without its
    guards, which a current config refuses), and the log re-runs bit for bit."""
    from hil.replay.verify import verify_run
    from hil.run_log import RunLog
    from hil.training import MixedPrecisionTrainer
    from sim_backend import SimChipSpec

    with RunLog(V1_LOG) as log:
        raw = log.config
        cfg = log.experiment_config()
    assert "config_version" not in raw and "validation_examples" not in raw["data"]
    assert cfg.config_version == 1 and cfg.data.validation_examples == 0
    assert cfg.network.init_programming.value == "blind"
    r = cfg.optimizer.refresh
    assert (r.criterion.value, r.high_us) == ("either", 7.0)
    assert not (r.check_thresholds or r.hold_until_updated or r.fresh_read)
    assert logged_config(raw) == cfg
    # the same keys as a config of today: refused, the refresh would feed back
    with pytest.raises(ConfigError, match=r"optimizer\.refresh\.high_us: 7\.0 µS is below"):
        MixedPrecisionTrainer(config_from_dict(raw), SimChipSpec().build())
    report = verify_run(str(V1_LOG))
    assert report.ok, report.message
    assert report.batches_checked > 300 and report.epoch_metrics_checked == 2


@pytest.mark.parametrize("text,match", [
    ("optimizer:\n  lerning_rate: 0.1\n", r"optimizer\.lerning_rate: unknown key"),
    ("optimizer:\n  learning_rate: fast\n", r"optimizer\.learning_rate: expected a number"),
    ("optimizer:\n  learning_rate: -1\n", r"learning_rate must be > 0"),
    ("training:\n  epochs: 2.5\n", r"training\.epochs: expected an integer"),
    ("training:\n  matvec: gpu\n", r"training\.matvec: 'gpu' is not one of: host, chip"),
    ("optimizer:\n  refresh:\n    criterion: maybe\n", r"optimizer\.refresh\.criterion"),
    ("optimizer:\n  beta: [0.1]\n", r"optimizer\.beta: needs one value per layer"),
    ("network:\n  layers: [784, x, 10]\n", r"network\.layers\[1\]: expected an integer"),
    ("data: 5\n", r"data: expected a mapping"),
    ("seed: [1\n", r"malformed YAML at line"),
    # nonsense that used to be accepted, or crashed the trainer with a traceback
    ("network:\n  layers: [100, 50, 10]\n", r"network\.layers: the MLP trains on MNIST: 784 "
                                            r"inputs .* got \[100, 50, 10\]"),
    ("network:\n  layers: [784, 50, 3]\n", r"network\.layers: .*from 784 to 10"),
    ("optimizer:\n  learning_rate: .inf\n", r"optimizer\.learning_rate: expected a finite "
                                            r"number, got inf"),
    ("optimizer:\n  epsilon_us: .nan\n", r"optimizer\.epsilon_us: expected a finite number"),
    ("optimizer:\n  lr_decay: -1\n", r"optimizer: lr_decay must be in \(0, 1\], got -1"),
    ("optimizer:\n  lr_decay: 1.5\n", r"lr_decay must be in \(0, 1\]"),
    ("optimizer:\n  refresh: {high_us: 2.0, low_us: 5.0}\n",
     r"optimizer\.refresh: high_us must be above low_us.*high_us 2, low_us 5"),
    ("chip:\n  rows: 0\n", r"chip: rows must be >= 1, got 0"),
    ("chip:\n  cols: -4\n", r"chip: cols must be >= 1, got -4"),
])
def test_bad_configs_name_the_key(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/config.yaml")


@pytest.mark.parametrize("make,match", [
    (lambda p: p.mkdir(), "is a folder, not a YAML file"),
    (lambda p: p.write_bytes(b"name: caf\xe9\n"), r"not UTF-8 text: byte 0xe9 at offset 9"),
    (lambda p: p.write_bytes(b""), r"the file is empty"),
    (lambda p: p.write_text("# nothing but a comment\n"), r"the file is empty"),
    (lambda p: p.write_text("{}\n"), r"the file is empty"),
])
def test_a_file_that_is_no_config_is_one_error_naming_it(tmp_path, make, match):
    """A folder, a file in another encoding, an empty file: one error naming the file, no
    traceback - and never the 20-epoch default experiment run in its place."""
    p = tmp_path / "c.yaml"
    make(p)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: ")


def test_round_trip_and_overrides():
    cfg = ExperimentConfig()
    assert config_from_dict(cfg.to_dict()) == cfg
    o = with_overrides(cfg, seed=5, epochs=3, backend="sim://?seed=2", baseline=False)
    assert (o.seed, o.training.epochs, o.chip.backend, o.training.baseline) == \
        (5, 3, "sim://?seed=2", False)
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        with_overrides(cfg, epochs=0)


@pytest.mark.parametrize("name, kind, section", [
    ("mnist_cnn.yaml", "TorchExperimentConfig", "model"),
    ("shakespeare_lstm.yaml", "CharLstmExperimentConfig", "char_lstm"),
    ("mnist_gan.yaml", "GanExperimentConfig", "gan")])
def test_the_shipped_torch_configs_carry_their_kinds_defaults(name, kind, section):
    """The shipped CNN, LSTM and GAN configs and their kinds' defaults (which scripts/bench
    and every in-process run start from) hold the settings chosen on validation: one must
    not move without the other."""
    import hil.config
    shipped = load_config(ROOT / "configs" / name).to_dict()
    default = getattr(hil.config, kind)().to_dict()
    for key in (section, "optimizer"):   # (training.epochs is the MLP's shared default)
        assert shipped[key] == default[key], key
    assert (shipped["training"]["baseline_learning_rate"]
            == default["training"]["baseline_learning_rate"])
