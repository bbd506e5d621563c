"""An MLP GAN on MNIST: the two players, their seeded weights, data and noise order, training.

Sized for a chip: generator z(64) → 256 → 784 and discriminator 784 → 128 → 1 (LeakyReLU
0.2 hidden, sigmoid images in [0, 1] like the MNIST loader's; 317,568 weights and 1,169
biases, 637,474 devices as pairs, so both players fit one 1 M-device chip). Everything a
chip run must share with its fp32 reference is a function of the config:
- initial weights: `init_weights(module, seed)` draws every tensor of a player, in
  parameter order, from one generator seeded `init_seed` (generator) or `init_seed + 1`
  (discriminator), U(−1/√fan_in, 1/√fan_in) (torch's default law for Linear);
- data order: epoch e visits the first 50,000 training digits in the order
  `default_rng([data_seed, e]).permutation` (the last 10,000 are the validation digits the
  hyperparameters are chosen on; the test digits are only scored against);
- noise: the latent batch of step k in epoch e is row block k of
  `default_rng([noise_seed, e]).standard_normal` (float32), drawn in numpy so it does not
  depend on torch's generator; the same z feeds the discriminator's fake batch and the
  generator step;
- the step: discriminator first (real labelled 1, detached fakes 0), then the generator
  (non-saturating loss, fakes labelled 1), binary cross-entropy on logits, one optimizer
  step per player. `train` takes each player's optimizer as an argument.
Quality after each epoch: classifier-FID and inception-style score (hil.metrics.gan_quality)
of `eval_samples` images generated from a fixed latent set (`eval_seed`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch
from torch import nn

from hil.metrics.gan_quality import GanQuality, MnistGanScorer

TRAIN_DIGITS = 50_000


@dataclass(frozen=True)
class GanConfig:
    """Sizes and hyperparameters of one GAN run."""

    latent: int = 64
    g_hidden: int = 256
    d_hidden: int = 128
    batch: int = 64
    optimizer: str = "adam"        # "adam" or "sgd"
    g_lr: float = 5e-4
    d_lr: float = 5e-4
    beta1: float = 0.5             # Adam β1; SGD momentum when optimizer is "sgd"
    epochs: int = 10
    init_seed: int = 0
    data_seed: int = 0
    noise_seed: int = 0
    eval_seed: int = 12345
    eval_samples: int = 10_000

    def to_dict(self) -> dict:
        return asdict(self)


class Generator(nn.Module):
    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(latent, hidden)
        self.fc2 = nn.Linear(hidden, 784)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(nn.functional.leaky_relu(self.fc1(z), 0.2)))


class Discriminator(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (batch,)."""
        return self.fc2(nn.functional.leaky_relu(self.fc1(x), 0.2)).squeeze(1)


def init_weights(module: nn.Module, seed: int) -> None:
    """U(−1/√fan_in, 1/√fan_in) for every weight and bias, from one seeded generator."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.uniform_(-bound, bound, generator=g)


def build_players(cfg: GanConfig) -> tuple[Generator, Discriminator]:
    g, d = Generator(cfg.latent, cfg.g_hidden), Discriminator(cfg.d_hidden)
    init_weights(g, cfg.init_seed)
    init_weights(d, cfg.init_seed + 1)
    return g, d


def reference_optimizers(cfg: GanConfig) -> Callable:
    """The fp32 reference's optimizers: (make(generator), make(discriminator))."""
    def make(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        if cfg.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr, betas=(cfg.beta1, 0.999))
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.beta1)
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    return lambda g, d: (make(g, cfg.g_lr), make(d, cfg.d_lr))


def eval_latents(cfg: GanConfig) -> np.ndarray:
    return np.random.default_rng(cfg.eval_seed).standard_normal(
        (cfg.eval_samples, cfg.latent), dtype=np.float32)


def generate(g: Generator, z: np.ndarray, batch: int = 2000) -> np.ndarray:
    """Images (n, 784) float32 from latents (n, latent)."""
    was_training = g.training
    g.eval()
    with torch.no_grad():
        out = np.concatenate([g(torch.from_numpy(z[i:i + batch])).numpy()
                              for i in range(0, len(z), batch)])
    g.train(was_training)
    return out


