"""What the LSTM and GAN experiments share on top of hil.torch: the chip model a config
describes, its optimizers, the bookkeeping between steps and the run summary.

A step of these experiments is one optimizer step on the chip (the GAN takes two per batch:
the discriminator's, then the generator's). Their fp32 counterparts start from the same
initial weights, see the same data in the same order and use the same optimizer without the
chip: plain SGD at the same learning rate, because the chip's optimizer is plain SGD
(χ += −η·∂L/∂W, hil.torch.MixedPrecisionSGD).
"""
from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from drivers.backend import ChipBackend
from hil.config import AnyExperimentConfig
from hil.device_pairs import load_bad_devices
from hil.epoch_loop import EpochTrainer, run_counters
from hil.recorder import NullRecorder, Recorder
from hil.run_control import RunControl
from hil.torch.chip_model import ChipModel, StepReport
from hil.torch.optimizer import MixedPrecisionSGD

if TYPE_CHECKING:
    from hil.monitors import Monitor


class ChipTraining:
    """`model` on the chip as `cfg` says (every weight matrix a block, β per block from
    `optimizer.beta`), MixedPrecisionSGD for the on-chip parameters and plain SGD at the
    same rate for those left on the host."""

    def __init__(self, cfg: AnyExperimentConfig, model: nn.Module, backend: ChipBackend,
                 recorder: Recorder, biases_on_chip: bool) -> None:
        opt, tr, mp = cfg.optimizer, cfg.training, cfg.mapping
        self.cfg = cfg
        self.chip = ChipModel(
            model, backend, recorder, beta=list(opt.beta), biases_on_chip=biases_on_chip,
            epsilon_us=opt.epsilon_us, max_pulses=opt.max_pulses_per_update,
            chi_update=opt.chi_update, refresh=opt.refresh, skip_saturated=opt.skip_saturated,
            device_model=cfg.chip.model,
            start_address=mp.start_address,
            bad_devices=load_bad_devices(mp.bad_devices, mp.bad_devices_file),
            full_read_every_steps=tr.full_read_every_steps, matvec=tr.matvec,
            matvec_read_v=tr.matvec_read_v)
        self.optimizer = MixedPrecisionSGD(self.chip, opt.learning_rate)
        host = self.chip.host_parameters()
        self.host_optimizer = torch.optim.SGD(host, opt.learning_rate) if host else None

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()
        if self.host_optimizer is not None:
            self.host_optimizer.zero_grad()

    def step(self, lr: float) -> StepReport:
        """One update from the gradients the parameters hold: host parameters by SGD, the
        chip's by the mixed-precision core (parameters without a gradient are left alone)."""
        self.optimizer.param_groups[0]["lr"] = lr
        if self.host_optimizer is not None:
            self.host_optimizer.param_groups[0]["lr"] = lr
            self.host_optimizer.step()
        self.optimizer.step()
        return self.optimizer.last

    def initial_targets(self) -> List[np.ndarray]:
        """The blocks `program` will write (the model's weights now), for the pre-flight."""
        return [b.block_values() for b in self.chip.bindings]

    def program(self, extra_provenance: Dict[str, Any]) -> float:
        """Start the log and program the model's weights; returns the seconds it took."""
        t0 = time.perf_counter()
        cfg = self.cfg
        prov = {"seed": cfg.seed, "chip_seed": cfg.chip_seed, "host": platform.node(),
                "python": platform.python_version(), "numpy": np.__version__,
                **extra_provenance}
        self.chip.program(config=cfg.to_dict(), provenance=prov)
        return time.perf_counter() - t0



class TorchEpochTrainer(EpochTrainer):
    """What every hil.torch experiment's trainer shares: one ChipTraining over its module, the
    step count of its chip model, and its initial programming. Subclasses give the epoch."""

    def __init__(self, cfg: AnyExperimentConfig, module: nn.Module, backend: ChipBackend,
                 recorder: Optional[Recorder], biases_on_chip: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.recorder = recorder or NullRecorder()
        self.training = ChipTraining(cfg, module, backend, self.recorder, biases_on_chip)
        self.chip = self.training.chip
        self.io, self.core = self.chip.io, self.chip.core
        self.examples = 0
        self.extra_provenance: Dict[str, Any] = {}

    @property
    def step(self) -> int:
        return self.chip.step

    def initial_targets(self) -> List[np.ndarray]:
        return self.training.initial_targets()

    def initialize(self) -> None:
        self.train_seconds += self.training.program(self.extra_provenance)

    def preflight_matvec(self, guard: Any) -> None:
        self.chip.preflight_matvec(guard)


def drop_gradients(params: Sequence[nn.Parameter]) -> None:
    """Forget the gradients of `params`, so the next step leaves them alone (the GAN's
    generator step must not move the discriminator its loss went through)."""
    for p in params:
        p.grad = None


def between_steps(trainer: Any, metrics: Dict[str, Any], snapshot_from: int,
                  control: Optional[RunControl], monitor: "Monitor | None") -> None:
    """What the MLP trainer does after each step: log the step's metrics, take the snapshot
    due since step `snapshot_from`, poll the monitors, honour the stop flag."""
    trainer.recorder.on_step_metrics(trainer.step, metrics)
    every = trainer.cfg.log.snapshot_every_steps
    if every and trainer.step // every > snapshot_from // every:
        trainer.record_snapshot()
    if monitor is not None:
        from hil.monitors import poll_between_steps
        poll_between_steps(monitor, trainer.step, trainer.recorder, control)
    if control is not None:
        control.check(trainer.step)


def chip_summary(cfg: AnyExperimentConfig, trainer: Any, epochs: List[Any],
                 train_seconds: float) -> Dict[str, Any]:
    """The counters of every chip run (hil.epoch_loop.run_counters), the update SET pulses per
    epoch, and `programming_reduction` against programming every weight at every step."""
    out = run_counters(cfg, trainer, epochs, train_seconds)
    out.update(set_pulses_per_epoch=out["update_set_pulses"] / max(1, len(epochs)),
               programming_reduction=(trainer.core.n_weights * trainer.step
                                      / max(1, out["update_set_pulses"])))
    return out
