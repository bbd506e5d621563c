"""The training loop every chip experiment shares: epochs of seeded steps, progress, the
stop flag and monitors between steps, snapshots, the fp32 baseline beside the chip, and the
summary fields every run has. The MLP (hil.training), the torch models (hil.torch), the
LSTM and the GAN each give a trainer; this module drives it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from drivers.backend import ChipBackend
from drivers.errors import ConfigError, SafetyLimitError
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil.chip_io import ChipIO
from hil.config import AnyExperimentConfig, LrSchedule
from hil.mixed_precision import MixedPrecisionCore
from hil.pulse_stats import PulseTotals
from hil.recorder import Recorder
from hil.run_control import RunAborted, RunControl, recorded_run
from hil.trainer_state import StateLayout, TrainerState

if TYPE_CHECKING:
    from hil.monitors import Monitor


class TrainingData(Protocol):
    """What the loop reads of a data set: the training examples and their labels (each
    trainer reads the rest, its test and validation sets, itself)."""

    train_x: np.ndarray
    train_y: np.ndarray


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of an epoch: a pure function of (seed, epoch), shared with the
    baseline so both see the same data in the same order."""
    return np.random.default_rng([seed, 1, epoch]).permutation(n)


def learning_rate(cfg: AnyExperimentConfig, epoch: int, baseline: bool = False) -> float:
    """η of an epoch (counted from 0): exponential learning_rate · lr_decay^epoch, the power
    as repeated products (`**` calls the C library's pow(), whose last bit differs between
    libraries), or inverse learning_rate / (1 + epoch) (one IEEE division). For the fp32
    `baseline`, `training.baseline_learning_rate` where the config gives one."""
    opt = cfg.optimizer
    eta = opt.learning_rate
    if baseline and cfg.training.baseline_learning_rate is not None:
        eta = cfg.training.baseline_learning_rate
    if opt.lr_schedule is LrSchedule.INVERSE:
        return eta / (1 + epoch)
    decay = 1.0
    for _ in range(epoch):
        decay *= opt.lr_decay
    return eta * decay


@dataclass
class EpochResult:
    """One epoch's figures; those that are None are not reported (the fields after
    `baseline_test_accuracy` exist from config format 2 on)."""

    epoch: int
    train_accuracy: float
    train_loss: float
    test_accuracy: float
    set_pulses: int          # every SET pulse of the epoch (updates and refreshes)
    refreshes: int
    seconds: float
    baseline_test_accuracy: Optional[float] = None
    validation_accuracy: Optional[float] = None
    baseline_validation_accuracy: Optional[float] = None
    update_set_pulses: Optional[int] = None
    refresh_set_pulses: Optional[int] = None
    reset_pulses: Optional[int] = None
    pairs_refreshed: Optional[int] = None
    max_pair_refreshes: Optional[int] = None
    top100_pulse_share: Optional[float] = None
    max_weight_pulses: Optional[int] = None
    active_inputs: Optional[int] = None          # non-zero inputs of the epoch's examples
    mean_conductance_us: Optional[float] = None  # of the mapped devices, at the epoch's end

    def metrics(self) -> Dict[str, Any]:
        """The epoch's metrics for the recorder (those that were measured)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def set_baseline(self, value: "float | BaselineEpoch") -> None:
        """What the fp32 baseline's `train_epoch` returned for this epoch: its test accuracy,
        or the MLP baseline's BaselineEpoch."""
        if isinstance(value, BaselineEpoch):
            self.baseline_test_accuracy = value.test_accuracy
            self.baseline_validation_accuracy = value.validation_accuracy
        else:
            self.baseline_test_accuracy = value

    def describe(self, total: int) -> str:
        """The epoch's line for the operator."""
        val = "" if self.validation_accuracy is None else \
            f"  val {100 * self.validation_accuracy:6.2f}%"
        base = "" if self.baseline_test_accuracy is None else \
            f"  baseline {100 * self.baseline_test_accuracy:6.2f}%"
        if self.baseline_validation_accuracy is not None:
            base += f" (val {100 * self.baseline_validation_accuracy:6.2f}%)"
        return (f"epoch {self.epoch + 1:>3}/{total}  train {100 * self.train_accuracy:6.2f}%"
                f"{val}  test {100 * self.test_accuracy:6.2f}%{base}  SET pulses "
                f"{self.set_pulses:>9,}  refreshes {self.refreshes:>7,}  {self.seconds:6.1f} s")


