"""Counter-based random numbers: a draw is a pure function of (seed, stream, address, counter).

What the simulated chip's determinism rests on: the draw of a device's k-th event does not
depend on which other devices share its batch, in which order, or how a batch was split; and
the draws look like independent uniforms and normals. Statistical checks use fixed seeds and
bounds several standard errors wide, so they are deterministic and not fragile.
"""
from __future__ import annotations

import numpy as np
import pytest

from sim_backend import counter_rng as crng
from sim_backend.counter_rng import Stream

N = 1 << 18   # keys for the distribution checks


def keys(seed: int = 7, stream: Stream = Stream.SET, n: int = N, counter=0) -> np.ndarray:
    return crng.hash_key(seed, stream, np.arange(n, dtype=np.uint32), counter)


# --- a pure function of its key ---------------------------------------------------------------
def test_the_same_key_gives_the_same_hash_and_inputs_are_left_alone():
    addr = np.arange(1000, dtype=np.uint64)
    ctr = np.arange(1000, dtype=np.uint64) * 3
    a_copy, c_copy = addr.copy(), ctr.copy()
    h1 = crng.hash_key(5, Stream.READ, addr, ctr)
    h2 = crng.hash_key(5, Stream.READ, addr, ctr)
    assert np.array_equal(h1, h2)
    assert np.array_equal(addr, a_copy) and np.array_equal(ctr, c_copy)
    z = np.array([1, 2, 3], dtype=np.uint64)
    crng.mix64(z)
    assert np.array_equal(z, [1, 2, 3])


def test_a_draw_does_not_depend_on_its_batch():
    rng = np.random.default_rng(0)
    addr = rng.choice(1 << 20, size=5000, replace=False).astype(np.uint32)
    ctr = rng.integers(0, 1 << 40, size=addr.size).astype(np.uint64)
    whole = crng.hash_key(11, Stream.SET, addr, ctr)
    perm = rng.permutation(addr.size)
    assert np.array_equal(crng.hash_key(11, Stream.SET, addr[perm], ctr[perm]), whole[perm])
    parts = [crng.hash_key(11, Stream.SET, addr[s], ctr[s])
             for s in np.array_split(np.arange(addr.size), 13)]
    assert np.array_equal(np.concatenate(parts), whole)
    for i in rng.choice(addr.size, 40, replace=False):   # one device alone
        single = crng.hash_key(11, Stream.SET, addr[i:i + 1], int(ctr[i]))
        assert single.shape == (1,) and single[0] == whole[i]


def test_hash_parts_is_each_parts_hash_key_concatenated():
    rng = np.random.default_rng(1)
    a1 = rng.choice(4096, 30, replace=False).astype(np.uint32)
    a2 = rng.choice(4096, 7, replace=False).astype(np.intp)
    a3 = rng.choice(4096, 12, replace=False).astype(np.uint32)
    c1 = rng.integers(0, 1000, a1.size).astype(np.uint64)
    parts = [(Stream.SET, a1, c1), (Stream.D2D, a2, 0), (Stream.READ, a3, 77)]
    want = np.concatenate([crng.hash_key(3, s, a, c) for s, a, c in parts])
    got = crng.hash_parts(3, parts)
    assert got.dtype == np.uint64 and np.array_equal(got, want)


def test_a_scalar_counter_equals_the_same_counter_per_device_and_broadcasts():
    addr = np.arange(50, dtype=np.uint32)
    assert np.array_equal(crng.hash_key(2, Stream.NU, addr, 9),
                          crng.hash_key(2, Stream.NU, addr, np.full(50, 9, np.uint64)))
    ctr = np.arange(4, dtype=np.uint64).reshape(4, 1)
    grid = crng.hash_key(2, Stream.NU, addr, ctr)
    assert grid.shape == (4, 50)
    for k in range(4):
        assert np.array_equal(grid[k], crng.hash_key(2, Stream.NU, addr, k))


