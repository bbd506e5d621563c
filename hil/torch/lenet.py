"""The seed paper's CNN: a LeNet-5-like network for 28×28 MNIST digits.

conv 5×5 (padding 2) → activation → pool 2 → conv 5×5 → activation → pool 2 → fully
connected hidden layers with the activation → 10 outputs (logits; the loss is softmax
cross-entropy). With the defaults (6 and 16 channels, 120 and 84 hidden, tanh, max-pool):
61,706 weights and biases, 123,412 devices.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from hil.config import Activation, ModelConfig, Pool

_ACTIVATIONS = {Activation.TANH: nn.Tanh, Activation.RELU: nn.ReLU}
_POOLS = {Pool.MAX: nn.MaxPool2d, Pool.AVG: nn.AvgPool2d}


class LeNet5(nn.Module):
    """Layers named conv1, conv2, fc1..fcN (the last one is the output layer)."""

    def __init__(self, channels: Sequence[int] = (6, 16), hidden: Sequence[int] = (120, 84),
                 activation: Activation = Activation.TANH, pool: Pool = Pool.MAX) -> None:
        super().__init__()
        act, pool_cls = _ACTIVATIONS[Activation(activation)], _POOLS[Pool(pool)]
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.act1, self.pool1 = act(), pool_cls(2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.act2, self.pool2 = act(), pool_cls(2)
        sizes = [c2 * 5 * 5, *hidden, 10]
        self.fc: List[nn.Linear] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            layer = nn.Linear(n_in, n_out)
            setattr(self, f"fc{i}", layer)
            self.fc.append(layer)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x.reshape(-1, 1, 28, 28))))
        x = self.pool2(self.act2(self.conv2(x))).flatten(1)
        for layer in self.fc[:-1]:
            x = self.act(layer(x))
        return self.fc[-1](x)


def build(cfg: ModelConfig, seed: int) -> LeNet5:
    """The model with torch's default initialisation drawn from `seed` alone: the chip run
    and its fp32 baseline start from the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LeNet5(cfg.channels, cfg.hidden, cfg.activation, cfg.pool)
