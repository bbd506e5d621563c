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

import hashlib
import logging
import math
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from drivers import portable_math as pm
from drivers.abilities import GuardedBackend, find_ability
from drivers.backend import Capability, ChipBackend
from drivers.errors import ConfigError
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil import network
from hil.chip_io import ChipIO
from hil.config import ExperimentConfig, InitProgramming, LrSchedule, MatvecMode
from hil.device_pairs import DevicePairMap, WeightBlock, allocate_pairs, load_bad_devices
from hil.mixed_precision import InitVerify, MixedPrecisionCore, TrainingDiverged
from hil.pulse_stats import PulseDistribution, PulseTotals
from hil.mnist import Mnist, load_mnist
from hil.recorder import NullRecorder, Recorder
from hil.run_control import RunAborted, RunControl
from hil.run_history import start_provenance
from hil.run_state import RunState

if TYPE_CHECKING:
    from hil.energy import EnergyTable
    from hil.monitors import Monitor

log = logging.getLogger("pcm_hil.training")
PAUSE_POLL_S = 5.0
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
        """The first examples of each set, as the config's data section asks."""
        if n_validation > self.n_validation:
            raise ConfigError(f"{n_validation:,} validation examples asked for, the data set "
                              f"given holds {self.n_validation:,}",
                              key="data.validation_examples")
        val = (self.val_x[:n_validation], self.val_y[:n_validation]) if n_validation \
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


