"""Bit-portable arithmetic: the same bits on every CPU, BLAS kernel and numpy version.

A run log must verify wherever it is opened (DESIGN.md, invariant 1), so every number that
reaches a conductance, a pulse count or a logged metric has to come out the same on every
machine. Most numpy arithmetic already does: IEEE 754 makes + - × ÷ √ and the float
conversions correctly rounded, and one numpy ufunc call applies exactly one of them per
element, SIMD or not, so nothing can fuse a multiply-add across calls. Three things do not:

* BLAS products (`@`, `np.dot`, `matmul`): the kernel (chosen per CPU, or by
  OPENBLAS_CORETYPE) decides the summation order and whether to fuse multiply-adds.
* numpy's reductions along a contiguous axis (`sum`, `add.reduce`, `mean`): blocked pairwise
  summation whose blocking is an implementation detail of the SIMD width and the version.
* transcendental functions (`np.exp`, `np.log`, `np.cos`, `np.power`, `**`, `math.exp`...):
  numpy picks SIMD kernels by CPU feature (AVX2, AVX512F, ...) that differ from its scalar
  ones in the last bit, and C libraries differ from each other and between versions.

This module replaces those with functions built only from operations that are exact or
correctly rounded everywhere: the five basic operations, float conversions, min/max/clip,
comparisons, integer and bit operations on the float's bits, and table look-ups. Sums run in a
fixed pairwise order that this module defines; exp, log and cos are table-driven polynomials
whose every step is one such operation; their tables are computed from the same operations
when first used. The results do not depend on the machine, and they are accurate (the
bounds below are checked against exact references in tests/test_portable_math.py).

Assumed of the platform: IEEE 754 binary32/binary64 in round-to-nearest-even, without
flush-to-zero of subnormals (every mainstream 64-bit CPU and OS as Python runs it).

It lives in `drivers` because that is the lowest layer both `hil` (the network's forward and
backward passes) and `sim_backend` (the device model and the simulated chip's random draws)
may import; `firmware_interface`, below it, is the wire protocol and imports only numpy.
Every function is vectorised: one call of numpy per step of the algorithm, whatever the size
of the batch, so a training step's handful of devices costs numpy's per-call overhead only.
"""
from __future__ import annotations

import functools
import math
import struct
from typing import List, Tuple

import numpy as np

#: The version of these rules, recorded in every run log's provenance (key `arithmetic`).
#: Any change to what a function returns, down to one bit, is a new version: a log verifies
#: bit for bit only under the version it was recorded with (docs/portability.md).
ARITHMETIC = "portable-1"

F32 = np.float32
F64 = np.float64
_I64 = np.int64

# --- sums and products ----------------------------------------------------------------------


def _halve(p: np.ndarray) -> np.ndarray:
    """Sum `p` (a scratch array, overwritten) along axis 0 in the fixed order of tree_sum;
    returns a view of the sum (row 0 of `p`)."""
    k = p.shape[0]
    while k > 1:
        h = k >> 1
        head = p[:h]
        head += p[k - h:k]   # row i += row k-h+i; for an odd k row h waits a round
        k -= h
    return p[0]


