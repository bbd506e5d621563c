"""The conductance cache: what the host knows of each device, and the weights it implies."""
import numpy as np

from drivers.geometry import Geometry
from hil.conductance_cache import PULSE_COUNT_MAX, ConductanceCache
from hil.device_pairs import WeightBlock, allocate_pairs

F32 = np.float32


def _cache():
    pairs = allocate_pairs([WeightBlock("a", (2, 3), 0.5), WeightBlock("k", (2, 1, 2), 0.25)],
                           Geometry(1, 8, 8))
    return pairs, ConductanceCache(pairs)


def test_a_full_read_fills_every_block_in_layout_order():
    pairs, cache = _cache()
    values = np.arange(pairs.n_devices, dtype=F32)   # device i read as i µS, layout order
    cache.load(values)
    a, k = cache.blocks
    assert a.gp.tolist() == [[0, 1, 2], [3, 4, 5]] and a.gm.ravel().tolist() == [6, 7, 8, 9,
                                                                                10, 11]
    assert k.gp.shape == (2, 1, 2) and k.gp.ravel().tolist() == [12, 13, 14, 15]
    assert np.array_equal(a.w, F32(0.5) * (a.gp - a.gm))
    assert np.array_equal(k.w, F32(0.25) * (k.gp - k.gm))
    assert cache.weights[1] is k.w
    assert np.array_equal(cache.vector(), values)   # the snapshot vector is the same order


def test_read_backs_update_one_device_and_its_weight_in_place():
    pairs, cache = _cache()
    cache.load(np.full(pairs.n_devices, 2.0, F32))
    a = cache.blocks[0]
    w_view = cache.weights[0]
    before, after = a.store(np.array([1, 4]), np.array([True, False]), np.array([5.0, 3.5], F32))
    assert a.gp.ravel().tolist() == [2, 5, 2, 2, 2, 2]
    assert a.gm.ravel().tolist() == [2, 2, 2, 2, 3.5, 2]
    assert before.tolist() == [0.0, 0.0]
    assert after.tolist() == [F32(0.5) * F32(3.0), F32(0.5) * F32(-1.5)]
    assert w_view[0, 1] == F32(1.5) and w_view[1, 1] == F32(-0.75)   # the same array
    assert a.conductance(np.array([1, 4]), np.array([True, False])).tolist() == [5.0, 3.5]


def test_pulses_since_reset_are_counted_per_device_and_saturate():
    _, cache = _cache()
    k = cache.blocks[1]
    flat, pos = np.array([0, 3]), np.array([True, False])
    k.count_pulses(flat, pos, np.array([3, 2]))
    k.count_pulses(flat, pos, np.array([1, 1]))
    assert k.pulses_plus.ravel().tolist() == [4, 0, 0, 0]
    assert k.pulses_minus.ravel().tolist() == [0, 0, 0, 3]
    assert k.pulse_counts(flat, pos).tolist() == [4, 3]
    k.count_pulses(np.array([1]), np.array([True]), np.array([70000]))
    assert k.pulses_plus.ravel()[1] == PULSE_COUNT_MAX
    k.reset_counts(np.array([0, 3]))
    assert k.pulses_plus.ravel().tolist() == [0, PULSE_COUNT_MAX, 0, 0]
    assert not k.pulses_minus.any()