@pytest.mark.parametrize("change", ["seed", "stream", "address", "counter"])
def test_every_part_of_the_key_changes_the_draw(change):
    addr = np.arange(4096, dtype=np.uint32)
    base = crng.hash_key(1, Stream.SET, addr, 5)
    other = {"seed": lambda: crng.hash_key(2, Stream.SET, addr, 5),
             "stream": lambda: crng.hash_key(1, Stream.RESET, addr, 5),
             "address": lambda: crng.hash_key(1, Stream.SET, addr + 4096, 5),
             "counter": lambda: crng.hash_key(1, Stream.SET, addr, 6)}[change]()
    assert np.count_nonzero(base == other) == 0


def test_no_two_keys_of_a_grid_collide():
    addr = np.arange(256, dtype=np.uint32)
    ctr = np.arange(256, dtype=np.uint64).reshape(-1, 1)
    h = np.concatenate([crng.hash_key(0, s, addr, ctr).ravel()
                        for s in (Stream.SET, Stream.READ)])
    assert np.unique(h).size == h.size == 2 * 256 * 256
    seeds = {int(crng.stream_key(seed, s)) for seed in range(500) for s in Stream}
    assert len(seeds) == 500 * len(Stream)


# --- dtype and shape ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0,), (1,), (17,), (3, 5)])
def test_hashes_uniforms_and_normals_keep_the_shape(shape):
    addr = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape)
    h = crng.hash_key(4, Stream.INIT, addr, 1)
    assert h.dtype == np.uint64 and h.shape == shape
    for f in (crng.uniform, crng.normal):
        v = f(h)
        assert v.dtype == np.float64 and v.shape == shape


def test_a_single_key_gives_a_single_number():
    h = crng.hash_key(4, Stream.INIT, np.uint32(12), 3)
    assert np.ndim(h) == 0
    assert np.ndim(crng.normal(h)) == 0 and np.ndim(crng.uniform(h)) == 0
    assert float(crng.normal(h)) == float(crng.normal(crng.hash_key(
        4, Stream.INIT, np.array([12], np.uint32), 3))[0])


# --- distribution --------------------------------------------------------------------------------
def test_uniforms_are_uniform_on_the_open_interval():
    u = crng.uniform(keys())
    assert 0.0 < u.min() and u.max() < 1.0
    se = np.sqrt(1 / 12 / N)
    assert abs(u.mean() - 0.5) < 6 * se
    assert abs(u.var() - 1 / 12) < 0.002
    counts = np.bincount((u * 32).astype(int), minlength=32)
    expected = N / 32
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80   # 31 degrees of freedom: p < 1e-5 above this


def test_normals_are_standard_normal():
    z = crng.normal(keys(seed=9, stream=Stream.READ))
    assert np.isfinite(z).all()
    se = 1 / np.sqrt(N)
    assert abs(z.mean()) < 6 * se
    assert abs(z.std() - 1.0) < 6 * se / np.sqrt(2)
    assert abs(np.mean(z ** 3)) < 6 * np.sqrt(15 / N)           # skewness
    assert abs(np.mean(z ** 4) - 3.0) < 6 * np.sqrt(96 / N)      # kurtosis
    tail = np.mean(np.abs(z) > 3.0)                              # 0.27 % beyond 3 sigma
    assert abs(tail - 0.0026998) < 6 * np.sqrt(0.0027 / N)


@pytest.mark.parametrize("pair", ["streams", "next counter", "next address", "seeds"])
def test_neighbouring_keys_draw_uncorrelated_numbers(pair):
    addr = np.arange(N, dtype=np.uint32)
    a = crng.normal(crng.hash_key(1, Stream.SET, addr, 10))
    b = crng.normal({
        "streams": lambda: crng.hash_key(1, Stream.READ, addr, 10),
        "next counter": lambda: crng.hash_key(1, Stream.SET, addr, 11),
        "next address": lambda: crng.hash_key(1, Stream.SET, addr + 1, 10),
        "seeds": lambda: crng.hash_key(2, Stream.SET, addr, 10)}[pair]())
    assert abs(np.corrcoef(a, b)[0, 1]) < 6 / np.sqrt(N)
