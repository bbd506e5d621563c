"""Weighted sums of a weight block computed by the chip: W·x = β(I+ - I-), one MATVEC per
device block.

Inputs are activations and errors, not voltages: each input vector is scaled so that its
largest magnitude becomes the read voltage (`training.matvec_read_v`), and the sums are
scaled back (abs-max input scaling, as analog accelerators do). A disturbing voltage can
therefore never reach the array, whatever the network computes. The MLP trainer
(hil.training.ChipMatmul) and hil.torch drive their blocks through this one object.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from drivers.abilities import GuardedBackend, find_ability
from drivers.backend import ChipInfo
from drivers.errors import ConfigError
from hil.chip_io import ChipIO
from hil.mixed_precision import TrainingDiverged

F32 = np.float32


def preflight_block(guard: Any, plus: np.ndarray, fan_in: int) -> None:
    """Check the two MATVECs a training step sends to a block against the station's limits
    (drivers.safety: its size, here; the voltages are checked as each is sent): driven from
    its inputs (rows: the `fan_in` inputs and a bias row, if any) and from its outputs."""
    guard.check_matvec(plus.T, np.zeros(plus.shape[0]))        # forward
    guard.check_matvec(plus[:fan_in], np.zeros(plus.shape[1]))  # backward


class ChipMatvec:
    """MATVECs through `io` at read voltage `read_v`, checked against the chip's hard limit
    and the station's safety limit before the chip is touched (ConfigError naming `key`)."""

    def __init__(self, io: ChipIO, chip_info: ChipInfo, read_v: float,
                 key: str = "training.matvec_read_v") -> None:
        self.io = io
        guard = find_ability(io.backend, GuardedBackend)   # the station's limits
        station = None if guard is None else guard.station_limits.read_v_max
        for v_max, whose in ((chip_info.hard_limits.get("read_v_max"), "the chip's "),
                             (station, "the station's safety.")):
            if v_max is not None and read_v > v_max:   # refused before the chip is touched
                raise ConfigError(f"{read_v} V exceeds {whose}read_v_max of {v_max} V",
                                  key=key)
        self.read_v = float(read_v)
        # The largest float32 not above read_v: the voltages sent are float32.
        v32 = np.float32(read_v)
        self._v32 = v32 if float(v32) <= read_v else np.nextafter(v32, F32(0))
        self.commands = 0   # MATVECs sent

    def line_voltages(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """x (n,) or (n, k) as float32 line voltages, each column peaking at the read voltage
        (a zero column stays zero), and the per-column factor that turns currents back into
        sums over x."""
        x64 = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x64).all():
            raise TrainingDiverged("a MATVEC input (an activation or an error) is NaN or "
                                   "infinite: training diverged; try a smaller "
                                   "optimizer.learning_rate")
        peak = np.max(np.abs(x64), axis=0)
        peak = np.where(peak > 0, peak, 1.0)
        v = np.clip((x64 * (self.read_v / peak)).astype(F32), -self._v32, self._v32)
        return v, peak / self.read_v

    def weighted_sums(self, plus: np.ndarray, minus: np.ndarray, x: np.ndarray,
                      beta: F32) -> np.ndarray:
        """β(G+ - G-)·x for the (m, n) address blocks `plus`/`minus` and inputs x (n,) or
        (n, k): two MATVECs, float32 (m,) or (m, k)."""
        io = self.io
        self.commands += 2
        v, scale = self.line_voltages(x)
        return (beta * ((io.matvec(plus, v) - io.matvec(minus, v)) * scale)).astype(F32)
