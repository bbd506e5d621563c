"""The MLP GAN on MNIST on the chip: both players' weights as device pairs, scored by
classifier-FID and inception-style score after every epoch.

`pcm-hil train --config configs/mnist_gan.yaml` runs it (hil.training.run_experiment
dispatches here on the config's `gan` section). Players, seeded initial weights, data and
noise order are the fp32 reference's (hil.models.mnist_gan) at `init_seed = data_seed =
noise_seed = seed`: epoch e (0-based) visits the training digits in the order
`default_rng([seed, e + 1]).permutation` and draws its latents from
`default_rng([seed, e + 1])`. One chip model holds both players (blocks generator_fc1,
generator_fc2, discriminator_fc1, discriminator_fc2); each batch is two chip steps: the
discriminator's update, then the generator's (its loss runs through the discriminator, whose
gradients are dropped so that step moves the generator only). The fp32 counterpart starts
from the same weights, sees the same digits and latents and uses the same plain SGD.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from drivers.backend import ChipBackend
from hil.config import GanExperimentConfig, Holdout
from hil.epoch_loop import learning_rate
from hil.metrics.gan_quality import GanQuality, MnistGanScorer
from hil.mnist import Mnist, load_mnist
from hil.models import mnist_gan as ref
from hil.recorder import Recorder
from hil.run_control import RunControl
from hil.torch_run import TorchEpochTrainer, between_steps, chip_summary, drop_gradients

_bce = nn.functional.binary_cross_entropy_with_logits


class Players(nn.Module):
    """Both players in one module, so one chip model holds them."""

    def __init__(self, generator: ref.Generator, discriminator: ref.Discriminator) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator


@dataclass
class GanData:
    """Training digits, and the scorer whose real statistics come from the holdout."""

    train_x: np.ndarray
    scorer: MnistGanScorer

    @classmethod
    def from_mnist(cls, m: Mnist, cfg: GanExperimentConfig) -> "GanData":
        d = cfg.data
        real = m.test_x if d.holdout is Holdout.TEST else m.train_x[ref.TRAIN_DIGITS:]
        return cls(m.train_x[:d.train_examples], MnistGanScorer(real[:d.holdout_examples]))


@dataclass
class GanEpoch:
    """One epoch: both players' mean losses, FID and IS of the fixed-latent samples (chip and
    fp32 counterpart), pulses, refreshes, time."""

    epoch: int
    steps: int
    d_loss: float
    g_loss: float
    fid: float
    inception_score: float
    set_pulses: int
    refreshes: int
    seconds: float
    baseline_d_loss: Optional[float] = None
    baseline_g_loss: Optional[float] = None
    baseline_fid: Optional[float] = None
    baseline_inception_score: Optional[float] = None

    def metrics(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def set_baseline(self, value: "GanEpoch") -> None:
        self.baseline_d_loss, self.baseline_g_loss = value.d_loss, value.g_loss
        self.baseline_fid, self.baseline_inception_score = value.fid, value.inception_score

    def describe(self, total: int) -> str:
        base = "" if self.baseline_fid is None else f"  fp32 FID {self.baseline_fid:7.2f}"
        return (f"epoch {self.epoch + 1:>3}/{total}  D {self.d_loss:.3f}  G {self.g_loss:.3f}  "
                f"FID {self.fid:7.2f}  IS {self.inception_score:.2f}{base}  SET pulses "
                f"{self.set_pulses:>10,}  refreshes {self.refreshes:>7,}  {self.seconds:6.1f} s")


def initial_players(cfg: GanExperimentConfig) -> Players:
    """Both players with their initial weights, the same for the chip and the baseline."""
    g = cfg.gan
    return Players(*ref.build_players(ref.GanConfig(latent=g.latent, g_hidden=g.g_hidden,
                                                    d_hidden=g.d_hidden, init_seed=cfg.seed)))


def epoch_batches(cfg: GanExperimentConfig, data: GanData, epoch: int
                  ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(real digits, latents) of every step of the epoch, shared with the baseline."""
    b, n = cfg.gan.batch, data.train_x.shape[0]
    steps = n // b
    order = np.random.default_rng([cfg.seed, epoch + 1]).permutation(n)
    noise = np.random.default_rng([cfg.seed, epoch + 1]).standard_normal(
        (steps * b, cfg.gan.latent), dtype=np.float32)
    return [(data.train_x[order[k * b:(k + 1) * b]], noise[k * b:(k + 1) * b])
            for k in range(steps)]