@dataclass
class EpochProgress:
    """Where the trainer is in its epochs: the next example is `position` in the order of
    epoch `epoch`, and the sums are those of the epoch so far (part of the trainer state, so
    a run restarted from a snapshot in the middle of an epoch ends it as the first run did).
    """

    epoch: int = 0
    position: int = 0
    loss_sum: float = 0.0
    correct_sum: int = 0
    set_pulses_before: int = 0     # the SET pulse counter when the epoch began
    refreshes_before: int = 0      # the refresh counter when the epoch began
    wall_seconds: float = 0.0      # time this epoch trained before the trainer (re)started it
    wall_started: float = field(default_factory=time.perf_counter)
    #: the core's pulse totals and the trainer's non-zero input count when the epoch began
    totals_before: PulseTotals = field(default_factory=PulseTotals)
    active_before: int = 0


class EpochTrainer:
    """The training loop every experiment shares: epochs of steps in the seeded order, step
    metrics, snapshots, progress, monitors and the stop flag between steps, a full read and
    a test after each epoch; where it stands (`progress`, the finished `epoch_results`,
    `train_seconds`), the pre-flight against the station's limits and, for a trainer that
    declares a state record (`state_layout`), snapshots of its whole state. Subclasses give
    `train_step`, `test_accuracy`, `initialize` and `initial_targets`, call
    `EpochTrainer.__init__`, and own `cfg`, `recorder`, `io` (ChipIO), `core` (the
    mixed-precision core), `step` and `examples`."""

    cfg: Any
    recorder: Recorder
    io: ChipIO
    core: MixedPrecisionCore
    step: int
    examples: int

    def __init__(self) -> None:
        self.progress = EpochProgress()
        self.epoch_results: List[EpochResult] = []     # the epochs finished, in order
        self.train_seconds = 0.0                        # initial programming and epochs
        #: the fp32 software baseline (or None), trained epoch by epoch beside the chip's
        self.baseline: Any = None
        self.active_inputs = 0      # non-zero inputs of every example trained on (the MLP's)

    def train_step(self, xb: np.ndarray, yb: np.ndarray, lr: float) -> tuple:
        """One weight update: (summed loss, correct predictions, SET pulses, refreshes)."""
        raise NotImplementedError

    def test_accuracy(self, data: Any) -> float:
        """Accuracy on the held-out examples from the weights in the conductance cache."""
        raise NotImplementedError

    def initialize(self) -> None:
        """Start the log and program the initial weights (step 0), adding the time it took
        to `train_seconds`, and take the first snapshot."""
        raise NotImplementedError

    def initial_targets(self) -> Sequence[np.ndarray]:
        """The weights `initialize` will program, one array per block (for the pre-flight)."""
        raise NotImplementedError

    @property
    def refreshes(self) -> int:
        return self.core.refreshes

    def progress_total(self, data: Any) -> int:
        """What an epoch's progress bar counts up to (examples here)."""
        return data.train_x.shape[0]

    def summary(self, epochs: List["EpochResult"], train_seconds: float) -> Dict[str, Any]:
        """The run summary (docs/training.md lists its fields)."""
        return run_summary(self.cfg, self, epochs, train_seconds)

    @property
    def matvec_commands(self) -> int:
        return 0

    def state_digest(self) -> str:
        return self.core.state_digest()

    # --- before the first command -----------------------------------------------------------
    def preflight(self) -> None:
        """Check what the experiment will send against the station's limits before its
        first command (nothing is sent; SafetyLimitError names the limit and the setting
        that exceeds it). The initial programming is checked command for command, as it
        will go out; for training steps, what the config fixes: the pulse shapes, the
        longest pulse train to one device (an update's cap, a refresh's re-programming),
        and what `preflight_matvec` adds. What depends on the data - a step's pulse total -
        is checked before each command of the step (hil.chip_io)."""
        guard = self.io.guard
        if guard is None:
            return
        limits = guard.station_limits
        addr = self.core.pairs.addresses
        guard.check_program(addr, np.ones(addr.size, np.int64), DEFAULT_RESET)
        devices, counts, _ = self.core.initial_programming(self.initial_targets())
        if devices.size:
            guard.check_program(devices, counts, DEFAULT_SET)
        guard.check_read(addr)
        limits.check_pulse(DEFAULT_SET, "PROGRAM_SET")   # every update and refresh SET
        longest = [(self.cfg.optimizer.max_pulses_per_update,
                    "an update (optimizer.max_pulses_per_update)")]
        if self.cfg.optimizer.refresh.period_steps:
            longest.append((self.core.most_refresh_pulses,
                            "a refresh's re-programming (the blind-programming table; "
                            "optimizer.refresh)"))
        for n, what in longest:
            if n > limits.max_pulses_per_device:
                raise SafetyLimitError(f"{what} may send {n} pulses to one device, more than "
                                       "safety.max_pulses_per_device = "
                                       f"{limits.max_pulses_per_device}",
                                       command="PROGRAM_SET")
        self.preflight_matvec(guard)

    def preflight_matvec(self, guard: Any) -> None:
        """Check the on-chip MATVECs a step will send (none by default)."""

    # --- the state record (hil.trainer_state) ----------------------------------------------
    def state_layout(self) -> Optional[StateLayout]:
        """The trainer's state record, or None: a trainer without one snapshots the core's
        conductances and χ only, and its logs verify serially."""
        return None

    def capture_state(self) -> TrainerState:
        """The trainer's full state now (after step `self.step`)."""
        raise NotImplementedError(f"{type(self).__name__} declares no state record")

    def record_snapshot(self) -> None:
        """Hand the recorder a snapshot: the trainer's full state where it declares a state
        record, else the core's conductances and χ."""
        if self.state_layout() is None:
            self.core.record_snapshot(self.step)
        else:
            self.recorder.on_state_snapshot(self.capture_state())

    # --- epochs ---------------------------------------------------------------------------
    def train_epoch(self, data: TrainingData, epoch: int,
                    on_progress: Callable[[int], None] | None = None,
                    control: RunControl | None = None,
                    monitor: "Monitor | None" = None) -> EpochResult:
        """Train epoch `epoch` (from where `progress` stands when it is in that epoch: a
        trainer restored from a snapshot taken in the middle of it), then read every device
        and test."""
        p = self.progress
        if p.epoch != epoch or p.position == 0:
            p = self.progress = self._new_progress(epoch)
        p.wall_started = time.perf_counter()
        lr = learning_rate(self.cfg, epoch)
        order = epoch_order(self.cfg.seed, epoch, data.train_x.shape[0])
        bs = self.cfg.optimizer.batch_size
        rec = self.recorder
        snap_every = self.cfg.log.snapshot_every_steps
        for s in range(p.position, order.size, bs):
            idx = order[s:s + bs]
            loss, correct, pulses, refreshed = self.train_step(data.train_x[idx],
                                                               data.train_y[idx], lr)
            p.loss_sum += loss
            p.correct_sum += correct
            p.position = s + idx.size
            rec.on_step_metrics(self.step, {"epoch": epoch, "loss": loss, "correct": correct,
                                            "examples": idx.size, "set_pulses": pulses,
                                            "refreshes": refreshed})
            if snap_every and self.step % snap_every == 0:
                self.record_snapshot()
            if on_progress is not None and self.step % 100 == 0:
                on_progress(min(s + bs, order.size))
            if monitor is not None:
                from hil.monitors import poll_between_steps
                poll_between_steps(monitor, self.step, self.recorder, control)
            if control is not None:
                control.check(self.step)
        self.core.full_read()
        test_acc = self.test_accuracy(data)
        return EpochResult(epoch, p.correct_sum / order.size, p.loss_sum / order.size,
                           test_acc, self.io.counters.set_pulses - p.set_pulses_before,
                           self.refreshes - p.refreshes_before,
                           p.wall_seconds + time.perf_counter() - p.wall_started)

    def finish_epoch(self, result: EpochResult) -> None:
        """Keep a finished epoch's result (the baseline's accuracy filled in, if trained)
        and move on to the next epoch."""
        self.epoch_results.append(result)
        self.train_seconds += result.seconds
        self.progress = self._new_progress(result.epoch + 1)

    def _new_progress(self, epoch: int) -> EpochProgress:
        """The start of epoch `epoch`: its sums at zero, the counters where they stand."""
        return EpochProgress(epoch, 0, 0.0, 0, self.io.counters.set_pulses, self.refreshes,
                             totals_before=self.core.totals.copy(),
                             active_before=self.active_inputs)


