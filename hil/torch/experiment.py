"""The seed's CNN experiment: a torch model trained on MNIST on the chip, and its baseline.

`pcm-hil train --config configs/mnist_cnn.yaml` runs it (hil.training.run_experiment
dispatches here on the config's `model` section). The loop, the metrics, the run log and the
summary are the MLP's (hil.epoch_loop): only the network differs. The
fp32 baseline starts from the same initial weights (the same seed), sees the same examples
in the same order and uses the same learning rate, batch size and decay.
"""
from __future__ import annotations

import platform
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drivers.backend import ChipBackend
from hil.config import Holdout, TorchExperimentConfig
from hil.device_pairs import load_bad_devices
from hil.epoch_loop import EpochTrainer, epoch_order, learning_rate
from hil.mnist import Mnist, load_mnist
from hil.recorder import NullRecorder, Recorder
from hil.torch.chip_model import ChipModel
from hil.torch.lenet import build
from hil.torch.optimizer import MixedPrecisionSGD
from hil.training import Dataset

#: Examples per forward pass when testing (bounds memory, not the result).
TEST_CHUNK = 2000


def torch_dataset(m: Mnist, cfg: TorchExperimentConfig) -> Dataset:
    """Images (n, 784) float32 without a bias column; the held-out part is the test set or,
    with `data.holdout: validation`, the last 10,000 training digits (for tuning)."""
    d = cfg.data
    if d.holdout is Holdout.VALIDATION:
        test_x, test_y = m.train_x[50000:], m.train_y[50000:]
    else:
        test_x, test_y = m.test_x, m.test_y
    return Dataset(m.train_x[:d.train_examples], m.train_y[:d.train_examples].astype(np.int64),
                   test_x[:d.test_examples], test_y[:d.test_examples].astype(np.int64))


def initial_model(cfg: TorchExperimentConfig) -> nn.Module:
    """The network with its initial weights, the same for the chip and the baseline."""
    return build(cfg.model, cfg.seed)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    correct = 0
    with torch.no_grad():
        for s in range(0, x.shape[0], TEST_CHUNK):
            out = model(torch.from_numpy(x[s:s + TEST_CHUNK]))
            correct += int((out.argmax(1).numpy() == y[s:s + TEST_CHUNK]).sum())
    return correct / x.shape[0]


def _loss(model: nn.Module, xb: np.ndarray, yb: np.ndarray) -> Tuple[torch.Tensor, int]:
    """Mean softmax cross-entropy of the batch, and how many it classified right."""
    out = model(torch.from_numpy(xb))
    target = torch.from_numpy(yb)
    loss = F.cross_entropy(out, target)
    return loss, int((out.argmax(1) == target).sum())


class TorchTrainer(EpochTrainer):
    """One run of a torch model on one chip: every weight and bias a device pair, updated
    by the mixed-precision core through MixedPrecisionSGD."""

    def __init__(self, cfg: TorchExperimentConfig, backend: ChipBackend,
                 recorder: Optional[Recorder] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.recorder = recorder or NullRecorder()
        self.model = initial_model(cfg)
        opt, tr = cfg.optimizer, cfg.training
        self.chip = ChipModel(
            self.model, backend, self.recorder, beta=list(opt.beta),
            biases_on_chip=cfg.model.biases_on_chip, epsilon_us=opt.epsilon_us,
            max_pulses=opt.max_pulses_per_update, chi_update=opt.chi_update,
            refresh=opt.refresh, skip_saturated=opt.skip_saturated,
            device_model=cfg.chip.model,
            start_address=cfg.mapping.start_address,
            bad_devices=load_bad_devices(cfg.mapping.bad_devices,
                                         cfg.mapping.bad_devices_file),
            full_read_every_steps=tr.full_read_every_steps, matvec=tr.matvec,
            matvec_read_v=tr.matvec_read_v)
        self.io, self.core = self.chip.io, self.chip.core
        self.optimizer = MixedPrecisionSGD(self.chip, opt.learning_rate)
        host = self.chip.host_parameters()   # biases when model.biases_on_chip is false
        self.host_optimizer = torch.optim.SGD(host, opt.learning_rate) if host else None
        self.examples = 0
        self.extra_provenance: Dict[str, Any] = {}

    @property
    def step(self) -> int:
        return self.chip.step

    def initial_targets(self) -> List[np.ndarray]:
        return [b.block_values() for b in self.chip.bindings]

    def initialize(self) -> None:
        t0 = time.perf_counter()
        prov = {"seed": self.cfg.seed, "chip_seed": self.cfg.chip_seed,
                "host": platform.node(), "python": platform.python_version(),
                "numpy": np.__version__, **self.extra_provenance}
        self.chip.program(config=self.cfg.to_dict(), provenance=prov)   # snapshots step 0
        self.train_seconds += time.perf_counter() - t0

    def train_step(self, xb: np.ndarray, yb: np.ndarray, lr: float) -> tuple:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad()
        loss, correct = _loss(self.model, xb, yb)
        loss.backward()
        if self.host_optimizer is not None:
            self.host_optimizer.param_groups[0]["lr"] = lr
            self.host_optimizer.step()
            self.host_optimizer.zero_grad()
        self.optimizer.step()
        self.examples += xb.shape[0]
        report = self.optimizer.last
        return loss.item() * xb.shape[0], correct, report.pulses, report.refreshed

    def test_accuracy(self, data: Dataset) -> float:
        with self.chip.host_forward():
            return accuracy(self.model, data.test_x, data.test_y)

    @property
    def matvec_commands(self) -> int:
        return self.chip.matvec_commands

    def preflight_matvec(self, guard: Any) -> None:
        self.chip.preflight_matvec(guard)


class TorchBaseline:
    """The fp32 baseline: the same network, initial weights, data order and learning rate
    (or `training.baseline_learning_rate`), trained by plain torch SGD."""

    def __init__(self, cfg: TorchExperimentConfig) -> None:
        self.cfg = cfg
        self.model = initial_model(cfg)
        self.optimizer = torch.optim.SGD(self.model.parameters(), cfg.optimizer.learning_rate)

    def train_epoch(self, data: Dataset, epoch: int) -> float:
        self.optimizer.param_groups[0]["lr"] = learning_rate(self.cfg, epoch, baseline=True)
        order = epoch_order(self.cfg.seed, epoch, data.train_x.shape[0])
        bs = self.cfg.optimizer.batch_size
        for s in range(0, order.size, bs):
            idx = order[s:s + bs]
            self.optimizer.zero_grad()
            loss, _ = _loss(self.model, data.train_x[idx], data.train_y[idx])
            loss.backward()
            self.optimizer.step()
        return accuracy(self.model, data.test_x, data.test_y)


def torch_trainers(cfg: TorchExperimentConfig, backend: ChipBackend,
                   recorder: Optional[Recorder], data: Optional[Any]
                   ) -> Tuple[TorchTrainer, Optional[TorchBaseline], Dataset]:
    """What hil.epoch_loop.run_epochs needs for a torch run: the trainer, the baseline (or
    None) and the data (`data`: an Mnist to take it from, default the configured source)."""
    m = load_mnist(cfg.data.source) if data is None else data
    if not isinstance(m, Mnist):
        raise TypeError(f"a torch experiment takes its data as an Mnist, got "
                        f"{type(m).__name__}")
    trainer = TorchTrainer(cfg, backend, recorder)
    baseline = TorchBaseline(cfg) if cfg.training.baseline else None
    return trainer, baseline, torch_dataset(m, cfg)
