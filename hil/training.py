"""Mixed-precision training of an MLP on a PCM chip (Nandakumar et al. 2020).

The host does forward and backward passes in fp32 from the weights W = β(G+ - G-) it has
read off the chip (or, in matvec=chip mode, has the chip compute the weighted sums) and
hands the updates to the mixed-precision core (hil.mixed_precision), which keeps them in χ
and sends one batched SET command per step for all the pulses χ calls for, followed by one
read-back of exactly those devices, plus refreshes when due. Each layer is one weight block
(n_in + 1, n_out), bias row last. All chip I/O goes through ChipIO, so the run log sees
everything. The epochs, the baseline beside them and the summary are the shared loop's
(hil.epoch_loop); `run_experiment` picks the trainer a config asks for.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from drivers import portable_math as pm
from drivers.backend import Capability, ChipBackend
from drivers.errors import ConfigError
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil import network
from hil.chip_io import ChipIO
from hil.chip_matvec import ChipMatvec, preflight_block
from hil.config import (AnyExperimentConfig, CharLstmExperimentConfig, ExperimentConfig,
                        GanExperimentConfig, InitProgramming, MatvecMode,
                        TorchExperimentConfig)
from hil.device_pairs import DevicePairMap, WeightBlock, allocate_pairs, load_bad_devices
from hil.epoch_loop import (BaselineEpoch, EpochProgress, EpochResult, EpochTrainer,
                            epoch_order, learning_rate, run_epochs, run_summary)
from hil.mixed_precision import InitVerify, MixedPrecisionCore
from hil.mnist import Mnist, load_mnist
from hil.pulse_stats import PULSE_TOTAL_KEYS, PulseDistribution, PulseTotals
from hil.recorder import NullRecorder, Recorder
from hil.run_control import RunControl
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

def initial_weights(cfg: ExperimentConfig) -> List[np.ndarray]:
    return network.init_weights(cfg.network.layers, cfg.network.init_range,
                                np.random.default_rng([cfg.seed, 0]))

def weight_blocks(cfg: ExperimentConfig) -> List[WeightBlock]:
    """The MLP's layers as weight blocks: layer l is (n_in + 1, n_out), bias row last."""
    sizes = cfg.network.layers
    return [WeightBlock(f"layer{i}", (n_in + 1, n_out), beta)
            for i, (n_in, n_out, beta) in enumerate(zip(sizes[:-1], sizes[1:],
                                                        cfg.optimizer.beta))]

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
                preflight_block(guard, pairs.plus, pairs.plus.shape[0] - 1)   # bias row last

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

class BaselineTrainer:
    """The fp32 software baseline: same network, initial target weights, data order and
    learning rate (or `training.baseline_learning_rate`)."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.weights = initial_weights(cfg)
        self._matmul = network.HostMatmul(self.weights)

    def train_epoch(self, data: Dataset, epoch: int) -> BaselineEpoch:
        """Train one epoch; returns its test (and validation) accuracy."""
        lr = learning_rate(self.cfg, epoch, baseline=True)
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
