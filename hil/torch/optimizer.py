"""MixedPrecisionSGD: the torch optimizer of a ChipModel's on-chip parameters.

A torch.optim.Optimizer, so the usual loop (zero_grad, backward, step) and torch's learning
rate schedulers work; `step()` hands the gradients to the mixed-precision core instead of
changing the parameters itself. Plain SGD only: the algorithm accumulates -lr·grad in χ.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from hil.torch.chip_model import ChipModel, StepReport


class MixedPrecisionSGD(torch.optim.Optimizer):
    """SGD on the chip: χ += -lr·∂L/∂W, SET pulses where |χ| ≥ ε_w (see ChipModel)."""

    def __init__(self, chip: ChipModel, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(chip.chip_parameters(), {"lr": float(lr)})
        self.chip = chip
        self.last = StepReport(0, 0)   # what the latest step sent

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if len(self.param_groups) != 1:
            raise ValueError("MixedPrecisionSGD has one learning rate for all on-chip "
                             "parameters (one parameter group)")
        self.last = self.chip.apply_gradients(self.param_groups[0]["lr"])
        return loss
