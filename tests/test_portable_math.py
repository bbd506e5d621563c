"""drivers.portable_math: each function against an exact reference, and its bits pinned.

Exact references are computed with Python's `fractions` and `decimal` (software arithmetic,
the same on every machine), never with numpy's or the C library's transcendentals. The golden
table (tests/data/portable_math_golden.json) holds the bit patterns of outputs for fixed
inputs: a machine, BLAS or numpy version that computed one bit differently fails here, and so
does an unintended change of the arithmetic (which would also change every run's digest).
`python tests/test_portable_math.py --regenerate` rewrites it after a deliberate change.
"""
from __future__ import annotations

import json
import math
import sys
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from drivers import portable_math as pm

GOLDEN = Path(__file__).parent / "data" / "portable_math_golden.json"
PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459230781640629")


def ulps(got: float, exact: Decimal) -> float:
    """|got - exact| in units of the last place of the float64 nearest to `exact`."""
    return float(abs(Decimal(got) - exact) / Decimal(math.ulp(float(exact))))


def d_exp(x: float) -> Decimal:
    with localcontext() as c:
        c.prec = 40
        return Decimal(x).exp()


def d_ln(x: float) -> Decimal:
    with localcontext() as c:
        c.prec = 40
        return Decimal(x).ln()


def d_cos(x: Decimal) -> Decimal:
    """cos by its Taylor series after reducing by 2π, at 50 digits."""
    with localcontext() as c:
        c.prec = 50
        x = x % (2 * PI)
        term, total, n = Decimal(1), Decimal(1), 0
        while abs(term) > Decimal("1e-45"):
            n += 2
            term = -term * x * x / (n * (n - 1))
            total += term
        return total


def f32_round(q: Fraction) -> np.float32:
    """The float32 nearest to the rational q (ties to even), via its exact neighbours."""
    c = np.float32(float(q))   # within an ulp of the answer
    best = None
    for v in (np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))):
        d = abs(Fraction(float(v)) - q)
        key = (d, int(np.array(v).view(np.uint32)) & 1)
        if best is None or key < best[0]:
            best = (key, v)
    return best[1]


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


# --- sums and products -----------------------------------------------------------------------
def tree_reference(terms: list, add) -> object:
    """tree_sum's documented order, one addition at a time."""
    t = list(terms)
    k = len(t)
    while k > 1:
        h = k // 2
        for i in range(h):
            t[i] = add(t[i], t[k - h + i])
        k -= h
    return t[0]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 157, 251])
def test_tree_sum_adds_in_its_documented_order(rng, k):
    x32 = (rng.standard_normal((k, 6)) * 10.0 ** rng.integers(-6, 6, (k, 6))).astype(np.float32)
    got = pm.tree_sum(x32, axis=0)
    for j in range(6):
        want = tree_reference([np.float32(v) for v in x32[:, j]], lambda a, b: a + b)
        assert got[j].tobytes() == np.float32(want).tobytes()
    x64 = rng.standard_normal((3, k))
    got64 = pm.tree_sum(x64, axis=1)
    for i in range(3):
        assert got64[i] == tree_reference(x64[i].tolist(), lambda a, b: a + b)


def test_tree_sum_is_pairwise_accurate(rng):
    k = 1000
    x = rng.standard_normal(k) * 1e3
    exact = sum(Fraction(v) for v in x.tolist())
    bound = (math.ceil(math.log2(k)) + 1) * 2.0 ** -53 * float(np.abs(x).sum())
    assert abs(Fraction(float(pm.tree_sum(x))) - exact) <= Fraction(bound)
    assert pm.tree_sum(np.zeros((0, 3))).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(TypeError):
        pm.tree_sum(np.arange(4))


@pytest.mark.parametrize("n, k, m", [(1, 157, 250), (1, 251, 10), (1, 10, 250), (4, 37, 5),
                                     (1, 1, 3), (3, 0, 2)])
