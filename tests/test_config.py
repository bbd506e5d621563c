"""Experiment configs: the shipped files load, bad ones get one error naming the key."""
from pathlib import Path

import pytest

from drivers import ConfigError
from hil.config import ExperimentConfig, config_from_dict, load_config, with_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["mnist_mlp.yaml", "quick.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.network.layers == [784, 250, 10]


def test_default_config_is_the_paper_experiment():
    cfg = load_config(ROOT / "configs" / "mnist_mlp.yaml")
    assert cfg.optimizer.batch_size == 1 and cfg.training.baseline
    assert cfg.data.train_examples == 60000 and cfg.data.test_examples == 10000


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


def test_round_trip_and_overrides():
    cfg = ExperimentConfig()
    assert config_from_dict(cfg.to_dict()) == cfg
    o = with_overrides(cfg, seed=5, epochs=3, backend="sim://?seed=2", baseline=False)
    assert (o.seed, o.training.epochs, o.chip.backend, o.training.baseline) == \
        (5, 3, "sim://?seed=2", False)
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        with_overrides(cfg, epochs=0)