@dataclass
class GanEpochRecord:
    """One epoch: mean losses of both players, quality of the fixed-latent samples, time."""

    epoch: int
    steps: int
    d_loss: float
    g_loss: float
    fid: float
    inception_score: float
    train_seconds: float
    examples_per_s: float
    eval_seconds: float


@dataclass
class GanResult:
    config: GanConfig
    epochs: List[GanEpochRecord] = field(default_factory=list)


def train(g: Generator, d: Discriminator, cfg: GanConfig, train_x: np.ndarray,
          scorer: MnistGanScorer, make_optimizers: Optional[Callable] = None,
          max_steps: Optional[int] = None,
          on_epoch: Optional[Callable[[GanEpochRecord], None]] = None,
          on_step: Optional[Callable[[int, int, float, float], None]] = None) -> GanResult:
    """Train for cfg.epochs epochs over `train_x` (the first TRAIN_DIGITS training digits in
    the reference), scoring after each; `max_steps` caps the steps per epoch (tests).
    `make_optimizers(g, d)` returns (generator's, discriminator's) optimizer, by default the
    reference's; `on_step(epoch, step, d_loss, g_loss)` sees every step."""
    opt_g, opt_d = (make_optimizers or reference_optimizers(cfg))(g, d)
    bce = nn.functional.binary_cross_entropy_with_logits
    steps_per_epoch = len(train_x) // cfg.batch
    z_eval = eval_latents(cfg)
    result = GanResult(cfg)
    g.train()
    d.train()
    for epoch in range(1, cfg.epochs + 1):
        order = np.random.default_rng([cfg.data_seed, epoch]).permutation(len(train_x))
        noise = np.random.default_rng([cfg.noise_seed, epoch]).standard_normal(
            (steps_per_epoch * cfg.batch, cfg.latent), dtype=np.float32)
        ones, zeros = torch.ones(cfg.batch), torch.zeros(cfg.batch)
        d_sum = g_sum = 0.0
        steps = 0
        t0 = time.perf_counter()
        for k in range(steps_per_epoch):
            if max_steps is not None and steps >= max_steps:
                break
            real = torch.from_numpy(train_x[order[k * cfg.batch:(k + 1) * cfg.batch]])
            z = torch.from_numpy(noise[k * cfg.batch:(k + 1) * cfg.batch])
            fake = g(z)
            d_loss = bce(d(real), ones) + bce(d(fake.detach()), zeros)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = bce(d(fake), ones)
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            d_value, g_value = float(d_loss.detach()), float(g_loss.detach())
            d_sum += d_value
            g_sum += g_value
            steps += 1
            if on_step:
                on_step(epoch, steps, d_value, g_value)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        q: GanQuality = scorer.score(generate(g, z_eval))
        rec = GanEpochRecord(epoch, steps, d_sum / max(steps, 1), g_sum / max(steps, 1),
                             q.fid, q.inception_score, train_s,
                             steps * cfg.batch / train_s if train_s > 0 else float("nan"),
                             time.perf_counter() - t1)
        result.epochs.append(rec)
        if on_epoch:
            on_epoch(rec)
    return result


def sample_grid(images: np.ndarray, rows: int = 8, cols: int = 8, pad: int = 2) -> np.ndarray:
    """The first rows×cols images tiled into one uint8 picture (white gaps), for a PNG."""
    n = rows * cols
    x = np.asarray(images[:n], dtype=np.float32).reshape(-1, 28, 28)
    if len(x) < n:
        raise ValueError(f"need {n} images for a {rows}x{cols} grid, got {len(x)}")
    size = 28 + pad
    grid = np.full((rows * size + pad, cols * size + pad), 255, dtype=np.uint8)
    tiles = (255 - np.clip(x, 0.0, 1.0) * 255).round().astype(np.uint8)   # ink dark
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * size:pad + r * size + 28, pad + c * size:pad + c * size + 28] = tiles[i]
    return grid
