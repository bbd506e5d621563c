"""Mixed-precision training of an MLP on a PCM chip (Nandakumar et al. 2020).

The host does forward and backward passes in fp32 from the weights W = β(G+ - G-) it has
read off the chip (or, in matvec=chip mode, has the chip compute the weighted sums) and
hands the updates to the mixed-precision core (hil.mixed_precision), which keeps them in χ
and sends one batched SET command per step for all the pulses χ calls for, followed by one
read-back of exactly those devices, plus refreshes when due. Each layer is one weight block
(n_in + 1, n_out), bias row last. All chip I/O goes through ChipIO, so the run log sees
everything.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from drivers import portable_math as pm
from drivers.backend import Capability, ChipBackend
from drivers.errors import ConfigError, SafetyLimitError
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil import network
from hil.chip_io import ChipIO
from hil.chip_matvec import ChipMatvec
from hil.config import (AnyExperimentConfig, CharLstmExperimentConfig, ExperimentConfig,
                        GanExperimentConfig, InitProgramming, LrSchedule, MatvecMode,
                        TorchExperimentConfig)
from hil.device_pairs import DevicePairMap, WeightBlock, allocate_pairs, load_bad_devices
from hil.mixed_precision import InitVerify, MixedPrecisionCore
from hil.mnist import Mnist, load_mnist
from hil.pulse_stats import PULSE_TOTAL_KEYS, PulseDistribution, PulseTotals
from hil.recorder import NullRecorder, Recorder
from hil.run_control import RunAborted, RunControl, recorded_run
from hil.run_history import start_provenance
from hil.trainer_state import StateField, StateLayout, StateMismatch, TrainerState

if TYPE_CHECKING:
    from hil.energy import EnergyTable
    from hil.monitors import Monitor

log = logging.getLogger("pcm_hil.training")
F32 = np.float32


@dataclass
class Dataset:
    """Train, validation and test arrays with the bias column added."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None

    @classmethod
    def from_mnist(cls, m: Mnist, n_train: int, n_test: int,
                   n_validation: int = 0) -> "Dataset":
        """Validation: the last `n_validation` of the training digits (the standard 50k/10k
        split for 10,000); training: the first `n_train` of the rest."""
        tr, va = split_indices(m.train_x.shape[0], n_train, n_validation)
        return cls(network.add_bias(m.train_x[tr]), m.train_y[tr].astype(np.int64),
                   network.add_bias(m.test_x[:n_test]), m.test_y[:n_test].astype(np.int64),
                   network.add_bias(m.train_x[va]), m.train_y[va].astype(np.int64))

    @property
    def n_validation(self) -> int:
        return 0 if self.val_x is None else int(self.val_x.shape[0])

    def head(self, n_train: int, n_test: int, n_validation: int = 0) -> "Dataset":
        """The examples the config's data section asks for: the first of the training and
        test sets, and the LAST `n_validation` of the validation set, which are the last
        of the training digits, as `from_mnist` holds them out: a run given a larger data
        set validates on the digits a run that loads its own would."""
        if n_validation > self.n_validation:
            raise ConfigError(f"{n_validation:,} validation examples asked for, the data set "
                              f"given holds {self.n_validation:,}",
                              key="data.validation_examples")
        val = (self.val_x[-n_validation:], self.val_y[-n_validation:]) if n_validation \
            else (None, None)
        return Dataset(self.train_x[:n_train], self.train_y[:n_train], self.test_x[:n_test],
                       self.test_y[:n_test], *val)


