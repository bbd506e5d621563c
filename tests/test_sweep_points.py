"""A sweep's points: the search expanded into validated experiment configs, each with an
identity that survives a growing sweep file."""
from __future__ import annotations

import os
import shutil

import pytest

from drivers.errors import ConfigError
from hil.sweep.points import expand, format_value
from hil.sweep.spec import load_sweep
from sweep_files import write_base, write_sweep

PRESETS = os.path.join(os.path.dirname(__file__), "..", "sim_backend", "presets")


def _points(tmp_path, **keys):
    return expand(load_sweep(write_sweep(tmp_path, **keys)))


def _error(tmp_path, **keys) -> str:
    with pytest.raises(ConfigError) as e:
        _points(tmp_path, **keys)
    return str(e.value)


def test_a_grid_is_the_product_of_its_values_crossed_with_the_seeds(tmp_path):
    pts = _points(tmp_path, grid={"optimizer.refresh.high_us": [8.0, 9.0],
                                  "optimizer.refresh.criterion": ["either", "both"]},
                  seeds=[0, 1], set={"optimizer.refresh.low_us": 2.5})
    assert len(pts) == 8
    assert [(p.overrides["optimizer.refresh.high_us"], p.overrides[
        "optimizer.refresh.criterion"], p.seed) for p in pts[:3]] == [
        (8.0, "either", 0), (8.0, "either", 1), (8.0, "both", 0)]
    first = pts[0].config
    assert first["optimizer"]["refresh"] == {**first["optimizer"]["refresh"], "high_us": 8.0,
                                             "criterion": "either", "low_us": 2.5}
    assert first["network"]["layers"] == [784, 16, 10]          # the base's
    assert pts[0].label == "high_us=8, criterion=either"
    assert pts[0].experiment().optimizer.refresh.high_us == 8.0
    # The seeds of one setting share it; different settings do not.
    assert pts[0].setting == pts[1].setting != pts[2].setting
    assert len({p.id for p in pts}) == 8


def test_without_seeds_every_point_takes_the_base_seed(tmp_path):
    base = write_base(tmp_path, seed=7)
    pts = _points(tmp_path, base=str(base), grid={"optimizer.epsilon_us": [1.0, 2.0]})
    assert [p.seed for p in pts] == [7, 7]


def test_variants_set_linked_keys_together_and_cross_the_grid(tmp_path):
    pts = _points(tmp_path, grid={"optimizer.learning_rate": [0.05, 0.1]}, variants=[
        {"network.layers": [784, 8, 10]},
        {"network.layers": [784, 8, 8, 10], "network.init_range": [0.2, 0.2, 0.3],
         "optimizer.beta": [0.1, 0.1, 0.3]}])
    assert len(pts) == 4
    assert pts[1].config["network"]["layers"] == [784, 8, 8, 10]
    assert pts[1].config["optimizer"]["beta"] == [0.1, 0.1, 0.3]
    assert pts[1].label == "learning_rate=0.05, layers=784x8x8x10, init_range=0.2x0.2x0.3, " \
                           "beta=0.1x0.1x0.3"


def test_a_random_search_draws_the_same_points_from_the_same_file(tmp_path):
    search = {"samples": 6, "seed": 11, "params": {
        "optimizer.learning_rate": {"loguniform": [0.01, 0.3]},
        "optimizer.refresh.high_us": {"uniform": [7.0, 10.0]},
        "optimizer.max_pulses_per_update": {"int": [1, 3]},
        "network.layers": {"choice": [[784, 8, 10], [784, 16, 10]]}}}
    a = _points(tmp_path, random=search, seeds=[0, 1])
    b = _points(tmp_path, random=search, seeds=[0, 1])
    assert len(a) == 12 and [p.id for p in a] == [p.id for p in b]
    for p in a:
        o = p.overrides
        assert 0.01 <= o["optimizer.learning_rate"] < 0.3
        assert 7.0 <= o["optimizer.refresh.high_us"] < 10.0
        assert o["optimizer.max_pulses_per_update"] in (1, 2, 3)
        assert o["network.layers"] in ([784, 8, 10], [784, 16, 10])
    other = _points(tmp_path, random={**search, "seed": 12}, seeds=[0, 1])
    assert {p.id for p in other}.isdisjoint(p.id for p in a)


