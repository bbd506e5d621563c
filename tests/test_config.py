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