def test_matmul_rounds_each_product_and_sums_in_tree_order(rng, n, k, m):
    a = rng.standard_normal((n, k)).astype(np.float32)
    b = (rng.standard_normal((k, m)) * 0.2).astype(np.float32)
    got = pm.matmul(a, b)
    assert got.shape == (n, m) and got.dtype == np.float32
    for r in range(n):
        for j in range(min(m, 8)):   # eight columns: exact references are slow
            prods = [np.float32(a[r, i] * b[i, j]) for i in range(k)]
            want = tree_reference(prods, lambda x, y: x + y) if k else np.float32(0)
            assert got[r, j].tobytes() == np.float32(want).tobytes()
            if k:   # and it is as accurate as pairwise summation promises
                exact = sum(Fraction(float(a[r, i])) * Fraction(float(b[i, j]))
                            for i in range(k))
                mag = sum(abs(Fraction(float(a[r, i])) * Fraction(float(b[i, j])))
                          for i in range(k))
                bound = (math.ceil(math.log2(k)) + 2) * Fraction(1, 2 ** 24) * mag
                assert abs(Fraction(float(got[r, j])) - exact) <= bound


def test_matmul_in_float64_and_with_scratch(rng):
    g = rng.uniform(0.1, 20, (7, 33))
    x = rng.uniform(-0.2, 0.2, (33, 2))
    got = pm.matmul(g, x)
    for r in range(7):
        for j in range(2):
            assert got[r, j] == tree_reference([g[r, i] * x[i, j] for i in range(33)],
                                               lambda p, q: p + q)
    a = rng.standard_normal((1, 20)).astype(np.float32)
    b = rng.standard_normal((20, 9)).astype(np.float32)
    want = pm.matmul(a, b)
    scratch = b.copy()
    assert np.array_equal(pm.matmul(a, scratch, overwrite_b=True), want)
    c = rng.standard_normal((9, 20)).astype(np.float32)   # b as a transposed view
    assert np.array_equal(pm.matmul(a[:, :9], c), pm.matmul(a[:, :9], np.asfortranarray(c)))
    assert np.array_equal(pm.matmul(a, c.T), pm.matmul(a, np.ascontiguousarray(c.T)))
    with pytest.raises(ValueError, match=r"\(1, 20\) @ \(9, 20\)"):
        pm.matmul(a, b.T)


def test_row_product_gives_matmuls_bits_with_reused_scratch(rng):
    rp = pm.RowProduct(250, np.float32, k_max=100)
    w = rng.standard_normal((785, 250)).astype(np.float32)
    for k in (157, 3, 157, 1, 420, 157, 0):   # grows past k_max, reuses plans, empty
        rows = np.sort(rng.choice(785, k, replace=False))
        a = rng.standard_normal((1, k)).astype(np.float32)
        got = rp(a, w[rows])
        assert got.shape == (1, 250) and np.array_equal(got, pm.matmul(a, w[rows]))
    back = pm.RowProduct(784, np.float32)
    d = rng.standard_normal((1, 250)).astype(np.float32)
    assert np.array_equal(back(d, w[:-1].T), pm.matmul(d, w[:-1].T))   # a transposed view
    first = rp(a, w[rows])
    rp(rng.standard_normal((1, k)).astype(np.float32), w[rows])
    assert np.array_equal(first, rp(a, w[rows]))   # a result is not the scratch
    with pytest.raises(ValueError, match="RowProduct"):
        rp(a.astype(np.float64), w[rows].astype(np.float64))


def test_outer_is_the_rounded_products(rng):
    a = rng.standard_normal(157).astype(np.float32)
    d = rng.standard_normal(250).astype(np.float32)
    got = pm.outer(a, d)
    want = a[:, None] * d[None, :]   # elementwise: one IEEE multiplication per entry
    assert got.shape == (157, 250) and np.array_equal(got, want)


# --- exp, log, pow, cos ------------------------------------------------------------------------
def test_exp_within_2_ulp_of_the_exact_value(rng):
    x = np.concatenate([rng.uniform(-708, 709, 300), rng.uniform(-1, 1, 300),
                        rng.uniform(-1e-4, 1e-4, 100), rng.integers(-700, 700, 50),
                        [0.0, -0.0, 1e-300, 1.0, 0.5 * math.log(2), 709.78, -708.39]])
    got = pm.exp(x)
    worst = max(ulps(float(g), d_exp(float(v))) for g, v in zip(got, x))
    assert worst <= 2.0, worst