def learning_rate(cfg: ExperimentConfig, epoch: int) -> float:
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

    def metrics(self) -> Dict[str, float]:
        """The epoch metrics the run log stores."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


class ChipMatmul(network.HostMatmul):
    """Weighted sums computed by the chip: one MATVEC per device block, W·x = β(I+ - I-).

    Forward sums run along a layer's inputs, backward ones along its outputs (the crossbar
    driven from the other side), as on a real array.

    Inputs are activations and errors, not voltages: each input vector is scaled so that its
    largest magnitude becomes the read voltage `training.matvec_read_v`, and the sums are
    scaled back (abs-max input scaling, as analog accelerators do). A disturbing voltage can
    therefore never reach the array, whatever the network computes.
    """

    def __init__(self, trainer: "MixedPrecisionTrainer") -> None:
        super().__init__(trainer.weights)
        self.trainer = trainer
        read_v = trainer.cfg.training.matvec_read_v
        guard = find_ability(trainer.backend, GuardedBackend)   # the station's limits
        station = None if guard is None else guard.station_limits.read_v_max
        for v_max, whose in ((trainer.chip_info.hard_limits.get("read_v_max"), "the chip's "),
                             (station, "the station's safety.")):
            if v_max is not None and read_v > v_max:   # refused before the chip is touched
                raise ConfigError(f"{read_v} V exceeds {whose}read_v_max of {v_max} V",
                                  key="training.matvec_read_v")
        self.read_v = float(read_v)
        # The largest float32 not above read_v: the voltages sent are float32.
        v32 = np.float32(read_v)
        self._v32 = v32 if float(v32) <= read_v else np.nextafter(v32, F32(0))

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

    def _diff(self, plus: np.ndarray, minus: np.ndarray, x: np.ndarray,
              beta: F32) -> np.ndarray:
        io = self.trainer.io
        self.trainer.matvec_commands += 2
        v, scale = self.line_voltages(x)
        return (beta * ((io.matvec(plus, v) - io.matvec(minus, v)) * scale)).astype(F32)

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


class MixedPrecisionTrainer:
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
        self.init_error: List[Dict[str, float]] = []
        self.active_inputs = 0      # non-zero inputs of every example trained on
        self.step = 0
        self.examples = 0
        self.matvec_commands = 0
        self._matmul = network.HostMatmul(self.weights)   # one per run: it keeps its scratch
        if cfg.training.matvec is MatvecMode.CHIP:
            if not self.chip_info.supports(Capability.MATVEC):
                raise ConfigError("the backend has no on-chip matvec", key="training.matvec")
            self._matmul = ChipMatmul(self)

    # --- set-up ---------------------------------------------------------------------------
    def provenance(self) -> Dict[str, Any]:
        """What the log records about the run's origin; asked before its first command, so
        it holds where the chip's history stood when the run began (a resume checks the
        chip against it, hil.run_history)."""
        return {"chip": self.chip_info.to_dict(), "seed": self.cfg.seed,
                "chip_seed": self.cfg.chip_seed, "host": platform.node(),
                "python": platform.python_version(), "numpy": np.__version__,
                **start_provenance(self.backend), **self.extra_provenance}

    def initialize(self) -> None:
        """RESET every mapped device, program the initial weights (blind or verified), read
        everything, and note how far the chip's weights are from the targets."""
        self.recorder.begin(config=self.cfg.to_dict(), provenance=self.provenance(),
                            layout=self.mapping.layout())
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
        self.core.record_snapshot(0)

    @property
    def refreshes(self) -> int:
        return self.core.refreshes

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

    # --- epochs ---------------------------------------------------------------------------
    def train_epoch(self, data: Dataset, epoch: int,
                    on_progress: Callable[[int], None] | None = None,
                    control: RunControl | None = None,
                    monitor: "Monitor | None" = None) -> EpochResult:
        t0 = time.perf_counter()
        lr = learning_rate(self.cfg, epoch)
        order = epoch_order(self.cfg.seed, epoch, data.train_x.shape[0])
        bs = self.cfg.optimizer.batch_size
        loss_sum, correct_sum, pulses0, refresh0 = 0.0, 0, self.io.counters.set_pulses, \
            self.refreshes
        totals0, active0 = self.core.totals.copy(), self.active_inputs
        rec = self.recorder
        snap_every = self.cfg.log.snapshot_every_steps
        for s in range(0, order.size, bs):
            idx = order[s:s + bs]
            loss, correct, pulses, refreshed = self.train_step(data.train_x[idx],
                                                               data.train_y[idx], lr)
            loss_sum += loss
            correct_sum += correct
            rec.on_step_metrics(self.step, {"epoch": epoch, "loss": loss, "correct": correct,
                                            "examples": idx.size, "set_pulses": pulses,
                                            "refreshes": refreshed})
            if snap_every and self.step % snap_every == 0:
                self.core.record_snapshot(self.step)
            if on_progress is not None and self.step % 100 == 0:
                on_progress(min(s + bs, order.size))
            if monitor is not None:
                self._poll(monitor, control)
            if control is not None:
                control.check(self.step)
        self.core.full_read()
        test_acc = network.accuracy(self.weights, data.test_x, data.test_y)
        res = EpochResult(epoch, correct_sum / order.size, loss_sum / order.size, test_acc,
                          self.io.counters.set_pulses - pulses0, self.refreshes - refresh0,
                          time.perf_counter() - t0)
        spread = self.core.counter.take_epoch()
        if self.cfg.config_version >= 2:   # format-1 logs hold none of these metrics
            done = self.core.totals.minus(totals0)
            _add_format2_figures(res, done, spread, self.weights, data)
            res.active_inputs = self.active_inputs - active0
            res.mean_conductance_us = _portable_mean(self.core.cache_vector())
        return res

    def _poll(self, monitor: "Monitor", control: RunControl | None) -> None:
        """Read the station's monitors that are due; pause or abort on a reading out of band.

        Pausing holds the chip idle and re-reads every `PAUSE_POLL_S` until everything is back
        in band (Ctrl-C still stops the run)."""
        from hil.station import MonitorAction
        result = monitor.poll(self.step)
        while True:
            if result.readings:
                self.recorder.on_monitor(self.step, result.readings)
            if result.action is None:
                return
            why = "; ".join(v.describe() for v in result.violations)
            if result.action is MonitorAction.ABORT:
                raise RunAborted(f"monitor: {why}; at step {self.step}")
            log.warning("pausing at step %d: %s", self.step, why)
            if control is not None:
                control.check(self.step)
            time.sleep(PAUSE_POLL_S)
            result = monitor.poll_all(self.step)

    def state_digest(self) -> str:
        """SHA-256 of the final conductance of every mapped device (noise-free if possible)."""
        addr = self.mapping.addresses
        if self.chip_info.supports(Capability.EXACT_READ):
            g = self.backend.read_exact(addr)
        else:
            g = self.core.cache_vector()
        return hashlib.sha256(np.ascontiguousarray(g, dtype="<f4").tobytes()).hexdigest()


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
        rms_t = math.sqrt(_portable_mean(t64 * t64))
        rms_e = math.sqrt(_portable_mean(e * e))
        out.append({"rms_error": rms_e, "rms_error_us": rms_e / b, "rms_target": rms_t,
                    "relative_error": rms_e / rms_t if rms_t else 0.0,
                    "zero_fraction": np.count_nonzero(left & (t != 0)) / t.size})
    return out


def _portable_mean(x: np.ndarray) -> float:
    """The mean of a float64 vector, summed in portable_math's fixed order: a figure of the
    summary or the log must be the same bits on every machine."""
    return float(pm.tree_sum(np.asarray(x, dtype=np.float64))) / x.size


