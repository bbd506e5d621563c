"""The conductance cache: the host's knowledge of every mapped device.

Per weight block: G+ and G- as last read off the chip, the weights W = β(G+ - G-) computed
from them (what the host's forward and backward passes use), and the SET pulses each device
has had since its last RESET (what blind programming and `chi_update: expected` need; the
count saturates at 65,535). Nothing here talks to the chip: the mixed-precision core stores
what its commands read back.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from hil.device_pairs import DevicePairMap, PairBlock

F32 = np.float32
PULSE_COUNT_MAX = 65535


class BlockCache:
    """One block's cached conductances, weights and pulse counts, shaped like the block.

    `w` is updated in place, so a view of it (a torch tensor from `torch.from_numpy`, the
    MLP's weight list) always holds the current weights."""

    def __init__(self, pairs: PairBlock) -> None:
        shape = pairs.shape
        self.name = pairs.name
        self.beta = F32(pairs.beta)
        self.gp = np.zeros(shape, F32)
        self.gm = np.zeros(shape, F32)
        self.w = np.zeros(shape, F32)
        self.pulses_plus = np.zeros(shape, np.uint16)    # SET pulses since RESET, G+ devices
        self.pulses_minus = np.zeros(shape, np.uint16)   # the same for the G- devices

    def load(self, gp: np.ndarray, gm: np.ndarray) -> None:
        """Take a full read of the block (G+ then G- values, layout order)."""
        self.gp[...] = gp.reshape(self.gp.shape)
        self.gm[...] = gm.reshape(self.gm.shape)
        np.multiply(self.beta, self.gp - self.gm, out=self.w)

    def store(self, flat: np.ndarray, positive: np.ndarray,
              values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Store read-back values of the G+ (positive) or G- devices of weights `flat`
        (unique) and recompute those weights; returns their weights before and after."""
        gp, gm, w = self.gp.reshape(-1), self.gm.reshape(-1), self.w.reshape(-1)
        gp_f = np.where(positive, values, gp[flat])
        gm_f = np.where(positive, gm[flat], values)
        gp[flat] = gp_f
        gm[flat] = gm_f
        w_before = w[flat]
        w_after = gp_f - gm_f
        w_after *= self.beta
        w[flat] = w_after
        return w_before, w_after

    def conductance(self, flat: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """The cached conductance of the device each weight's pulses go to."""
        return np.where(positive, self.gp.reshape(-1)[flat], self.gm.reshape(-1)[flat])

    def pulse_counts(self, flat: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """SET pulses since RESET of the device each weight's pulses go to (int64)."""
        return np.where(positive, self.pulses_plus.reshape(-1)[flat],
                        self.pulses_minus.reshape(-1)[flat]).astype(np.int64)

    def count_pulses(self, flat: np.ndarray, positive: np.ndarray, n: np.ndarray) -> None:
        """Add n SET pulses to G+ (positive) or G- of weights `flat` (unique)."""
        for arr, sel in ((self.pulses_plus.reshape(-1), positive),
                         (self.pulses_minus.reshape(-1), ~positive)):
            arr[flat[sel]] = np.minimum(arr[flat[sel]].astype(np.int64) + n[sel],
                                        PULSE_COUNT_MAX)

    def reset_counts(self, flat: np.ndarray) -> None:
        """Both devices of weights `flat` were RESET."""
        self.pulses_plus.reshape(-1)[flat] = 0
        self.pulses_minus.reshape(-1)[flat] = 0


class ConductanceCache:
    """Every block's cache, in layout order."""

    def __init__(self, pairs: DevicePairMap) -> None:
        self.blocks: List[BlockCache] = [BlockCache(b) for b in pairs.blocks]

    def load(self, values: np.ndarray) -> None:
        """Take a full read of every mapped device (layout order)."""
        pos = 0
        for b in self.blocks:
            n = b.gp.size
            b.load(values[pos:pos + n], values[pos + n:pos + 2 * n])
            pos += 2 * n

    def vector(self) -> np.ndarray:
        """Every cached conductance in layout order: the run log's snapshot vector."""
        return np.concatenate([a.ravel() for b in self.blocks for a in (b.gp, b.gm)])

    @property
    def weights(self) -> List[np.ndarray]:
        return [b.w for b in self.blocks]
