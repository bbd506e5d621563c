"""The mixed-precision digital unit: χ accumulation, pulse decisions, refresh decisions.

Pure arithmetic, no I/O (Nandakumar et al. 2020): χ += -lr·∂L/∂W in fp32; wherever
|χ| ≥ ε_w = β·ε_G, p = floor(|χ|/ε_w) SET pulses go to G+ (χ > 0) or G- (χ < 0) and the
nominal p·ε_w is subtracted from χ (programming is blind).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hil.config import RefreshConfig, RefreshCriterion
from hil.network import Gradient

F32 = np.float32


@dataclass
class PulsePlan:
    """SET pulses for one layer: weight flat indices, pulse counts, and which device."""

    flat: np.ndarray        # int64 flat weight indices
    n: np.ndarray           # uint8/int pulse counts, >= 1
    positive: np.ndarray    # bool: True → G+, False → G-


class MixedPrecisionOptimizer:
    """χ per layer and the pulse rule."""

    def __init__(self, shapes: Sequence[tuple], beta: Sequence[float], epsilon_us: float,
                 max_pulses: int) -> None:
        self.chi = [np.zeros(s, dtype=F32) for s in shapes]
        self.eps_w = [F32(b * epsilon_us) for b in beta]
        self.max_pulses = int(max_pulses)

    def accumulate(self, layer: int, grad: Gradient) -> PulsePlan:
        """Add the update to χ and take out the pulses it now calls for."""
        chi = self.chi[layer]
        eps = self.eps_w[layer]
        n_out = chi.shape[1]
        if grad.rows is None:
            chi += grad.update
            block = chi
        else:
            block = np.take(chi, grad.rows, axis=0)   # faster than fancy indexing
            block += grad.update
        flat_block = block.reshape(-1)
        mag = np.abs(flat_block)
        hit = np.flatnonzero(mag >= eps)
        if grad.rows is None:
            flat = hit
        else:
            flat = grad.rows[hit // n_out] * n_out + hit % n_out
        v = flat_block[hit]
        p = np.minimum(np.floor(mag[hit] / eps), self.max_pulses).astype(F32)
        positive = v > 0
        flat_block[hit] = v - np.where(positive, p, -p) * eps
        if grad.rows is not None:
            chi[grad.rows] = block
        return PulsePlan(flat.astype(np.int64), p.astype(np.int64), positive)


def refresh_candidates(gp: np.ndarray, gm: np.ndarray, cfg: RefreshConfig) -> np.ndarray:
    """Flat indices of the pairs that need a refresh, by the configured criterion."""
    hi = np.maximum(gp, gm)
    if cfg.criterion is RefreshCriterion.BOTH:
        need = (hi > cfg.high_us) & (np.minimum(gp, gm) > cfg.low_us)
    else:
        need = hi > cfg.high_us
    return np.flatnonzero(need.reshape(-1))


def pulses_for(target_us: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Blind programming from RESET: the pulse count whose expected conductance is nearest.

    `curve[n]` is the expected conductance after n SET pulses from RESET (increasing).
    """
    t = np.asarray(target_us, dtype=np.float64)
    i = np.clip(np.searchsorted(curve, t), 1, len(curve) - 1)
    lower_closer = (t - curve[i - 1]) < (curve[i] - t)
    return np.where(lower_closer, i - 1, i).astype(np.int64)