def test_exp_edges():
    got = pm.exp(np.array([np.nan, np.inf, -np.inf, 710.0, 1e308, -746.0, -1e308, 0.0]))
    assert np.isnan(got[0])
    assert got[1:].tolist() == [np.inf, 0.0, np.inf, np.inf, 0.0, 0.0, 1.0]
    # below 2^-1022 (x < -708.39) the result flushes to zero
    assert pm.exp(np.array([-708.39]))[0] > 0 and pm.exp(np.array([-708.4]))[0] == 0.0
    assert pm.exp(np.float64(1.0)) == pm.exp(np.array([1.0]))[0]


def test_exp_f32_is_accurate_for_float32_results(rng):
    x = np.concatenate([rng.uniform(-103, 88, 400), rng.uniform(-2, 2, 400)]).astype(np.float32)
    got = pm.exp(x, f32=True)
    for g, v in zip(got[::4], x[::4]):
        exact = d_exp(float(v))
        assert abs(Decimal(float(g)) - exact) <= exact * Decimal(2) ** -31
    # once rounded to float32, practically always the correctly rounded float32
    exact32 = np.array([np.float32(float(d_exp(float(v)))) for v in x])
    assert np.count_nonzero(got.astype(np.float32) != exact32) <= 8
    with np.errstate(over="ignore"):   # e^110 is beyond float32: inf, as it should be
        far = pm.exp(np.array([200.0, -200.0, np.nan], np.float32), f32=True).astype(np.float32)
    assert far[0] == np.inf and far[1] == 0.0 and np.isnan(far[2])


def test_expit_is_the_logistic_function_rounded_once(rng):
    a = np.concatenate([rng.uniform(-20, 20, 500), rng.uniform(-104, -87, 40),
                        [0.0, 50.0, -120.0, 3e38, -3e38]]).astype(np.float32)
    got = pm.expit(a)
    assert got.dtype == np.float32
    mismatched = 0
    for g, v in zip(got, a):
        if abs(float(v)) > 200:   # far beyond float32's resolution of the limits 0 and 1
            want = np.float32(1.0 if v > 0 else 0.0)
        else:
            with localcontext() as c:
                c.prec = 40
                want = f32_round(Fraction(1 / (1 + (-Decimal(float(v))).exp())))
        if g != want:
            mismatched += 1
            assert abs(int(np.array(g).view(np.int32)) - int(np.array(want).view(np.int32))) <= 1
    assert mismatched <= 3
    out = np.empty((2, 3), np.float32)
    assert pm.expit(np.zeros((2, 3), np.float32), out=out) is out and (out == 0.5).all()


def test_softmax_rows_are_the_exact_softmax_rounded_once(rng):
    a = (rng.standard_normal((40, 10)) * 4).astype(np.float32)
    a[0, 3] = 90.0   # one dominant logit: the others' probabilities underflow float32
    got = pm.softmax(a)
    assert got.dtype == np.float32 and got.shape == a.shape
    assert np.array_equal(pm.softmax(a[5:6]), got[5:6])   # a row does not see its batch
    mismatched = 0
    for row, g in zip(a, got):
        with localcontext() as c:
            c.prec = 40
            e = [Decimal(float(v)).exp() for v in row]
            total = sum(e)
            want = [f32_round(Fraction(x / total)) for x in e]
        for gv, wv in zip(g, want):
            if gv != wv:
                mismatched += 1
                assert abs(int(np.array(gv).view(np.int32)) -
                           int(np.array(wv).view(np.int32))) <= 1
    assert mismatched <= 4


def test_log_within_2_5_ulp_and_log_scalar_agrees_bit_for_bit(rng):
    x = np.concatenate([rng.uniform(0, 1, 300), np.exp(rng.uniform(-700, 700, 300)),
                        1 + rng.uniform(-1e-3, 1e-3, 200), 1 + rng.uniform(-1e-12, 1e-12, 50),
                        [1 - 2 ** -53, 1 + 2 ** -52, 0.6875, 1.375, 2.0 ** -1022, 2.0 ** -33,
                         1.7e308, 2.0, 0.5]])
    got = pm.log(x)
    worst = max(ulps(float(g), d_ln(float(v))) for g, v in zip(got, x))
    assert worst <= 2.5, worst
    assert pm.log(np.array([1.0]))[0] == 0.0
    assert [pm.log_scalar(v) for v in x.tolist()] == got.tolist()


