"""The sweep file: its keys are checked before anything runs, each error naming the key."""
from __future__ import annotations

import os

import pytest

from drivers.errors import ConfigError
from hil.sweep.spec import DistributionKind, load_sweep
from sweep_files import write_base, write_sweep


def _error(tmp_path, **keys) -> str:
    with pytest.raises(ConfigError) as e:
        load_sweep(write_sweep(tmp_path, **keys))
    return str(e.value)


def test_a_sweep_file_loads_with_its_base_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = write_base(tmp_path)
    path = tmp_path / "refresh.yaml"
    path.write_text(f"base: {base}\ngrid:\n  optimizer.refresh.high_us: [8.0, 9.0]\n"
                    "seeds: [0, 1]\n", encoding="utf-8")
    s = load_sweep(path)
    assert s.name == "refresh"                                  # from the file name
    assert s.output == os.path.join(str(tmp_path), "sweeps", "refresh")
    assert s.search == "grid"
    assert s.base_config["network"]["layers"] == [784, 16, 10]
    assert s.file.grid == {"optimizer.refresh.high_us": [8.0, 9.0]}
    assert load_sweep(path, output="elsewhere").output == str(tmp_path / "elsewhere")


def test_without_a_base_the_points_start_from_the_documented_defaults(tmp_path):
    s = load_sweep(write_sweep(tmp_path, base=None, grid={"optimizer.epsilon_us": [1.0]}))
    assert s.base_config["network"]["layers"] == [784, 250, 10]


def test_a_random_search_parses_its_distributions(tmp_path):
    s = load_sweep(write_sweep(tmp_path, random={"samples": 5, "seed": 3, "params": {
        "optimizer.learning_rate": {"loguniform": [0.01, 0.3]},
        "optimizer.refresh.high_us": {"uniform": [7, 10]},
        "optimizer.max_pulses_per_update": {"int": [1, 8]},
        "optimizer.refresh.criterion": {"choice": ["either", "both"]}}}))
    assert s.search == "random"
    d = s.distributions
    assert d["optimizer.learning_rate"].kind is DistributionKind.LOGUNIFORM
    assert d["optimizer.refresh.criterion"].values == ("either", "both")
    assert d["optimizer.max_pulses_per_update"].values == (1, 8)


def test_an_unknown_sweep_key_is_named(tmp_path):
    assert "grids: unknown key (expected one of: name, base, set, grid," in _error(
        tmp_path, grids={"seed": [1]})


def test_a_config_key_that_does_not_exist_is_named_with_what_exists(tmp_path):
    msg = _error(tmp_path, grid={"optimizer.lerning_rate": [0.1]})
    assert "grid.optimizer.lerning_rate: not a key of the experiment config" in msg
    assert "optimizer has: learning_rate, lr_schedule, lr_decay" in msg
    assert "set.optimizer.refresh.hgh_us: not a key" in _error(
        tmp_path, set={"optimizer.refresh.hgh_us": 8})
    assert "variants[1].network.layrs: not a key" in _error(
        tmp_path, variants=[{"network.layers": [784, 8, 10]}, {"network.layrs": [1]}])
    assert "random.params.optimizer.eps: not a key" in _error(
        tmp_path, random={"samples": 2, "params": {"optimizer.eps": {"uniform": [1, 2]}}})


def test_a_path_through_a_value_is_refused(tmp_path):
    assert "grid.network.layers.0: network.layers is a value, not a section" in _error(
        tmp_path, grid={"network.layers.0": [784]})


def test_grid_values_must_be_a_non_empty_list(tmp_path):
    assert "grid.optimizer.learning_rate: expected a list, got 0.1" in _error(
        tmp_path, grid={"optimizer.learning_rate": 0.1})
    assert "grid.optimizer.learning_rate: needs at least one value" in _error(
        tmp_path, grid={"optimizer.learning_rate": []})


def test_seeds_come_from_the_seeds_list_only(tmp_path):
    assert "grid.seed: a point's seed comes from the sweep's `seeds:` list" in _error(
        tmp_path, grid={"seed": [1, 2]})
    assert "seeds: repeats a seed" in _error(tmp_path, seeds=[1, 1])
    assert "seeds[1]: must be >= 0" in _error(tmp_path, seeds=[1, -2])
    assert "seeds: needs at least one seed" in _error(tmp_path, seeds=[])


def test_a_sweep_is_a_grid_or_a_random_search(tmp_path):
    assert "random: a sweep is a grid or a random search, not both" in _error(
        tmp_path, grid={"optimizer.learning_rate": [0.1]},
        random={"samples": 2, "params": {"optimizer.lr_decay": {"uniform": [0.5, 1]}}})


def test_a_key_is_set_in_one_place_only(tmp_path):
    assert "variants[0].optimizer.learning_rate: also swept by grid: or random:" in _error(
        tmp_path, grid={"optimizer.learning_rate": [0.1]},
        variants=[{"optimizer.learning_rate": 0.2}])
    assert "set.optimizer.learning_rate: also swept" in _error(
        tmp_path, grid={"optimizer.learning_rate": [0.1]},
        set={"optimizer.learning_rate": 0.2})


@pytest.mark.parametrize("dist, expected", [
    ({"gaussian": [0, 1]}, "unknown distribution 'gaussian'"),
    ({"uniform": [2, 1]}, "uniform: low must be below high"),
    ({"loguniform": [0, 1]}, "loguniform: low must be > 0"),
    ({"int": [1.5, 3]}, "int: expected two integers"),
    ({"uniform": [1]}, "uniform: expected [low, high]"),
    ({"choice": []}, "choice: expected a non-empty list"),
    ([0.1, 0.2], "expected one of {uniform: [low, high]}"),
])
def test_a_bad_distribution_is_named(tmp_path, dist, expected):
    msg = _error(tmp_path, random={"samples": 2, "params": {"optimizer.learning_rate": dist}})
    assert "random.params.optimizer.learning_rate: " in msg and expected in msg


def test_a_random_search_needs_samples_and_keys(tmp_path):
    assert "random: samples must be >= 1" in _error(tmp_path, random={
        "samples": 0, "params": {"optimizer.lr_decay": {"uniform": [0.5, 1]}}})
    assert "random.params: needs at least one key" in _error(tmp_path, random={"samples": 3})


def test_a_missing_base_config_is_named(tmp_path):
    assert "base: experiment config nowhere.yaml not found" in _error(
        tmp_path, base="nowhere.yaml")


def test_a_name_that_cannot_be_a_folder_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: a/b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="name: not usable as a folder name"):
        load_sweep(path)
