"""The read ADC model: conductance in µS <-> 16-bit code.

A read value travels as a uint16 code, `code = round(g / lsb)` clipped to 0..65535, with
`lsb = full_scale_us / 65535` and `full_scale_us = 1.25 * g_max_us` (HELLO carries
full_scale_us as a float64). The quantisation is part of the chip model, not of the link: the
simulated chip applies `adc_roundtrip` in its own read(), so an in-process read and a read
through the wire give the same float32 bit for bit. The round trip is idempotent
(`adc_quantise(adc_dequantise(c)) == c` for every code), which is what lets the firmware
emulator re-quantise values the simulated chip already quantised.
"""
from __future__ import annotations

import numpy as np

ADC_BITS = 16
ADC_CODE_MAX = (1 << ADC_BITS) - 1
#: Full scale above g_max, so read noise on a fully SET device is not clipped.
ADC_HEADROOM = 1.25


def adc_full_scale_us(g_max_us: float) -> float:
    """ADC full scale for a chip whose conductance range ends at g_max_us."""
    return float(g_max_us) * ADC_HEADROOM


def adc_lsb_us(full_scale_us: float) -> float:
    """Conductance step of one code (≈ 0.00038 µS for a 20 µS device)."""
    return float(full_scale_us) / ADC_CODE_MAX


def adc_quantise(g_us: np.ndarray, full_scale_us: float) -> np.ndarray:
    """Codes (uint16) of conductances in µS; below 0 reads 0, above full scale saturates."""
    return _codes(g_us, adc_lsb_us(full_scale_us)).astype(np.uint16)


def adc_dequantise(codes: np.ndarray, full_scale_us: float) -> np.ndarray:
    """Conductances (float32 µS) of codes: what the driver returns from read()."""
    return (np.asarray(codes, dtype=np.float64) * adc_lsb_us(full_scale_us)).astype(np.float32)


def adc_roundtrip(g_us: np.ndarray, full_scale_us: float) -> np.ndarray:
    """What an ADC read of g_us returns, float32 µS: the simulated chip's read path."""
    lsb = adc_lsb_us(full_scale_us)
    codes = _codes(g_us, lsb).astype(np.uint16)
    return np.multiply(codes, lsb, dtype=np.float64).astype(np.float32)


def _codes(g_us: np.ndarray, lsb: float) -> np.ndarray:
    """round(g / lsb) clipped to 0..ADC_CODE_MAX, NaN to 0, as float64 (a new array).

    fmax/fmin drop a NaN in favour of the bound, so clipping first (then rounding, which
    keeps integers and order) gives the codes of rint-then-clip in three in-place calls."""
    x = np.divide(g_us, lsb, dtype=np.float64)
    if not isinstance(x, np.ndarray):   # 0-d input: a scalar
        return np.rint(np.fmin(np.fmax(x, 0.0), float(ADC_CODE_MAX)))
    np.fmax(x, 0.0, out=x)
    np.fmin(x, float(ADC_CODE_MAX), out=x)
    return np.rint(x, out=x)