def split_indices(n_digits: int, n_train: int, n_validation: int
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Indices into the training digits: the first n_train of those not held out, and the
    held-out last n_validation."""
    if n_train + n_validation > n_digits:
        raise ConfigError(f"{n_train:,} training and {n_validation:,} validation examples "
                          f"need {n_train + n_validation:,} digits, there are {n_digits:,}",
                          key="data.train_examples")
    return (np.arange(n_train, dtype=np.int64),
            np.arange(n_digits - n_validation, n_digits, dtype=np.int64))


def load_dataset(cfg: ExperimentConfig) -> Dataset:
    return Dataset.from_mnist(load_mnist(cfg.data.source), cfg.data.train_examples,
                              cfg.data.test_examples, cfg.data.validation_examples)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of an epoch: a pure function of (seed, epoch), shared with the
    baseline so both see the same data in the same order."""
    return np.random.default_rng([seed, 1, epoch]).permutation(n)


def learning_rate(cfg: AnyExperimentConfig, epoch: int) -> float:
    """η of an epoch (counted from 0): exponential learning_rate · lr_decay^epoch, the power
    as repeated products (`**` calls the C library's pow(), whose last bit differs between
    libraries), or inverse learning_rate / (1 + epoch) (one IEEE division)."""
    opt = cfg.optimizer
    if opt.lr_schedule is LrSchedule.INVERSE:
        return opt.learning_rate / (1 + epoch)
    decay = 1.0
    for _ in range(epoch):
        decay *= opt.lr_decay
    return opt.learning_rate * decay


def initial_weights(cfg: ExperimentConfig) -> List[np.ndarray]:
    return network.init_weights(cfg.network.layers, cfg.network.init_range,
                                np.random.default_rng([cfg.seed, 0]))


def weight_blocks(cfg: ExperimentConfig) -> List[WeightBlock]:
    """The MLP's layers as weight blocks: layer l is (n_in + 1, n_out), bias row last."""
    sizes = cfg.network.layers
    return [WeightBlock(f"layer{i}", (n_in + 1, n_out), beta)
            for i, (n_in, n_out, beta) in enumerate(zip(sizes[:-1], sizes[1:],
                                                        cfg.optimizer.beta))]


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


#: The MLP trainer's state record (hil.trainer_state, docs/run-log.md "Trainer state"). Bump
#: the version when a field changes meaning; a log whose record differs from the trainer's
#: (other fields, another version) verifies serially.
STATE_KIND = "mlp"
STATE_VERSION = 2


class ChipMatmul(network.HostMatmul):
    """The MLP's weighted sums computed by the chip (hil.chip_matvec): forward sums run
    along a layer's inputs, backward ones along its outputs (the crossbar driven from the
    other side), as on a real array."""

    def __init__(self, trainer: "MixedPrecisionTrainer") -> None:
        super().__init__(trainer.weights)
        self.trainer = trainer
        self.matvec = ChipMatvec(trainer.io, trainer.chip_info,
                                 trainer.cfg.training.matvec_read_v)

    def _diff(self, plus: np.ndarray, minus: np.ndarray, x: np.ndarray,
              beta: F32) -> np.ndarray:
        return self.matvec.weighted_sums(plus, minus, x, beta)

    def forward(self, layer: int, a_in: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        pairs, beta = self._block(layer)
        p, m = (pairs.plus, pairs.minus) if rows is None else (pairs.plus[rows],
                                                               pairs.minus[rows])
        return self._diff(p.T, m.T, a_in.T, beta).T

    def backward(self, layer: int, delta: np.ndarray) -> np.ndarray:
        pairs, beta = self._block(layer)
        return self._diff(pairs.plus[:-1], pairs.minus[:-1], delta.T, beta).T

    def _block(self, layer: int):
        core = self.trainer.core
        return core.pairs.blocks[layer], core.cache.blocks[layer].beta


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

    def test_accuracy(self, data: Dataset) -> float:
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
    def train_epoch(self, data: Dataset, epoch: int,
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


class MixedPrecisionTrainer(EpochTrainer):
    """One training run of the MLP on one chip, through the mixed-precision core.

    Use `run()`, or drive `initialize`/`train_epoch`."""

    def __init__(self, cfg: ExperimentConfig, backend: ChipBackend,
                 recorder: Recorder | None = None) -> None:
        self.cfg = cfg
        self.backend = backend
        self.recorder = recorder or NullRecorder()
        self.io = ChipIO(backend, self.recorder)
        self.chip_info = backend.info()
        bad = load_bad_devices(cfg.mapping.bad_devices, cfg.mapping.bad_devices_file)
        self.mapping: DevicePairMap = allocate_pairs(weight_blocks(cfg),
                                                     self.chip_info.geometry,
                                                     cfg.mapping.start_address, bad)
        from sim_backend.pcm_model import PcmModel
        opt = cfg.optimizer
        self.core = MixedPrecisionCore(
            self.io, self.mapping, PcmModel.load(cfg.chip.model),   # the host's device model
            epsilon_us=opt.epsilon_us, max_pulses=opt.max_pulses_per_update,
            chi_update=opt.chi_update, refresh=opt.refresh, skip_saturated=opt.skip_saturated)
        #: the weights W = β(G+ - G-) from the conductance cache, one array per layer
        self.weights: List[np.ndarray] = self.core.weights
        self.extra_provenance: Dict[str, Any] = {}
        #: per layer, how far initial programming left the weights from their targets
        self.init_error: List[Dict[str, float]] = []
        #: the per-operation energies of the summary's estimate (None: the packaged table)
        self.energy_table: "EnergyTable | None" = None
        self.step = 0
        self.examples = 0
        super().__init__()
        self.baseline = BaselineTrainer(cfg) if cfg.training.baseline else None
        #: one per run: it keeps its scratch
        self._matmul: network.HostMatmul = network.HostMatmul(self.weights)
        if cfg.training.matvec is MatvecMode.CHIP:
            if not self.chip_info.supports(Capability.MATVEC):
                raise ConfigError("the backend has no on-chip matvec", key="training.matvec")
            self._matmul = ChipMatmul(self)
        self._state_layout: StateLayout | None = None

    # --- set-up ---------------------------------------------------------------------------
    def provenance(self) -> Dict[str, Any]:
        """What the log records about the run's origin; asked before its first command, so
        it holds where the chip's history stood when the run began (a resume checks the
        chip against it, hil.run_history)."""
        return {"chip": self.chip_info.to_dict(), "seed": self.cfg.seed,
                "chip_seed": self.cfg.chip_seed, "host": platform.node(),
                "python": platform.python_version(), "numpy": np.__version__,
                **start_provenance(self.backend), **self.extra_provenance}

    def _begin(self) -> None:
        self.recorder.begin(config=self.cfg.to_dict(), provenance=self.provenance(),
                            layout=self.mapping.layout(), state_layout=self.state_layout())

    def initial_targets(self) -> List[np.ndarray]:
        return initial_weights(self.cfg)

    def preflight_matvec(self, guard: Any) -> None:
        if isinstance(self._matmul, ChipMatmul):
            for pairs in self.core.pairs.blocks:
                block = pairs.plus
                guard.check_matvec(block.T, np.zeros(block.shape[0]))    # forward
                guard.check_matvec(block[:-1], np.zeros(block.shape[1]))  # backward

    def initialize(self) -> None:
        """RESET every mapped device, program the initial weights (blind or verified), read
        everything, and note how far the chip's weights are from the targets."""
        t0 = time.perf_counter()
        self._begin()
        self.io.step = 0
        net = self.cfg.network
        verify = InitVerify(net.init_tolerance_us, net.init_max_rounds) \
            if net.init_programming is InitProgramming.VERIFY else None
        targets = initial_weights(self.cfg)
        self.core.program_initial(targets, verify)
        self.init_error = initial_error(targets, self.weights,
                                        [b.beta for b in self.core.pairs.blocks],
                                        [(c.pulses_plus == 0) & (c.pulses_minus == 0)
                                         for c in self.core.cache.blocks])
        self.train_seconds += time.perf_counter() - t0
        self.record_snapshot()

    def resume_from(self, state: TrainerState) -> None:
        """Start the run where `state` was taken (a snapshot's record) instead of at step 0:
        nothing is sent to the chip; the chip must be where it was then (a replay of the
        log from that snapshot on)."""
        self._begin()
        self.restore_state(state)

    # --- the state record (hil.trainer_state) ----------------------------------------------
    # Everything the trainer keeps between steps is built into the record here and restored
    # from it here, from the parts its components declare (the core, the chip I/O counters)
    # and its own. tests/test_trainer_state.py fails for state kept anywhere else.
    def state_layout(self) -> StateLayout:
        if self._state_layout is None:
            n_epochs = (self.cfg.training.epochs,)
            epochs = [StateField(f"epochs.{f.name}", "<f8", n_epochs,
                                 wall_clock=f.name == "seconds")
                      for f in dataclasses.fields(EpochResult)]
            baseline = [] if self.baseline is None else [
                StateField(f"baseline.layer{i}", "<f4", w.shape)
                for i, w in enumerate(self.baseline.weights)]
            self._state_layout = StateLayout(STATE_KIND, STATE_VERSION, (
                StateField("trainer.step", "<i8"), StateField("trainer.examples", "<i8"),
                StateField("trainer.matvec_commands", "<i8"),
                StateField("trainer.train_seconds", "<f8", wall_clock=True),
                StateField("trainer.active_inputs", "<i8"),
                StateField("trainer.init_error", "<f8", (len(self.core.pairs.blocks),
                                                         len(INIT_ERROR_KEYS))),
                *self.io.state_fields(), *self.core.state_fields(),
                StateField("data.epoch", "<i8"), StateField("data.position", "<i8"),
                StateField("data.loss_sum", "<f8"), StateField("data.correct_sum", "<i8"),
                StateField("data.set_pulses_before", "<i8"),
                StateField("data.refreshes_before", "<i8"),
                StateField("data.wall_seconds", "<f8", wall_clock=True),
                StateField("data.totals_before", "<i8", (len(PULSE_TOTAL_KEYS),)),
                StateField("data.active_before", "<i8"),
                *epochs, *baseline))
        return self._state_layout

    def capture_state(self) -> TrainerState:
        p = self.progress
        values: Dict[str, Any] = {
            "trainer.step": self.step, "trainer.examples": self.examples,
            "trainer.matvec_commands": self.matvec_commands,
            "trainer.train_seconds": self.train_seconds,
            "trainer.active_inputs": self.active_inputs,
            "trainer.init_error": np.array([[e[k] for k in INIT_ERROR_KEYS]
                                            for e in self.init_error], np.float64).reshape(
                                                len(self.core.pairs.blocks),
                                                len(INIT_ERROR_KEYS)),
            **self.io.state_values(), **self.core.state_values(),
            "data.epoch": p.epoch, "data.position": p.position, "data.loss_sum": p.loss_sum,
            "data.correct_sum": p.correct_sum, "data.set_pulses_before": p.set_pulses_before,
            "data.refreshes_before": p.refreshes_before,
            "data.wall_seconds": p.wall_seconds + time.perf_counter() - p.wall_started,
            "data.totals_before": p.totals_before.vector(),
            "data.active_before": p.active_before}
        done = self.epoch_results
        for f in dataclasses.fields(EpochResult):
            col = np.full(self.cfg.training.epochs, np.nan)
            for i, res in enumerate(done):
                v = getattr(res, f.name)
                col[i] = np.nan if v is None else v
            values[f"epochs.{f.name}"] = col
        if self.baseline is not None:
            for i, w in enumerate(self.baseline.weights):
                values[f"baseline.layer{i}"] = w
        return TrainerState.build(self.state_layout(), self.step, self.core.cache_vector(),
                                  self.core.chi_dict(), values)

    def restore_state(self, state: TrainerState) -> None:
        """Become the trainer that `state` was captured from (StateMismatch when the record
        is not this trainer's: another kind, version or set of fields)."""
        diff = state.layout.difference(self.state_layout())
        if diff is not None:
            raise StateMismatch(f"the trainer state is not this trainer's: {diff}")
        self.step = state.int("trainer.step")
        self.examples = state.int("trainer.examples")
        if isinstance(self._matmul, ChipMatmul):
            self._matmul.matvec.commands = state.int("trainer.matvec_commands")
        self.train_seconds = state.float("trainer.train_seconds")
        self.active_inputs = state.int("trainer.active_inputs")
        self.init_error = [{k: float(v) for k, v in zip(INIT_ERROR_KEYS, row)}
                           for row in state["trainer.init_error"]]
        self.io.load_state(state)
        self.core.load_state(state)
        self.progress = EpochProgress(
            state.int("data.epoch"), state.int("data.position"), state.float("data.loss_sum"),
            state.int("data.correct_sum"), state.int("data.set_pulses_before"),
            state.int("data.refreshes_before"), state.float("data.wall_seconds"),
            totals_before=PulseTotals.from_vector(state["data.totals_before"]),
            active_before=state.int("data.active_before"))
        self.epoch_results = []
        for i in range(self.progress.epoch):
            kw = {}
            for f in dataclasses.fields(EpochResult):
                v = float(state[f"epochs.{f.name}"][i])
                kw[f.name] = None if np.isnan(v) else int(v) if "int" in str(f.type) else v
            self.epoch_results.append(EpochResult(**kw))
        if self.baseline is not None:
            for i, w in enumerate(self.baseline.weights):
                w[...] = state[f"baseline.layer{i}"]

    # --- one step ---------------------------------------------------------------------------
    def train_step(self, xb: np.ndarray, yb: np.ndarray, lr: float) -> tuple:
        self.step += 1
        self.io.step = self.step
        core = self.core
        loss, correct, grads = network.train_step(self.weights, xb, yb, lr, self._matmul)
        self.active_inputs += int(np.count_nonzero(xb)) - xb.shape[0]   # bias column left out
        pulses = core.update(grads)
        refreshed = core.refresh() if core.refresh_due(self.step) else 0
        fr = self.cfg.training.full_read_every_steps
        if fr and self.step % fr == 0:
            core.full_read()
        self.examples += xb.shape[0]
        return loss, correct, pulses, refreshed

    def test_accuracy(self, data: Dataset) -> float:
        return network.accuracy(self.weights, data.test_x, data.test_y)

    def train_epoch(self, data: Dataset, epoch: int,
                    on_progress: Callable[[int], None] | None = None,
                    control: RunControl | None = None,
                    monitor: "Monitor | None" = None) -> EpochResult:
        """EpochTrainer's epoch, and from config format 2 on the figures that show where its
        pulses went (by purpose, over the weights), the validation accuracy, the non-zero
        inputs and the mean conductance."""
        res = super().train_epoch(data, epoch, on_progress, control, monitor)
        spread = self.core.counter.take_epoch()
        if self.cfg.config_version >= 2:   # format-1 logs hold none of these metrics
            p = self.progress
            _add_format2_figures(res, self.core.totals.minus(p.totals_before), spread,
                                 self.weights, data)
            res.active_inputs = self.active_inputs - p.active_before
            res.mean_conductance_us = portable_mean(self.core.cache_vector())
        return res

    def summary(self, epochs: List[EpochResult], train_seconds: float) -> Dict[str, Any]:
        out = run_summary(self.cfg, self, epochs, train_seconds)
        if self.cfg.config_version >= 2:
            out.update(_format2_summary(self, epochs))
            from hil.energy import EnergyTable, counts_from_summary, estimate
            counts = counts_from_summary(out, self.cfg)
            out["energy"] = estimate(counts, self.energy_table or EnergyTable.load()).summary()
        return out

    @property
    def matvec_commands(self) -> int:
        return self._matmul.matvec.commands if isinstance(self._matmul, ChipMatmul) else 0


#: The figures of `initial_error`, in the order the trainer state stores them.
INIT_ERROR_KEYS = ("rms_error", "rms_error_us", "rms_target", "relative_error",
                   "zero_fraction")
def _add_format2_figures(res: EpochResult, done: PulseTotals, spread: PulseDistribution,
                         weights: List[np.ndarray], data: Dataset) -> None:
    res.update_set_pulses = done.update_set
    res.refresh_set_pulses = done.refresh_set
    res.reset_pulses = done.reset_pulses
    for k, v in spread.metrics().items():
        setattr(res, k, v)
    if data.n_validation:
        res.validation_accuracy = network.accuracy(weights, data.val_x, data.val_y)


def initial_error(targets: List[np.ndarray], weights: List[np.ndarray], beta: List[float],
                  unprogrammed: List[np.ndarray]) -> List[Dict[str, float]]:
    """Per layer: how far the weights read off the chip after initial programming are from
    the targets (rms, in weight units and in µS), against the targets' own rms, and the
    share of weights left at zero (both devices at RESET, no SET pulse) though their target
    is not zero."""
    out = []
    for t, w, b, left in zip(targets, weights, beta, unprogrammed):
        t64 = t.astype(np.float64).ravel()
        e = w.astype(np.float64).ravel() - t64
        rms_t = math.sqrt(portable_mean(t64 * t64))
        rms_e = math.sqrt(portable_mean(e * e))
        out.append({"rms_error": rms_e, "rms_error_us": rms_e / b, "rms_target": rms_t,
                    "relative_error": rms_e / rms_t if rms_t else 0.0,
                    "zero_fraction": int(np.count_nonzero(left & (t != 0))) / t.size})
    return out


def portable_mean(x: np.ndarray) -> float:
    """The mean of a float64 vector, summed in portable_math's fixed order: a figure of the
    summary or the log must be the same bits on every machine."""
    return float(pm.tree_sum(np.asarray(x, dtype=np.float64))) / x.size


@dataclass(frozen=True)
class BaselineEpoch:
    """What an epoch of the MLP's fp32 baseline scored (validation: None without a
    validation set)."""

    test_accuracy: float
    validation_accuracy: Optional[float] = None


class BaselineTrainer:
    """The fp32 software baseline: same network, initial target weights, data order and
    learning rate."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.weights = initial_weights(cfg)
        self._matmul = network.HostMatmul(self.weights)

    def train_epoch(self, data: Dataset, epoch: int) -> BaselineEpoch:
        """Train one epoch; returns its test (and validation) accuracy."""
        lr = learning_rate(self.cfg, epoch)
        order = epoch_order(self.cfg.seed, epoch, data.train_x.shape[0])
        bs = self.cfg.optimizer.batch_size
        for s in range(0, order.size, bs):
            idx = order[s:s + bs]
            _, _, grads = network.train_step(self.weights, data.train_x[idx],
                                             data.train_y[idx], lr, self._matmul)
            for w, g in zip(self.weights, grads):
                network.apply_gradient(w, g)
        val = network.accuracy(self.weights, data.val_x, data.val_y) if data.n_validation \
            else None
        return BaselineEpoch(network.accuracy(self.weights, data.test_x, data.test_y), val)


def run_experiment(cfg: AnyExperimentConfig, backend: ChipBackend,
                   recorder: Recorder | None = None, progress: bool = False,
                   data: Dataset | None = None,
                   report: Callable[[EpochResult], None] | None = None,
                   control: RunControl | None = None,
                   monitor: "Monitor | None" = None,
                   provenance: Dict[str, Any] | None = None,
                   start: TrainerState | None = None,
                   energy_table: "EnergyTable | None" = None) -> Dict[str, Any]:
    """Train on `backend` as `cfg` says: the MLP, a torch model (hil.torch) when the config
    has a `model` section, the character-level LSTM or the GAN for a `char_lstm` or `gan`
    section. Returns the run summary (see docs/training.md).

    `energy_table`: the per-operation energies of the MLP summary's estimate (config format
    2; default the packaged table). `start`: carry on from this state record (a snapshot's) instead of from step 0; the
    backend must serve the run from there on (`replay --verify --workers`). The snapshot it
    was taken at is not taken again. Only a trainer that declares a state record (the
    MLP's) can start there.

    Raises RunAborted when `control` asks to stop (after finishing the step in flight); the
    recorder is told the run was aborted and the chip is put in its safe state either way.
    """
    recorder = recorder or NullRecorder()
    if isinstance(cfg, TorchExperimentConfig):
        _require_torch(cfg)
        from hil.torch.experiment import torch_trainers
        trainer, baseline, data = torch_trainers(cfg, backend, recorder, data)
        trainer.baseline = baseline
    elif isinstance(cfg, (CharLstmExperimentConfig, GanExperimentConfig)):
        _require_torch(cfg)
        if isinstance(cfg, CharLstmExperimentConfig):
            from hil.char_lstm_experiment import lstm_trainers as make
        else:
            from hil.gan_experiment import gan_trainers as make
        trainer, baseline, data = make(cfg, backend, recorder, data)
        trainer.baseline = baseline
    else:
        data = load_dataset(cfg) if data is None else data.head(
            cfg.data.train_examples, cfg.data.test_examples, cfg.data.validation_examples)
        trainer = MixedPrecisionTrainer(cfg, backend, recorder)
        trainer.energy_table = energy_table
    trainer.extra_provenance = dict(provenance or {})
    return run_epochs(trainer, data, backend, progress, report, control, monitor, start)


def _require_torch(cfg: AnyExperimentConfig) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        key = {CharLstmExperimentConfig: "char_lstm", GanExperimentConfig: "gan"}.get(
            type(cfg), "model")
        raise ConfigError(f"a config with a {key} section trains a PyTorch network, and "
                          "torch is not installed: pip install 'pcm-hil[torch]'",
                          key=key) from None


def run_epochs(trainer: EpochTrainer, data: Dataset, backend: ChipBackend,
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


def _format2_summary(trainer: MixedPrecisionTrainer, epochs: List[EpochResult]
                     ) -> Dict[str, Any]:
    """The summary keys added in config format 2: pulses by purpose and where they went, the
    reduction counting every pulse, the refresh threshold in force, the initial programming
    error."""
    t = trainer.core.totals
    n_epochs = len(epochs)
    last = epochs[-1]
    out: Dict[str, Any] = {
        "pulses": {k: getattr(t, k) for k in PULSE_TOTAL_KEYS},
        "set_pulses_per_epoch": {"update": t.update_set / n_epochs,
                                 "refresh": t.refresh_set / n_epochs,
                                 "init": t.init_set / n_epochs},
        # every pulse counted: initial programming, updates, refreshes, RESETs
        "reduction_all_pulses": (trainer.core.n_weights * trainer.examples
                                 / max(1, t.set_pulses + t.reset_pulses)),
        "refresh_high_us": trainer.core.refresh_high_us,
        "pulses_skipped_saturated": trainer.core.skipped_saturated,
        # where the training pulses went over the whole run (per epoch: the epoch metrics)
        "pulse_distribution": trainer.core.counter.run_distribution().metrics(),
        "initial_weight_error": trainer.init_error,
        "pulse_growth": pulse_growth([e.set_pulses for e in epochs]),
        "active_inputs": trainer.active_inputs,
        "mean_conductance_us": portable_mean(np.array([e.mean_conductance_us
                                                        for e in epochs])),
        "pulse_shapes": [{"kind": int(p.kind), "amplitude_v": p.amplitude_v,
                          "width_ns": p.width_ns, "pulses": n}
                         for p, n in ((DEFAULT_SET, t.set_pulses),
                                      (DEFAULT_RESET, t.reset_pulses))],
    }
    for key in ("validation_accuracy", "baseline_validation_accuracy"):
        if getattr(last, key) is not None:
            out[key] = getattr(last, key)
    return out


def pulse_growth(per_epoch: List[int]) -> Optional[float]:
    """Mean SET pulses of the last third of the epochs over the first third's, epoch 1 left
    out (it starts from fresh devices): above 1, the pulse count grows over training. None
    for fewer than 4 epochs."""
    rest = per_epoch[1:]
    if len(rest) < 3:
        return None
    k = len(rest) // 3
    return float(np.mean(rest[-k:]) / max(1.0, float(np.mean(rest[:k]))))