def test_a_growing_grid_keeps_the_points_it_had(tmp_path):
    small = _points(tmp_path, grid={"optimizer.epsilon_us": [1.0, 1.5]}, seeds=[0])
    grown = _points(tmp_path, grid={"optimizer.epsilon_us": [1.0, 1.5, 2.0]}, seeds=[0, 1])
    assert {p.id for p in small} < {p.id for p in grown}
    changed_base = _points(tmp_path, base=str(write_base(tmp_path, data={
        "train_examples": 200, "test_examples": 300})), grid={"optimizer.epsilon_us": [1.0]},
        seeds=[0])
    assert changed_base[0].id not in {p.id for p in grown}      # another run, another id


def test_a_bad_value_is_named_by_its_place_in_the_sweep_file(tmp_path):
    msg = _error(tmp_path, grid={"optimizer.learning_rate": [0.1, -0.1]})
    assert "grid.optimizer.learning_rate[1]: optimizer: learning_rate must be > 0" in msg
    msg = _error(tmp_path, grid={"optimizer.refresh.criterion": ["either", "sometimes"]})
    assert ("grid.optimizer.refresh.criterion[1]: optimizer.refresh.criterion: 'sometimes' "
            "is not one of: both, either") in msg
    assert "set.training.epochs: training: epochs must be >= 1" in _error(
        tmp_path, set={"training.epochs": 0})
    assert "variants[0]: network: init_range needs one value per layer (3)" in _error(
        tmp_path, variants=[{"network.layers": [784, 8, 8, 10]}])
    assert "random.params.optimizer.max_pulses_per_update (sample 1): optimizer: " \
           "max_pulses_per_update must be >= 1" in _error(tmp_path, random={
               "samples": 3, "params": {"optimizer.max_pulses_per_update": {"int": [0, 0]}}})


def test_keys_that_must_change_together_are_pointed_to_variants(tmp_path):
    msg = _error(tmp_path, grid={"network.layers": [[784, 8, 10], [784, 8, 8, 10]]})
    assert "grid.network.layers[1]: network: init_range needs one value per layer (3)" in msg
    assert "go in one entry of variants:" in msg


def test_the_same_run_twice_is_refused(tmp_path):
    msg = _error(tmp_path, grid={"optimizer.epsilon_us": [1.5, 1.5]})
    assert "is the same run as" in msg


def test_a_fitted_model_file_is_found_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(PRESETS, "pcm_like.yaml"), tmp_path / "fitted.yaml")
    pts = _points(tmp_path, grid={"chip.model": ["jap", "fitted.yaml"]})
    assert pts[0].config["chip"]["model"] == "jap"
    assert pts[1].config["chip"]["model"] == str(tmp_path / "fitted.yaml")
    assert pts[1].label == "model=fitted"
    msg = _error(tmp_path, grid={"chip.model": ["jap", "missing.yaml"]})
    assert "grid.chip.model[1]: chip.model: 'missing.yaml' is neither a preset" in msg
    (tmp_path / "broken.yaml").write_text("alpha: [1, 2\n", encoding="utf-8")
    assert "grid.chip.model[0]: chip.model: " in _error(tmp_path, grid={
        "chip.model": ["broken.yaml"]})


def test_points_run_on_simulated_chips_only(tmp_path):
    msg = _error(tmp_path, set={"chip.backend": "socket://127.0.0.1:7700"})
    assert "set.chip.backend: a sweep runs its points side by side on simulated chips" in msg


def test_folder_names_are_readable_and_unique(tmp_path):
    pts = _points(tmp_path, grid={"optimizer.refresh.high_us": [8.0, 8.25]}, seeds=[3])
    assert pts[0].id.startswith("high_us=8_seed=3-")
    assert pts[1].id.startswith("high_us=8.25_seed=3-")
    assert all(os.sep not in p.id for p in pts)


def test_values_are_formatted_for_labels():
    assert format_value(0.1234567) == "0.1235"
    assert format_value([784, 250, 10]) == "784x250x10"
    assert format_value(True) == "true"
    assert format_value("/a/b/model.yaml") == "model"
