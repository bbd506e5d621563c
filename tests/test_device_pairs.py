"""Weight blocks ↔ device pairs: allocation, layout order, addresses back to weights."""
import numpy as np
import pytest

from drivers import ConfigError
from drivers.geometry import Geometry
from hil.device_pairs import WeightBlock, allocate_pairs, load_bad_devices

BLOCKS = [WeightBlock("fc", (11, 6), 0.1),            # an MLP layer with its bias row
          WeightBlock("conv", (4, 2, 3, 3), 0.2),     # a convolution kernel
          WeightBlock("bias", (5,), 0.3)]             # a bias vector on its own


def test_blocks_of_any_shape_round_trip_in_layout_order():
    m = allocate_pairs(BLOCKS, Geometry(1, 64, 64), start_address=5)
    assert [b.shape for b in m.blocks] == [(11, 6), (4, 2, 3, 3), (5,)]
    assert [b.beta for b in m.blocks] == [0.1, 0.2, 0.3]
    addr = m.addresses
    sizes = [66, 72, 5]
    assert addr.size == m.n_devices == 2 * sum(sizes)
    # handed out from the start address upward: block by block, G+ then G-
    assert addr.tolist() == list(range(5, 5 + addr.size))
    block, sign, flat = m.locate(addr)
    assert block.tolist() == sum(([i] * 2 * n for i, n in enumerate(sizes)), [])
    assert sign.tolist() == sum(([1] * n + [-1] * n for n in sizes), [])
    assert flat.tolist() == sum((list(range(n)) * 2 for n in sizes), [])
    # a weight's flat index is its row-major position in the block
    conv = m.blocks[1]
    b, s, f = m.locate(np.array([conv.plus[2, 1, 0, 2], conv.minus[3, 0, 2, 1]]))
    assert b.tolist() == [1, 1] and s.tolist() == [1, -1]
    assert f.tolist() == [np.ravel_multi_index((2, 1, 0, 2), conv.shape),
                          np.ravel_multi_index((3, 0, 2, 1), conv.shape)]
    assert m.locate(np.array([0, 4, 4095]))[0].tolist() == [-1, -1, -1]


def test_layout_names_each_block_plus_and_minus():
    m = allocate_pairs(BLOCKS, Geometry(1, 64, 64))
    lay = m.layout()
    assert list(lay) == ["fc.plus", "fc.minus", "conv.plus", "conv.minus", "bias.plus",
                         "bias.minus"]
    assert lay["conv.minus"].shape == (4, 2, 3, 3)
    assert np.concatenate([v.ravel() for v in lay.values()]).tolist() == m.addresses.tolist()


def test_pulses_go_to_the_device_of_their_sign():
    m = allocate_pairs(BLOCKS, Geometry(1, 64, 64))
    conv = m.blocks[1]
    flat = np.array([0, 7, 71])
    got = conv.devices(flat, np.array([True, False, True]))
    assert got.tolist() == [conv.plus.ravel()[0], conv.minus.ravel()[7], conv.plus.ravel()[71]]


def test_bad_devices_are_skipped():
    bad = [0, 3, 7, 100]
    m = allocate_pairs([WeightBlock("layer0", (5, 2), 0.1)], Geometry(1, 16, 16),
                       bad_devices=bad)
    assert not np.isin(m.addresses, bad).any()
    assert m.addresses.size == 20 and np.unique(m.addresses).size == 20
    with pytest.raises(ConfigError, match="mapping.bad_devices.*outside the chip"):
        allocate_pairs(BLOCKS, Geometry(1, 16, 16), bad_devices=[256])


def test_chip_too_small_names_the_key_and_the_block_that_does_not_fit():
    with pytest.raises(ConfigError, match=r"network.layers: 3 weight block\(s\) need 286 "
                                          r"devices, the chip has 140 usable from address 0: "
                                          r"block 'conv' \(4, 2, 3, 3\) is the first"):
        allocate_pairs(BLOCKS, Geometry(1, 10, 14))
    with pytest.raises(ConfigError, match="^model: .*block 'bias'"):
        allocate_pairs(BLOCKS, Geometry(1, 10, 28), key="model")


@pytest.mark.parametrize("name", ["layer0.weight", "a/b", ""])
def test_block_names_that_the_run_log_cannot_key_are_refused(name):
    with pytest.raises(ValueError, match="block name"):
        WeightBlock(name, (2, 2), 0.1)


def test_blocks_without_weights_or_positive_beta_and_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="has no weights"):
        WeightBlock("w", (3, 0), 0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        WeightBlock("w", (3,), 0.0)
    with pytest.raises(ConfigError, match="'fc' is used twice"):
        allocate_pairs([BLOCKS[0], BLOCKS[0]], Geometry(1, 64, 64))


def test_bad_device_file(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("5\n9\n5\n")
    assert load_bad_devices([1], str(p)).tolist() == [1, 5, 9]
    np.save(tmp_path / "bad.npy", np.array([[4, 2]]))
    assert load_bad_devices([], str(tmp_path / "bad.npy")).tolist() == [2, 4]
    with pytest.raises(ConfigError, match="bad_devices_file"):
        load_bad_devices([], str(tmp_path / "missing.txt"))