def quality(players: Players, cfg: GanExperimentConfig, data: GanData) -> GanQuality:
    z = np.random.default_rng(cfg.gan.eval_seed).standard_normal(
        (cfg.gan.eval_samples, cfg.gan.latent), dtype=np.float32)
    return data.scorer.score(ref.generate(players.generator, z))


def _d_loss(p: Players, real: np.ndarray, fake: torch.Tensor) -> torch.Tensor:
    n = real.shape[0]
    return (_bce(p.discriminator(torch.from_numpy(real)), torch.ones(n))
            + _bce(p.discriminator(fake.detach()), torch.zeros(n)))


def _g_loss(p: Players, fake: torch.Tensor) -> torch.Tensor:
    return _bce(p.discriminator(fake), torch.ones(fake.shape[0]))


class ChipGanTrainer(TorchEpochTrainer):
    """One run of the GAN on one chip; `examples` counts real digits seen."""

    def __init__(self, cfg: GanExperimentConfig, backend: ChipBackend,
                 recorder: Optional[Recorder] = None) -> None:
        players = initial_players(cfg)
        super().__init__(cfg, players, backend, recorder, cfg.gan.biases_on_chip)
        self.players = players

    def progress_total(self, data: GanData) -> int:
        return (data.train_x.shape[0] // self.cfg.gan.batch) * self.cfg.gan.batch

    def train_epoch(self, data: GanData, epoch: int,
                    on_progress: Callable[[int], None] | None = None,
                    control: RunControl | None = None, monitor: Any = None) -> GanEpoch:
        t0 = time.perf_counter()
        lr = learning_rate(self.cfg, epoch)
        p, tr = self.players, self.training
        batches = epoch_batches(self.cfg, data, epoch)
        pulses0, refresh0 = self.io.counters.set_pulses, self.refreshes
        d_sum = g_sum = 0.0
        done = 0
        for real, z in batches:
            before = self.step
            fake = p.generator(torch.from_numpy(z))
            tr.zero_grad()
            d_loss = _d_loss(p, real, fake)
            d_loss.backward()
            d_report = tr.step(lr)
            tr.zero_grad()
            g_loss = _g_loss(p, fake)
            g_loss.backward()
            drop_gradients(list(p.discriminator.parameters()))
            g_report = tr.step(lr)
            d_value, g_value = float(d_loss.detach()), float(g_loss.detach())
            d_sum += d_value
            g_sum += g_value
            done += real.shape[0]
            self.examples += real.shape[0]
            between_steps(self, {"epoch": epoch, "loss": d_value + g_value, "d_loss": d_value,
                                 "g_loss": g_value, "examples": real.shape[0],
                                 "set_pulses": d_report.pulses + g_report.pulses,
                                 "d_set_pulses": d_report.pulses,
                                 "g_set_pulses": g_report.pulses,
                                 "refreshes": d_report.refreshed + g_report.refreshed},
                          before, control, monitor)
            if on_progress is not None:
                on_progress(done)
        self.core.full_read()
        with self.chip.host_forward():
            q = quality(p, self.cfg, data)
        n = max(len(batches), 1)
        return GanEpoch(epoch, len(batches), d_sum / n, g_sum / n, q.fid, q.inception_score,
                        self.io.counters.set_pulses - pulses0, self.refreshes - refresh0,
                        time.perf_counter() - t0)

    def summary(self, epochs: List[GanEpoch], train_seconds: float) -> Dict[str, Any]:
        out = chip_summary(self.cfg, self, epochs, train_seconds)
        last = epochs[-1]
        out.update(holdout=self.cfg.data.holdout.value, fid=last.fid,
                   inception_score=last.inception_score)
        line = f"classifier-FID {last.fid:.2f}, IS {last.inception_score:.2f}"
        if last.baseline_fid is not None:
            gap = 100 * (last.fid / last.baseline_fid - 1)
            out.update(baseline_fid=last.baseline_fid,
                       baseline_inception_score=last.baseline_inception_score,
                       fid_gap_percent=gap)
            line += f"; fp32 {last.baseline_fid:.2f}, IS {last.baseline_inception_score:.2f} " \
                    f"({gap:+.1f} %)"
        out["headline"] = (f"{line}; {out['set_pulses']:,} SET pulses, "
                           f"{out['programming_reduction']:,.0f}x fewer pulses than "
                           f"programming every weight every step")
        return out


class GanBaseline:
    """The fp32 counterpart: the same players, initial weights, digits, latents and plain
    SGD, at the rate `training.baseline_learning_rate` gives (the chip's by default)."""

    def __init__(self, cfg: GanExperimentConfig) -> None:
        self.cfg = cfg
        self.players = initial_players(cfg)
        lr = cfg.optimizer.learning_rate
        self.opt_g = torch.optim.SGD(self.players.generator.parameters(), lr)
        self.opt_d = torch.optim.SGD(self.players.discriminator.parameters(), lr)

    def train_epoch(self, data: GanData, epoch: int) -> GanEpoch:
        t0 = time.perf_counter()
        lr = learning_rate(self.cfg, epoch, baseline=True)
        for opt in (self.opt_g, self.opt_d):
            opt.param_groups[0]["lr"] = lr
        p = self.players
        batches = epoch_batches(self.cfg, data, epoch)
        d_sum = g_sum = 0.0
        for real, z in batches:
            fake = p.generator(torch.from_numpy(z))
            self.opt_d.zero_grad()
            d_loss = _d_loss(p, real, fake)
            d_loss.backward()
            self.opt_d.step()
            self.opt_g.zero_grad()
            g_loss = _g_loss(p, fake)
            g_loss.backward()
            self.opt_g.step()
            d_sum += float(d_loss.detach())
            g_sum += float(g_loss.detach())
        q = quality(p, self.cfg, data)
        n = max(len(batches), 1)
        return GanEpoch(epoch, len(batches), d_sum / n, g_sum / n, q.fid, q.inception_score,
                        0, 0, time.perf_counter() - t0)


def gan_trainers(cfg: GanExperimentConfig, backend: ChipBackend,
                 recorder: Optional[Recorder], data: Optional[Any]
                 ) -> Tuple[ChipGanTrainer, Optional[GanBaseline], GanData]:
    """What hil.epoch_loop.run_epochs needs: the trainer, the baseline (or None) and the data
    (`data`: an Mnist to take it from, or a GanData; default the configured source)."""
    if data is None or isinstance(data, Mnist):
        data = GanData.from_mnist(load_mnist(cfg.data.source) if data is None else data, cfg)
    if not isinstance(data, GanData):
        raise TypeError(f"the GAN experiment takes its data as an Mnist or GanData, got "
                        f"{type(data).__name__}")
    baseline = GanBaseline(cfg) if cfg.training.baseline else None
    return ChipGanTrainer(cfg, backend, recorder), baseline, data


def sample_grid(players: Players, cfg: GanExperimentConfig, side: int = 8) -> np.ndarray:
    """A side × side grid of samples from the first fixed latents, (28·side, 28·side) in
    [0, 1], for a PNG."""
    z = np.random.default_rng(cfg.gan.eval_seed).standard_normal(
        (side * side, cfg.gan.latent), dtype=np.float32)
    imgs = ref.generate(players.generator, z).reshape(side, side, 28, 28)
    return imgs.transpose(0, 2, 1, 3).reshape(28 * side, 28 * side)