def test_log_edges():
    x = np.array([0.0, -0.0, -1.0, np.inf, -np.inf, np.nan, 5e-324, 2.0 ** -1040, 3.0])
    got = pm.log(x)
    assert got[:2].tolist() == [-np.inf, -np.inf] and np.isnan(got[2])
    assert got[3] == np.inf and np.isnan(got[4]) and np.isnan(got[5])
    for g, v in zip(got[6:], x[6:]):
        assert ulps(float(g), d_ln(float(v))) <= 2.5
    assert pm.log_scalar(0.0) == -np.inf and pm.log_scalar(2.0 ** -1040) == got[7]


def test_pow_positive(rng):
    x = rng.uniform(1.0, 1e5, 300)
    y = -rng.uniform(0.0, 0.2, 300)
    got = pm.pow_positive(x, y)
    for g, a, b in zip(got, x, y):
        with localcontext() as c:
            c.prec = 40
            exact = (Decimal(b) * Decimal(a).ln()).exp()
        assert ulps(float(g), exact) <= 4
    assert pm.pow_positive(np.array([3.0]), 0.0)[0] == 1.0


def test_cos_2pi_u32_within_2_5e_16(rng):
    m = np.concatenate([rng.integers(0, 2 ** 32, 400, dtype=np.uint64),
                        [0, 1, 2 ** 16 - 1, 2 ** 16, 2 ** 30 - 1, 2 ** 30, 2 ** 31, 3 * 2 ** 30,
                         2 ** 29, 2 ** 32 - 1]]).astype(np.uint32)
    got = pm.cos_2pi_u32(m)
    for g, v in zip(got, m.tolist()):
        exact = d_cos(2 * PI * (Decimal(v) + Decimal("0.5")) / 2 ** 32)
        assert abs(Decimal(float(g)) - exact) <= Decimal("2.5e-16"), v


# --- the bits, pinned --------------------------------------------------------------------------
def golden_outputs() -> dict:
    """Outputs for fixed inputs (made from integers, so the inputs are the same everywhere),
    as hex bit patterns."""
    from sim_backend import counter_rng as crng
    i = np.arange(64)
    x64 = (i - 32) * 11.3125 + i * 2.0 ** -20            # exactly representable
    x32 = ((i - 32) * 0.71875).astype(np.float32)
    pos = (i + 1) * 0.37109375 + 2.0 ** -30
    w = (((i[:, None] * 7 + np.arange(12)[None, :] * 13) % 41 - 20) / 64).astype(np.float32)
    v = ((i % 9 - 4) / 8).astype(np.float32).reshape(1, -1)
    m = (i * 0x9E3779B9 % 2 ** 32).astype(np.uint32)

    def hx(a: np.ndarray) -> list:
        a = np.ascontiguousarray(a)
        return [format(int(u), "x") for u in a.view(np.uint64 if a.itemsize == 8
                                                     else np.uint32).ravel()]

    return {
        "exp": hx(pm.exp(x64)),
        "exp_f32": hx(pm.exp(x32, f32=True)),
        "expit": hx(pm.expit(x32)),
        "softmax": hx(pm.softmax(x32.reshape(4, 16))),
        "log": hx(pm.log(pos)),
        "log_scalar": hx(np.array([pm.log_scalar(p) for p in pos.tolist()])),
        "pow_positive": hx(pm.pow_positive(pos + 1.0, -0.05)),
        "cos_2pi_u32": hx(pm.cos_2pi_u32(m)),
        "tree_sum": hx(pm.tree_sum(w, axis=0)),
        "matmul": hx(pm.matmul(v, w)),
        "normal": hx(crng.normal(crng.hash_key(7, crng.Stream.SET, np.arange(64), 3))),
    }


def test_golden_bits():
    want = json.loads(GOLDEN.read_text())
    got = golden_outputs()
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


if __name__ == "__main__" and "--regenerate" in sys.argv:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden_outputs(), indent=0) + "\n")
    print(f"wrote {GOLDEN}")