@dataclass(frozen=True)
class BaselineEpoch:
    """What an epoch of the MLP's fp32 baseline scored (validation: None without a
    validation set)."""

    test_accuracy: float
    validation_accuracy: Optional[float] = None


def run_epochs(trainer: EpochTrainer, data: TrainingData, backend: ChipBackend,
               progress: bool = False, report: Callable[[EpochResult], None] | None = None,
               control: RunControl | None = None,
               monitor: "Monitor | None" = None,
               start: TrainerState | None = None) -> Dict[str, Any]:
    """A whole run of `trainer` (and its fp32 `baseline`, if any, epoch by epoch): the
    pre-flight, then from initial programming (or the state record `start`) to the final
    snapshot and summary, ended by `recorded_run`."""
    cfg, recorder = trainer.cfg, trainer.recorder
    n_train = trainer.progress_total(data)
    with recorded_run(recorder, backend, lambda: trainer.step) as end:
        trainer.preflight()
        if control is not None and control.stop_requested:   # asked while loading the data
            raise RunAborted(f"{control.reason} before the first command", started=False)
        if start is None:
            trainer.initialize()
        else:
            if trainer.state_layout() is None:
                raise ConfigError(f"{type(trainer).__name__} declares no state record: its "
                                  "run cannot start from a snapshot")
            trainer.resume_from(start)
        first = trainer.progress.epoch
        for epoch in range(first, cfg.training.epochs):
            bar = progress_bar(progress, n_train, f"epoch {epoch + 1}/{cfg.training.epochs}")
            if bar and epoch == first:
                bar.to(trainer.progress.position)
            res = trainer.train_epoch(data, epoch, bar.to if bar else None, control, monitor)
            if bar:
                bar.close()
            if trainer.baseline is not None:
                res.set_baseline(trainer.baseline.train_epoch(data, epoch))
            trainer.finish_epoch(res)
            recorder.on_epoch_metrics(epoch, res.metrics())
            if report:
                report(res)
        if start is None or first < cfg.training.epochs:
            trainer.record_snapshot()   # the final one (unless the run started from it)
        end.summary = trainer.summary(trainer.epoch_results, trainer.train_seconds)
    return end.summary  # type: ignore[return-value]