class BaselineTrainer:
    """The fp32 software baseline: same network, initial target weights, data order and
    learning rate."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.weights = initial_weights(cfg)
        self.validation_accuracy: Optional[float] = None
        self._matmul = network.HostMatmul(self.weights)

    def train_epoch(self, data: Dataset, epoch: int) -> float:
        """Train one epoch; returns the test accuracy (the validation accuracy, when the data
        has a validation set, goes to `validation_accuracy`)."""
        lr = learning_rate(self.cfg, epoch)
        order = epoch_order(self.cfg.seed, epoch, data.train_x.shape[0])
        bs = self.cfg.optimizer.batch_size
        for s in range(0, order.size, bs):
            idx = order[s:s + bs]
            _, _, grads = network.train_step(self.weights, data.train_x[idx],
                                             data.train_y[idx], lr, self._matmul)
            for w, g in zip(self.weights, grads):
                network.apply_gradient(w, g)
        if data.n_validation:
            self.validation_accuracy = network.accuracy(self.weights, data.val_x, data.val_y)
        return network.accuracy(self.weights, data.test_x, data.test_y)


def run_experiment(cfg: ExperimentConfig, backend: ChipBackend,
                   recorder: Recorder | None = None, progress: bool = False,
                   data: Dataset | None = None,
                   report: Callable[[EpochResult], None] | None = None,
                   control: RunControl | None = None,
                   monitor: "Monitor | None" = None,
                   provenance: Dict[str, Any] | None = None,
                   energy_table: "EnergyTable | None" = None) -> Dict[str, Any]:
    """Train on `backend` as `cfg` says; returns the run summary (see docs/training.md).
    Its energy estimate (config format 2) uses `energy_table` (default: the packaged one).

    Raises RunAborted when `control` asks to stop (after finishing the step in flight); the
    recorder is told the run was aborted and the chip is put in its safe state either way.
    """
    recorder = recorder or NullRecorder()
    data = load_dataset(cfg) if data is None else data.head(cfg.data.train_examples,
                                                            cfg.data.test_examples,
                                                            cfg.data.validation_examples)
    trainer = MixedPrecisionTrainer(cfg, backend, recorder)
    trainer.extra_provenance = dict(provenance or {})
    baseline = BaselineTrainer(cfg) if cfg.training.baseline else None
    n_train = data.train_x.shape[0]
    epochs: List[EpochResult] = []
    train_seconds = 0.0
    status, reason = RunState.FAILED, None
    try:
        t0 = time.perf_counter()
        trainer.initialize()
        train_seconds += time.perf_counter() - t0
        for epoch in range(cfg.training.epochs):
            bar = _progress_bar(progress, n_train, f"epoch {epoch + 1}/{cfg.training.epochs}")
            last = [0]

            def on_progress(done: int) -> None:
                bar.update(done - last[0])
                last[0] = done

            res = trainer.train_epoch(data, epoch, on_progress if bar else None, control,
                                      monitor)
            train_seconds += res.seconds
            if bar:
                bar.update(n_train - last[0])
                bar.close()
            if baseline is not None:
                res.baseline_test_accuracy = baseline.train_epoch(data, epoch)
                if cfg.config_version >= 2:
                    res.baseline_validation_accuracy = baseline.validation_accuracy
            epochs.append(res)
            recorder.on_epoch_metrics(epoch, res.metrics())
            if report:
                report(res)
        trainer.core.record_snapshot(trainer.step)
        status = RunState.COMPLETED
    except RunAborted as e:
        status, reason = RunState.ABORTED, str(e)
        raise
    except KeyboardInterrupt:
        status, reason = RunState.ABORTED, f"interrupted at once by the operator at step {trainer.step}"
        raise
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}"
        raise
    finally:
        summary = _summary(cfg, trainer, epochs, train_seconds, n_train, energy_table) \
            if status is RunState.COMPLETED else None
        recorder.finish(status, reason, summary)
        try:
            backend.safe_state()
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("safe_state failed after the run")
    return summary  # type: ignore[return-value]


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="ex", mininterval=1.0, leave=False)


def _summary(cfg: ExperimentConfig, trainer: MixedPrecisionTrainer, epochs: List[EpochResult],
             train_seconds: float, n_train: int,
             energy_table: "EnergyTable | None" = None) -> Dict[str, Any]:
    c = trainer.io.counters
    n_weights = trainer.core.n_weights
    examples = trainer.examples
    last = epochs[-1]
    out: Dict[str, Any] = {
        "name": cfg.name,
        "seed": cfg.seed,
        "backend": cfg.chip.backend,
        "test_accuracy": last.test_accuracy,
        "train_accuracy": last.train_accuracy,
        "epochs": len(epochs),
        "examples": examples,
        "steps": trainer.step,
        "weights": n_weights,
        "devices": trainer.mapping.n_devices,
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
        "programming_reduction": (n_weights * examples / max(1, sum(e.set_pulses
                                                                   for e in epochs))),
        "per_epoch": [{k: v for k, v in e.__dict__.items()} for e in epochs],
        "state_digest": trainer.state_digest(),
    }
    if last.baseline_test_accuracy is not None:
        out["baseline_test_accuracy"] = last.baseline_test_accuracy
        out["accuracy_gap"] = last.baseline_test_accuracy - last.test_accuracy
    if cfg.config_version >= 2:
        out.update(_format2_summary(trainer, epochs))
        from hil.energy import EnergyTable, counts_from_summary, estimate
        counts = counts_from_summary(out, cfg)
        out["energy"] = estimate(counts, energy_table or EnergyTable.load()).summary()
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
        "pulses": {"init_set": t.init_set, "init_reset": t.init_reset,
                   "update_set": t.update_set, "refresh_set": t.refresh_set,
                   "refresh_reset": t.refresh_reset},
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
        "mean_conductance_us": _portable_mean(np.array([e.mean_conductance_us
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
