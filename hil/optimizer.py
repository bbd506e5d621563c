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
    #: float32 ±n·ε_w, what was taken out of χ (None: compute it from n and positive)
    nominal: np.ndarray | None = None


class MixedPrecisionOptimizer:
    """χ per layer and the pulse rule."""

    def __init__(self, shapes: Sequence[tuple], beta: Sequence[float], epsilon_us: float,
                 max_pulses: int) -> None:
        self.chi = [np.zeros(s, dtype=F32) for s in shapes]
        self.eps_w = [F32(b * epsilon_us) for b in beta]
        self.max_pulses = int(max_pulses)

    def accumulate(self, layer: int, grad: Gradient) -> PulsePlan:
        """Add the update to χ and take out the pulses it now calls for.

        Most steps pulse a handful of weights or none, so after the pass over the block
        (add, |χ|, compare) the rest works on the hits only, in as few numpy calls as the
        arithmetic allows."""
        chi = self.chi[layer]
        eps = self.eps_w[layer]
        rows = grad.rows
        if rows is None:
            chi += grad.update
            block = chi
        else:
            block = chi.take(rows, axis=0)   # faster than fancy indexing
            block += grad.update
        flat_block = block.reshape(-1)
        mag = np.abs(flat_block)
        hit = (mag >= eps).nonzero()[0]
        if hit.size == 0:
            if rows is not None:
                chi[rows] = block
            return PulsePlan(hit, np.empty(0, np.int64), np.empty(0, bool), np.empty(0, F32))
        v = flat_block[hit]
        p = mag[hit]
        p /= eps
        np.floor(p, out=p)
        np.minimum(p, F32(self.max_pulses), out=p)
        positive = v > 0
        # ±p·ε. With ε > 0, |v| >= ε: v is never ±0, and copysign is where(v > 0, p, -p).
        nominal = np.copysign(p, v) if eps > 0 else np.where(positive, p, -p)
        nominal *= eps
        flat_block[hit] = v - nominal
        if rows is None:
            flat = hit
        else:
            chi[rows] = block
            q, r = np.divmod(hit, chi.shape[1])
            flat = np.multiply(rows[q], chi.shape[1], dtype=np.int64)
            flat += r
        return PulsePlan(flat.astype(np.int64, copy=False), p.astype(np.int64), positive,
                         nominal)


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