class ProgressBar:
    """An epoch's progress bar (tqdm): `to(done)` moves it to `done` examples."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm
        self.total = total
        self.done = 0
        self._bar = tqdm(total=total, desc=desc, unit="ex", mininterval=1.0, leave=False)

    def to(self, done: int) -> None:
        self._bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        self.to(self.total)
        self._bar.close()


def progress_bar(enabled: bool, total: int, desc: str) -> Optional[ProgressBar]:
    return ProgressBar(total, desc) if enabled else None


def run_counters(cfg: AnyExperimentConfig, trainer: EpochTrainer, epochs: List[Any],
                 train_seconds: float) -> Dict[str, Any]:
    """The summary fields every chip run has, whatever it is scored by."""
    c = trainer.io.counters
    examples = trainer.examples
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        "backend": cfg.chip.backend,
        "epochs": len(epochs),
        "examples": examples,
        "steps": trainer.step,
        "weights": trainer.core.n_weights,
        "devices": trainer.core.pairs.n_devices,
        "set_pulses": c.set_pulses,
        "reset_pulses": c.reset_pulses,
        "update_set_pulses": int(sum(e.set_pulses for e in epochs)),
        "refreshes": trainer.refreshes,
        "program_commands": c.program_commands,
        "read_commands": c.read_commands,
        "matvec_commands": trainer.matvec_commands,
        "devices_read": c.devices_read,
        "io": dict(c.__dict__),
        "train_seconds": train_seconds,
        "examples_per_s": examples / train_seconds if train_seconds else None,
        "per_epoch": [{k: v for k, v in e.__dict__.items()} for e in epochs],
        "state_digest": trainer.state_digest(),
    }


def run_summary(cfg: AnyExperimentConfig, trainer: EpochTrainer, epochs: List[EpochResult],
                train_seconds: float) -> Dict[str, Any]:
    """The run summary (docs/training.md lists its fields)."""
    out = run_counters(cfg, trainer, epochs, train_seconds)
    last = epochs[-1]
    out.update(test_accuracy=last.test_accuracy, train_accuracy=last.train_accuracy,
               programming_reduction=(trainer.core.n_weights * trainer.examples
                                      / max(1, out["update_set_pulses"])))
    if last.baseline_test_accuracy is not None:
        out["baseline_test_accuracy"] = last.baseline_test_accuracy
        out["accuracy_gap"] = last.baseline_test_accuracy - last.test_accuracy
    return out
