"""Layer → device mapping."""
import numpy as np
import pytest

from drivers import ConfigError
from drivers.geometry import Geometry
from hil.mapping import load_bad_devices, map_layers


def test_round_trip_and_layout():
    geo = Geometry(1, 64, 64)
    m = map_layers([10, 6, 3], geo, start_address=5)
    assert [lm.shape for lm in m.layers] == [(11, 6), (7, 3)]
    addr = m.addresses
    assert addr.size == m.n_devices == 2 * (66 + 21)
    assert np.unique(addr).size == addr.size and addr.min() == 5
    layer, sign, flat = m.locate(addr)
    # layout order: layer0 plus, layer0 minus, layer1 plus, layer1 minus
    assert layer.tolist() == [0] * 132 + [1] * 42
    assert sign.tolist() == [1] * 66 + [-1] * 66 + [1] * 21 + [-1] * 21
    assert flat.tolist() == list(range(66)) * 2 + list(range(21)) * 2
    lay, _, _ = m.locate(np.array([0, 4, 4095]))
    assert lay.tolist() == [-1, -1, -1]
    assert np.concatenate([v.ravel() for v in m.layout().values()]).tolist() == addr.tolist()


def test_bad_devices_are_skipped():
    geo = Geometry(1, 16, 16)
    bad = [0, 3, 7, 100]
    m = map_layers([4, 2], geo, bad_devices=bad)
    assert not np.isin(m.addresses, bad).any()
    assert m.addresses.size == 20


def test_chip_too_small_names_the_key():
    with pytest.raises(ConfigError, match="network.layers.*needs 3140 devices"):
        map_layers([784, 2], Geometry(1, 8, 8))


def test_bad_device_file(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("5\n9\n5\n")
    assert load_bad_devices([1], str(p)).tolist() == [1, 5, 9]
    with pytest.raises(ConfigError, match="bad_devices_file"):
        load_bad_devices([], str(tmp_path / "missing.txt"))