def tree_sum(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sum of a float array along `axis`, in a fixed pairwise order, in the array's dtype.

    The order: while k > 1 terms remain, term i (i < k // 2) becomes term i plus term
    k - k // 2 + i, and k becomes k - k // 2 (for an odd k the middle term waits a round).
    Each addition is one correctly rounded IEEE addition, so the result is the same on every
    machine; its error is at most ceil(log2 k) rounding steps, as for pairwise summation."""
    p = np.array(np.moveaxis(np.asarray(x), axis, 0), order="C", copy=True)
    if p.dtype.kind != "f":
        raise TypeError(f"tree_sum sums floats, got {p.dtype}")
    if p.shape[0] == 0:
        return np.zeros(p.shape[1:], p.dtype)
    return _halve(p)


def matmul(a: np.ndarray, b: np.ndarray, overwrite_b: bool = False) -> np.ndarray:
    """a @ b for 2-D float arrays (n, k) and (k, m), in their common dtype.

    Each product a[r, i]·b[i, j] is rounded once to that dtype and the k products of an entry
    are added in tree_sum's order over i: the same bits on every machine, with the accuracy
    of a BLAS product (the error bound of pairwise summation). With `overwrite_b` a
    C-contiguous `b` of that dtype is used as scratch (n == 1), saving one copy."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs (n, k) @ (k, m), got {a.shape} @ {b.shape}")
    n, k = a.shape
    m = b.shape[1]
    dt = a.dtype if a.dtype == b.dtype else np.result_type(a, b)
    if dt.kind != "f":
        raise TypeError(f"matmul multiplies floats, got {a.dtype} and {b.dtype}")
    if k == 0:
        return np.zeros((n, m), dt)
    if n == 1:
        col = a.reshape(k, 1)        # the products of a[0, i] with row i of b
        if overwrite_b and b.dtype == dt and b.flags.c_contiguous and b.flags.writeable:
            p = np.multiply(b, col, out=b)
        else:
            p = np.multiply(b, col, dtype=dt, order="C")
        return _halve(p).reshape(1, m)
    p = np.multiply(a.T[:, :, None], b[:, None, :], dtype=dt)   # (k, n, m), C order
    return _halve(p)


class RowProduct:
    """Repeated products of one row with (k, m) matrices, for a training step's weighted sums:
    matmul's bits (the same products, tree_sum's order), with a reusable scratch array and,
    per k, the views that order adds made once, so a product costs one multiplication and
    ceil(log2 k) additions. Results are new arrays; the scratch is reused by the next call."""

    #: working memory each call overwrites before reading: no part of a run's state
    SCRATCH_ATTRIBUTES = ("_buf", "_plans")

    def __init__(self, m: int, dtype: np.dtype | type = F32, k_max: int = 0) -> None:
        self.m = int(m)
        self.dtype = np.dtype(dtype)
        self._buf = np.empty((k_max, self.m), self.dtype)
        self._plans: dict = {}

    def _plan(self, k: int) -> tuple:
        plan = self._plans.get(k)
        if plan is None:
            if k > self._buf.shape[0]:   # grow; views into the old buffer go with it
                self._buf = np.empty((k, self.m), self.dtype)
                self._plans.clear()
            p = self._buf[:k]
            steps = []
            n = k
            while n > 1:
                h = n >> 1
                steps.append((p[:h], p[n - h:n]))
                n -= h
            plan = self._plans[k] = (p, tuple(steps), p[:1])
        return plan

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a @ b for a row a (1, k) and b (k, m) of this product's dtype, as matmul(a, b)."""
        k = b.shape[0]
        dt = self.dtype
        if a.shape != (1, k) or b.shape[1] != self.m or (a.dtype is not dt and a.dtype != dt) \
                or (b.dtype is not dt and b.dtype != dt):
            raise ValueError(f"RowProduct({self.m}, {self.dtype}) got {a.shape} {a.dtype} @ "
                             f"{b.shape} {b.dtype}")
        if k == 0:
            return np.zeros((1, self.m), self.dtype)
        p, steps, first = self._plan(k)
        np.multiply(b, a.reshape(k, 1), out=p)
        for head, tail in steps:
            head += tail
        return first.copy()


def outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The outer product a[:, None]·b[None, :] of two 1-D arrays of one float dtype.

    Each entry is the single product a[i]·b[j] rounded once, except that the sign of a zero
    entry is unspecified (use it where x + 0.0 and x + -0.0 cannot differ, i.e. for sums
    into values that are never -0.0). It goes through BLAS (np.dot with inner dimension 1,
    about twice as fast as broadcasting): a product with one term has no summation order to
    choose, and a fused multiply-add of it with zero rounds it exactly as a multiplication."""
    return np.dot(a.reshape(-1, 1), b.reshape(1, -1))


def _const(v: float | int, dtype=F64) -> np.ndarray:
    """A read-only 0-d array: numpy converts one faster than a Python scalar per call."""
    a = np.array(v, dtype=dtype)
    a.flags.writeable = False
    return a


# --- exp ------------------------------------------------------------------------------------
# exp(x) = 2^(k/N)·exp(r) with k = rint(x·N/ln2), r = x - k·ln2/N, |r| <= ln2/2N, N = 2^14:
# 2^(k/N) = 2^floor(k/N) (built from bits) · T[k mod N] (a table), exp(r) a short polynomial.
_EXP_BITS = 14
_EXP_N = 1 << _EXP_BITS
_SHIFT_F = float.fromhex("0x1.8p52")   # t + 1.5·2^52 rounds t to an integer in the low bits
_SHIFT_BITS = struct.unpack("<q", struct.pack("<d", _SHIFT_F))[0]
_SHIFT = _const(_SHIFT_F)
_INV_L = _const(float.fromhex("0x1.71547652b82fep+14"))      # N/ln2
_NEG_INV_L = _const(-float.fromhex("0x1.71547652b82fep+14"))
_L = _const(float.fromhex("0x1.62e42fefa39efp-15"))          # ln2/N
_NEG_L = _const(-float.fromhex("0x1.62e42fefa39efp-15"))
_L_HI_F = float.fromhex("0x1.62e42fep-15")   # ln2/N to 28 bits: k·_L_HI is exact (|k| < 2^25)
_L_LO_F = float.fromhex("0x1.f473de6af278fp-44")             # ln2/N - _L_HI
_NEG_L_HI = _const(-_L_HI_F)
_L_LO = _const(_L_LO_F)
_EXP_MASK = _const(_EXP_N - 1, _I64)
_EXP_SHIFT = _const(_EXP_BITS, _I64)
_EXP_BIAS = _const(1023 - (_SHIFT_BITS >> _EXP_BITS), _I64)
_I64_0 = _const(0, _I64)
_I64_52 = _const(52, _I64)
_ONE = _const(1.0)
_HALF = _const(0.5)
_SIXTH = _const(1 / 6)
#: Clamps: beyond them exp is 0 or inf in float64 (f32: once the result is rounded to float32).
_EXP_LO = {False: _const(-746.0), True: _const(-110.0)}
_EXP_HI = {False: _const(710.0), True: _const(110.0)}


@functools.lru_cache(maxsize=1)
def _exp_table() -> np.ndarray:
    """T[j] = 2^(j/N), j < N: exp(j·ln2/N) by its Taylor series (21 terms, Horner)."""
    j = np.arange(_EXP_N, dtype=F64)
    r = j * _L_HI_F
    r += j * _L_LO_F
    p = np.full(_EXP_N, 1 / math.factorial(20))
    for n in range(19, -1, -1):
        p *= r
        p += 1 / math.factorial(n)   # int / int: correctly rounded
    p.flags.writeable = False
    return p


def _clamped(x: np.ndarray, f32: bool) -> np.ndarray:
    """x as a new float64 array clamped to exp's range (NaN stays NaN)."""
    out = np.maximum(x, _EXP_LO[f32], dtype=F64)
    np.minimum(out, _EXP_HI[f32], out=out)
    return out


def _exp_clamped(x: np.ndarray, f32: bool, negate: bool = False) -> np.ndarray:
    """e^x (e^-x with `negate`, f32 only) of a clamped float64 array `x` (left unchanged)."""
    t = x * (_NEG_INV_L if negate else _INV_L)
    t += _SHIFT
    bits = t.view(_I64)              # _SHIFT_BITS + k: the low bits hold k
    j = bits & _EXP_MASK
    s = bits >> _EXP_SHIFT           # the biased exponent of 2^floor(k/N), once offset
    t -= _SHIFT                      # k itself, exactly
    s += _EXP_BIAS
    if not f32:
        np.maximum(s, _I64_0, out=s)  # the bits of 0.0 below the normal range
    s <<= _I64_52
    tab = _exp_table().take(j)
    if f32:                          # e^r = 1 + r within 2^-31 (|r| < 2^-14.5)
        if negate:                   # r = -(x + k·ln2/N)
            t *= _L
            t += x
            t *= tab
            tab -= t
        else:
            t *= _NEG_L
            t += x
            t *= tab
            tab += t
        tab *= s.view(F64)
        return tab
    r = t * _NEG_L_HI                # exact, and so is x + it (Sterbenz)
    r += x
    t *= _L_LO
    r -= t
    q = r * _SIXTH                   # e^r - 1 = r + r²/2 + r³/6, within 2^-66
    q += _HALF
    q *= r
    q += _ONE
    q *= r
    q *= tab
    q += tab
    q *= s.view(F64)
    return q


def exp(x: np.ndarray, f32: bool = False) -> np.ndarray:
    """e^x as float64 (of float64 or float32 input), the same bits on every machine.

    Within 2 ulp of the exact value (tests/test_portable_math.py checks it against exact
    decimal references). Results below 2^-1022 flush to 0, beyond the float64 range they are
    inf, NaN stays NaN. With `f32` the polynomial is reduced to 1 + r (relative error below
    2^-31) and the argument is clamped to ±110: enough for a value that is rounded to float32
    next (within 0.501 ulp), and six numpy calls cheaper (the network's softmax)."""
    x = np.asarray(x)
    if not x.ndim:
        return exp(x.reshape(1), f32)[0]
    return _exp_clamped(_clamped(x, f32), f32)


def expit(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The logistic function 1/(1 + e^-a) of float32 `a`, computed in float64 with
    exp(·, f32=True) and rounded once to float32 (into `out` if given)."""
    x = np.asarray(a).astype(F64)    # then every call has one dtype: no buffered casts
    np.maximum(x, _EXP_LO[True], out=x)
    np.minimum(x, _EXP_HI[True], out=x)
    e = _exp_clamped(x, True, negate=True)
    e += _ONE
    np.divide(_ONE, e, out=e)
    if out is None:
        return e.astype(F32)
    out[...] = e
    return out


def softmax(a: np.ndarray) -> np.ndarray:
    """Softmax of each row of a 2-D float32 array, float32: e^(a - max) in float64 (exp's
    f32 precision) divided by the correctly rounded sum of its row (math.fsum, so there is
    no order to choose), each probability rounded once."""
    # the max is exact in any order; a - max is exact in float64 unless far apart, and <= 0
    d = np.asarray(a).astype(F64)
    d -= np.maximum.reduce(d, axis=1, keepdims=True)
    np.maximum(d, _EXP_LO[True], out=d)
    e = _exp_clamped(d, True)
    rows = e.tolist()
    e /= math.fsum(rows[0]) if len(rows) == 1 else np.array([[math.fsum(r)] for r in rows])
    return e.astype(F32)


# --- log ------------------------------------------------------------------------------------
# x = 2^k·z with z in [0.6875, 1.375) (taken from the bits); z lies in one of N sub-intervals,
# whose end c nearest 1 (c = 1 itself next to 1) gives log z = log c + log1p((z - c)/c), with
# z - c exact and |(z - c)/c| < 2^-13: a degree-4 polynomial.
_LOG_BITS = 13
_LOG_N = 1 << _LOG_BITS
_LOG_OFF_I = 0x3FE6000000000000          # the bits of 0.6875
_LOG_ONE_INDEX = (0x3FF0000000000000 - _LOG_OFF_I) >> (52 - _LOG_BITS)   # sub-interval at 1.0
_TOP12_I = -1 << 52                      # sign and exponent bits, as an int64 mask
_LOG_OFF = _const(_LOG_OFF_I, _I64)
_LOG_SHIFT = _const(52 - _LOG_BITS, _I64)
_LOG_MASK = _const(_LOG_N - 1, _I64)
_TOP12 = _const(_TOP12_I, _I64)
_LN2_F = float.fromhex("0x1.62e42fefa39efp-1")
_LN2 = _const(_LN2_F)
_P4 = _const(-0.25)
_P3 = _const(1 / 3)
_P2 = _const(-0.5)
_MIN_NORMAL = float.fromhex("0x1p-1022")
_MAX = float.fromhex("0x1.fffffffffffffp+1023")
_TWO_54 = math.ldexp(1.0, 54)
_PACK_F64, _AS_F64 = struct.Struct("<d").pack, struct.Struct("<d").unpack
_PACK_I64, _AS_I64 = struct.Struct("<q").pack, struct.Struct("<q").unpack


@functools.lru_cache(maxsize=1)
def _log_table() -> np.ndarray:
    """Rows (c, 1/c, log c) per sub-interval; log c = 2·atanh(s) with s = (c-1)/(c+1) (c has
    14 significant bits, so c ± 1 is exact and s is one rounding), by its series to s^31."""
    i = np.arange(_LOG_N, dtype=_I64)
    ends = _LOG_OFF_I + (np.where(i >= _LOG_ONE_INDEX, i, i + 1) << (52 - _LOG_BITS))
    c = ends.view(F64)
    s = (c - 1.0) / (c + 1.0)
    s2 = s * s
    p = np.full(_LOG_N, 1 / 31)
    for n in range(29, 0, -2):
        p *= s2
        p += 1 / n
    table = np.stack([c, 1.0 / c, (2.0 * s) * p], axis=1)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=1)
def _log_rows() -> List[Tuple[float, float, float]]:
    return [tuple(row) for row in _log_table().tolist()]


def log(x: np.ndarray, check: bool = True) -> np.ndarray:
    """Natural logarithm as float64, the same bits on every machine; within 2.5 ulp.

    log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, log(NaN) = NaN, subnormals to the same
    bound. `check=False` skips the two reductions that look for those, for a caller whose x is
    positive and normal by construction (the Box-Muller uniforms)."""
    x = np.asarray(x, dtype=F64)
    if not x.ndim:
        return log(x.reshape(1), check)[0]
    if check and x.size and not (np.minimum.reduce(x, axis=None) >= _MIN_NORMAL
                                 and np.maximum.reduce(x, axis=None) <= _MAX):
        return _log_special(x)
    return _log_normal(x)


def _log_normal(x: np.ndarray) -> np.ndarray:
    """log of a float64 array of positive normal numbers (not checked)."""
    ix = x.view(_I64)
    tmp = ix - _LOG_OFF
    i = tmp >> _LOG_SHIFT
    i &= _LOG_MASK
    k = tmp >> _I64_52
    tmp &= _TOP12
    z = ix - tmp                     # the bits of z = x·2^-k
    row = _log_table().take(i, axis=0)
    r = z.view(F64)
    r -= row[:, 0]                   # z - c, exact
    r *= row[:, 1]
    q = r * _P4                      # log1p(r) = r + r²(-1/2 + r(1/3 - r/4)), within 2^-66
    q += _P3
    q *= r
    q += _P2
    r2 = r * r
    q *= r2
    q += r
    out = k * _LN2
    out += row[:, 2]
    out += q
    return out


def log_scalar(x: float) -> float:
    """log(x) of one Python float, bit for bit log(np.array([x]))[0] at a fifth of its cost
    (a training step's loss is the log of one probability): the same operations in the same
    order, on Python floats (IEEE binary64, as numpy's)."""
    x = float(x)
    if not _MIN_NORMAL <= x <= _MAX:
        return float(log(np.array([x]))[0])
    ix = _AS_I64(_PACK_F64(x))[0]
    tmp = ix - _LOG_OFF_I
    i = (tmp >> (52 - _LOG_BITS)) & (_LOG_N - 1)
    k = tmp >> 52
    z = _AS_F64(_PACK_I64(ix - (tmp & _TOP12_I)))[0]
    c, invc, logc = _log_rows()[i]
    r = (z - c) * invc
    q = ((r * -0.25 + 1 / 3) * r - 0.5) * (r * r) + r
    return (k * _LN2_F + logc) + q


def _log_special(x: np.ndarray) -> np.ndarray:
    """log for inputs with zeros, negatives, subnormals, infinities or NaNs."""
    sub = (x > 0) & (x < _MIN_NORMAL)
    safe = np.where((x >= _MIN_NORMAL) & (x <= _MAX), x, 1.0)
    safe[sub] = x[sub] * _TWO_54            # exact: a subnormal times 2^54 is normal
    out = log(safe, check=False)
    out[sub] -= 54 * _LN2_F
    out[x == 0] = -np.inf
    out[x == np.inf] = np.inf
    out[(x < 0) | np.isnan(x)] = np.nan
    return out


def pow_positive(x: np.ndarray, y: np.ndarray | float) -> np.ndarray:
    """x**y for x > 0 as exp(y·log x), float64: relative error within 3 ulp plus
    |y·log x|·2^-53 (the rounding of the exponent)."""
    return exp(np.multiply(log(x), y, dtype=F64))


# --- cos of a 32-bit angle (Box-Muller) -----------------------------------------------------
# θ = 2π(m + 1/2)/2^32 for a uint32 m = a·2^16 + b: θ = A + B with A = 2π·a/2^16 and
# B = 2π(b + 1/2)/2^32 < 2^-13, and cos θ = cos A·cos B - sin A·sin B from four tables.
_TWO_PI = float.fromhex("0x1.921fb54442d18p+2")
_STEP_HI = float.fromhex("0x1.921fb544p-14")        # 2π/2^16 to 33 bits: t·_STEP_HI exact
_STEP_LO = float.fromhex("0x1.0b4611a626331p-48")   # 2π/2^16 - _STEP_HI


def _sin_cos_taylor(t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(sin θ, cos θ) for |θ| <= π/4 by their Taylor series to θ^19 / θ^20 (Horner in θ²)."""
    t2 = t * t
    s = np.full(t.shape, -1 / math.factorial(19))
    c = np.full(t.shape, 1 / math.factorial(20))
    for n in range(17, 0, -2):
        s *= t2
        s += (-1 if (n // 2) % 2 else 1) / math.factorial(n)
    for n in range(18, -1, -2):
        c *= t2
        c += (-1 if (n // 2) % 2 else 1) / math.factorial(n)
    s *= t
    return s, c


@functools.lru_cache(maxsize=1)
def _cos_tables() -> Tuple[np.ndarray, np.ndarray]:
    """Rows (cos A, sin A) for a < 2^16 (from the first octant by exact symmetries) and
    (cos B, sin B) for b < 2^16."""
    t = np.arange(8193, dtype=F64)          # A in [0, π/4]
    theta = t * _STEP_HI
    theta += t * _STEP_LO
    s0, c0 = _sin_cos_taylor(theta)
    a = np.arange(1 << 16, dtype=_I64)
    q, u = a >> 14, a & 16383               # quadrant, position in it (units of 2π/2^16)
    low = u <= 8192
    v = np.where(low, u, 16384 - u)
    cq = np.where(low, c0[v], s0[v])        # cos, sin of the angle within the quadrant
    sq = np.where(low, s0[v], c0[v])
    ca = np.select([q == 0, q == 1, q == 2], [cq, -sq, -cq], sq)
    sa = np.select([q == 0, q == 1, q == 2], [sq, cq, -sq], -cq)
    b = np.arange(1 << 16, dtype=F64)
    bb = (b + 0.5) * math.ldexp(_TWO_PI, -32)  # < 2^-13: three terms of each series suffice
    b2 = bb * bb
    cb = (b2 * (1 / 24) - 0.5) * b2 + 1.0
    sb = ((b2 * (1 / 120) - 1 / 6) * b2) * bb + bb
    out = (np.stack([ca, sa], axis=1), np.stack([cb, sb], axis=1))
    for x in out:
        x.flags.writeable = False
    return out


_U32_16 = np.uint32(16)
_U32_LOW = np.uint32(0xFFFF)


def cos_2pi_u32(m: np.ndarray) -> np.ndarray:
    """cos(2π(m + 1/2)/2^32) of uint32 integers m, float64, within 2.5e-16 of the exact value
    (the angle of a Box-Muller draw from the low half of a 64-bit hash)."""
    if not (isinstance(m, np.ndarray) and m.dtype == np.uint32):
        m = np.asarray(m, dtype=np.uint32)
    ta, tb = _cos_tables()
    a = ta.take(m >> _U32_16, axis=0)
    b = tb.take(m & _U32_LOW, axis=0)
    out = a[:, 0] * b[:, 0]
    s = a[:, 1] * b[:, 1]
    out -= s
    return out
