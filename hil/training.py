"""Mixed-precision training of an MLP on a PCM chip (Nandakumar et al. 2020).

The host does forward and backward passes in fp32 from the weights W = β(G+ - G-) it has
read off the chip (or, in matvec=chip mode, has the chip compute the weighted sums), keeps
the updates in χ, and sends one batched SET command per step for all the pulses χ calls for,
followed by one read-back of exactly those devices. Refreshes, when due, add a RESET batch, a
SET batch and a read-back. All chip I/O goes through ChipIO, so the run log sees everything.
"""
from __future__ import annotations

import hashlib
import logging
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from drivers.abilities import GuardedBackend, find_ability
from drivers.backend import Capability, ChipBackend
from drivers.errors import ConfigError, HilError
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil import network
from hil.chip_io import ChipIO
from hil.config import ChiUpdate, ExperimentConfig, MatvecMode
from hil.mapping import Mapping, load_bad_devices, map_layers
from hil.mnist import Mnist, load_mnist
from hil.optimizer import MixedPrecisionOptimizer, pulses_for, refresh_candidates
from hil.recorder import NullRecorder, Recorder
from hil.run_control import RunAborted, RunControl

if TYPE_CHECKING:
    from hil.monitors import Monitor

log = logging.getLogger("pcm_hil.training")
PAUSE_POLL_S = 5.0
F32 = np.float32


@dataclass
class Dataset:
    """Train and test arrays with the bias column added."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @classmethod
    def from_mnist(cls, m: Mnist, n_train: int, n_test: int) -> "Dataset":
        return cls(network.add_bias(m.train_x[:n_train]), m.train_y[:n_train].astype(np.int64),
                   network.add_bias(m.test_x[:n_test]), m.test_y[:n_test].astype(np.int64))


    def head(self, n_train: int, n_test: int) -> "Dataset":
        """The first examples, as the config's data section asks."""
        return Dataset(self.train_x[:n_train], self.train_y[:n_train], self.test_x[:n_test],
                       self.test_y[:n_test])


def load_dataset(cfg: ExperimentConfig) -> Dataset:
    return Dataset.from_mnist(load_mnist(cfg.data.source), cfg.data.train_examples,
                              cfg.data.test_examples)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of an epoch: a pure function of (seed, epoch), shared with the
    baseline so both see the same data in the same order."""
    return np.random.default_rng([seed, 1, epoch]).permutation(n)


def learning_rate(cfg: ExperimentConfig, epoch: int) -> float:
    return cfg.optimizer.learning_rate * cfg.optimizer.lr_decay ** epoch


def initial_weights(cfg: ExperimentConfig) -> List[np.ndarray]:
    return network.init_weights(cfg.network.layers, cfg.network.init_range,
                                np.random.default_rng([cfg.seed, 0]))


@dataclass
class EpochResult:
    epoch: int
    train_accuracy: float
    train_loss: float
    test_accuracy: float
    set_pulses: int
    refreshes: int
    seconds: float
    baseline_test_accuracy: Optional[float] = None


@dataclass
class _Layer:
    """Host-side state of one layer: conductance cache, weights from it, addresses."""

    beta: F32
    plus: np.ndarray
    minus: np.ndarray
    gp: np.ndarray
    gm: np.ndarray
    w: np.ndarray

    np_: np.ndarray = None  # SET pulses since RESET per G+ device (for chi_update=expected)
    nm: np.ndarray = None

    def __post_init__(self) -> None:
        self.np_ = np.zeros(self.gp.shape, np.uint16)
        self.nm = np.zeros(self.gp.shape, np.uint16)

    def count_pulses(self, flat: np.ndarray, positive: np.ndarray, n: np.ndarray) -> None:
        for arr, sel in ((self.np_.reshape(-1), positive), (self.nm.reshape(-1), ~positive)):
            arr[flat[sel]] = np.minimum(arr[flat[sel]].astype(np.int64) + n[sel], 65535)

    def reset_counts(self, flat: np.ndarray) -> None:
        self.np_.reshape(-1)[flat] = 0
        self.nm.reshape(-1)[flat] = 0

    def addresses(self, flat: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """The device each weight's pulses go to: G+ where positive, else G-."""
        return np.where(positive, self.plus.reshape(-1)[flat], self.minus.reshape(-1)[flat])

    def update_cache(self, flat: np.ndarray, positive: np.ndarray,
                     values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store read-back values of the G+ (positive) or G- devices of weights `flat`
        (unique) and recompute those weights; returns their weights before and after."""
        gp, gm, w = self.gp.reshape(-1), self.gm.reshape(-1), self.w.reshape(-1)
        gp_f = np.where(positive, values, gp[flat])
        gm_f = np.where(positive, gm[flat], values)
        gp[flat] = gp_f
        gm[flat] = gm_f
        w_before = w[flat]
        w_after = gp_f - gm_f
        w_after *= self.beta
        w[flat] = w_after
        return w_before, w_after


class TrainingDiverged(HilError):
    """The network's numbers left the finite range; nothing non-finite is sent to a chip."""


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
        lay = self.trainer.layers[layer]
        p, m = (lay.plus, lay.minus) if rows is None else (lay.plus[rows], lay.minus[rows])
        return self._diff(p.T, m.T, a_in.T, lay.beta).T

    def backward(self, layer: int, delta: np.ndarray) -> np.ndarray:
        lay = self.trainer.layers[layer]
        return self._diff(lay.plus[:-1], lay.minus[:-1], delta.T, lay.beta).T


class MixedPrecisionTrainer:
    """One training run on one chip. Use `run()`, or drive `initialize`/`train_epoch`."""

    def __init__(self, cfg: ExperimentConfig, backend: ChipBackend,
                 recorder: Recorder | None = None) -> None:
        self.cfg = cfg
        self.backend = backend
        self.recorder = recorder or NullRecorder()
        self.io = ChipIO(backend, self.recorder)
        self.chip_info = backend.info()
        bad = load_bad_devices(cfg.mapping.bad_devices, cfg.mapping.bad_devices_file)
        self.mapping: Mapping = map_layers(cfg.network.layers, self.chip_info.geometry,
                                           cfg.mapping.start_address, bad)
        opt = cfg.optimizer
        shapes = [lm.shape for lm in self.mapping.layers]
        self.optimizer = MixedPrecisionOptimizer(shapes, opt.beta, opt.epsilon_us,
                                                 opt.max_pulses_per_update)
        self.layers = [
            _Layer(F32(b), lm.plus, lm.minus, np.zeros(lm.shape, F32), np.zeros(lm.shape, F32),
                   np.zeros(lm.shape, F32))
            for b, lm in zip(opt.beta, self.mapping.layers)]
        from sim_backend.pcm_model import PcmModel
        self.model = PcmModel.load(cfg.chip.model)   # the host's knowledge of its devices
        # Expected conductance after n SET pulses from RESET: the blind-programming table.
        self.curve = self.model.mean_set_curve(20)
        self.extra_provenance: Dict[str, Any] = {}
        self.step = 0
        self.examples = 0
        self.refreshes = 0
        self.matvec_commands = 0
        self._matmul: network.HostMatmul | None = None
        if cfg.training.matvec is MatvecMode.CHIP:
            if not self.chip_info.supports(Capability.MATVEC):
                raise ConfigError("the backend has no on-chip matvec", key="training.matvec")
            self._matmul = ChipMatmul(self)

    # --- set-up ---------------------------------------------------------------------------
    def provenance(self) -> Dict[str, Any]:
        return {"chip": self.chip_info.to_dict(), "seed": self.cfg.seed,
                "chip_seed": self.cfg.chip_seed, "host": platform.node(),
                "python": platform.python_version(), "numpy": np.__version__,
                **self.extra_provenance}

    def initialize(self) -> None:
        """RESET every mapped device, program the initial weights blind, read everything."""
        self.recorder.begin(config=self.cfg.to_dict(), provenance=self.provenance(),
                            layout=self.mapping.layout())
        self.io.step = 0
        addr = self.mapping.addresses
        self.io.program(addr, np.ones(addr.size, np.int64), DEFAULT_RESET, "init_reset")
        w0 = initial_weights(self.cfg)
        targets, counts = [], []
        for layer, w in zip(self.layers, w0):
            n = pulses_for(np.abs(w) / layer.beta, self.curve)
            pos = w > 0
            layer.np_[pos], layer.nm[~pos] = n[pos], n[~pos]
            targets += [layer.plus[pos & (n > 0)], layer.minus[~pos & (n > 0)]]
            counts += [n[pos & (n > 0)], n[~pos & (n > 0)]]
        self.io.program(np.concatenate(targets), np.concatenate(counts), DEFAULT_SET, "init_set")
        self.full_read("full_read")
        self.recorder.on_snapshot(0, self.cache_vector(), self.chi_dict())

    def full_read(self, purpose: str) -> None:
        values = self.io.read(self.mapping.addresses, purpose)
        pos = 0
        for layer in self.layers:
            n = layer.gp.size
            layer.gp[...] = values[pos:pos + n].reshape(layer.gp.shape)
            layer.gm[...] = values[pos + n:pos + 2 * n].reshape(layer.gm.shape)
            np.multiply(layer.beta, layer.gp - layer.gm, out=layer.w)
            pos += 2 * n

    def cache_vector(self) -> np.ndarray:
        return np.concatenate([a.ravel() for layer in self.layers for a in (layer.gp, layer.gm)])

    def chi_dict(self) -> Dict[str, np.ndarray]:
        return {f"layer{i}": c for i, c in enumerate(self.optimizer.chi)}

    @property
    def weights(self) -> List[np.ndarray]:
        return [layer.w for layer in self.layers]

    # --- one step ---------------------------------------------------------------------------
    def train_step(self, xb: np.ndarray, yb: np.ndarray, lr: float) -> tuple:
        self.step += 1
        self.io.step = self.step
        loss, correct, grads = network.train_step(self.weights, xb, yb, lr, self._matmul)
        plans = [self.optimizer.accumulate(i, g) for i, g in enumerate(grads)]
        if self.cfg.optimizer.chi_update is ChiUpdate.EXPECTED:
            self._expected_correction(plans)
        # Layers without pulses (most steps leave one or both alone) cost no numpy calls.
        pulsed = [(i, layer, plan) for i, (layer, plan) in enumerate(zip(self.layers, plans))
                  if plan.flat.size]
        pulses = 0
        if pulsed:
            if len(pulsed) == 1:
                _, layer, plan = pulsed[0]
                addr, n = layer.addresses(plan.flat, plan.positive), plan.n
            else:
                addr = np.concatenate([layer.addresses(plan.flat, plan.positive)
                                       for _, layer, plan in pulsed])
                n = np.concatenate([plan.n for _, _, plan in pulsed])
            pulses = int(n.sum())
            values = self.io.program_read(addr, n, DEFAULT_SET, "update", "readback")
            measured = self.cfg.optimizer.chi_update is ChiUpdate.MEASURED
            pos = 0
            for i, layer, plan in pulsed:
                k = plan.flat.size
                w_before, w_after = layer.update_cache(plan.flat, plan.positive,
                                                       values[pos:pos + k])
                if measured:
                    # χ already lost the nominal ±p·ε; trade it for the change the chip made.
                    nominal = plan.nominal
                    if nominal is None:
                        eps = self.optimizer.eps_w[i]
                        nominal = np.where(plan.positive, plan.n, -plan.n).astype(F32) * eps
                    w_after -= w_before   # now the change the chip made
                    self.optimizer.chi[i].reshape(-1)[plan.flat] += nominal - w_after
                pos += k
        refreshed = 0
        period = self.cfg.optimizer.refresh.period_steps
        if period and self.step % period == 0:
            refreshed = self.refresh()
        fr = self.cfg.training.full_read_every_steps
        if fr and self.step % fr == 0:
            self.full_read("full_read")
        self.examples += xb.shape[0]
        return loss, correct, pulses, refreshed

    def _expected_correction(self, plans: list) -> None:
        """Trade the nominal ±p·ε in χ for the change the device model expects from p pulses
        at the device's cached conductance and pulse count (blind: nothing is read for it)."""
        for i, (layer, plan) in enumerate(zip(self.layers, plans)):
            if not plan.flat.size:
                continue
            pos = plan.positive
            g = np.where(pos, layer.gp.reshape(-1)[plan.flat], layer.gm.reshape(-1)[plan.flat])
            n0 = np.where(pos, layer.np_.reshape(-1)[plan.flat],
                          layer.nm.reshape(-1)[plan.flat]).astype(np.int64)
            g_new = g.astype(np.float64)
            for k in range(int(plan.n.max())):
                live = plan.n > k
                g_new = np.where(live, self.model.set_pulse(g_new, n0 + k + 1, 0.0), g_new)
            dw = (layer.beta * (g_new - g)).astype(F32)
            eps = self.optimizer.eps_w[i]
            nominal = plan.n.astype(F32) * eps
            self.optimizer.chi[i].reshape(-1)[plan.flat] += np.where(pos, nominal - dw,
                                                                     dw - nominal)
            layer.count_pulses(plan.flat, pos, plan.n)

    def refresh(self) -> int:
        """Refresh saturated pairs: RESET both, re-program |G+ - G-| on one, read back."""
        cfg = self.cfg.optimizer.refresh
        found = [refresh_candidates(layer.gp, layer.gm, cfg) for layer in self.layers]
        total = sum(f.size for f in found)
        if total == 0:
            return 0
        resets, sets, counts, w_old = [], [], [], []
        for layer, flat in zip(self.layers, found):
            p, m = layer.plus.reshape(-1)[flat], layer.minus.reshape(-1)[flat]
            diff = layer.gp.reshape(-1)[flat] - layer.gm.reshape(-1)[flat]
            n = pulses_for(np.abs(diff), self.curve)
            resets += [p, m]
            sets.append(np.where(diff > 0, p, m)[n > 0])
            counts.append(n[n > 0])
            w_old.append(layer.w.reshape(-1)[flat].copy())
            layer.reset_counts(flat)
            layer.count_pulses(flat, diff > 0, n)
        pair_addresses = np.concatenate(resets)   # RESET both devices, later read both back
        self.io.program(pair_addresses, np.ones(2 * total, np.int64), DEFAULT_RESET,
                        "refresh_reset")
        self.io.program(np.concatenate(sets), np.concatenate(counts), DEFAULT_SET,
                        "refresh_set")
        values = self.io.read(pair_addresses, "refresh_readback")
        pos = 0
        for i, (layer, flat) in enumerate(zip(self.layers, found)):
            k = flat.size
            ones = np.ones(k, bool)
            layer.update_cache(flat, ones, values[pos:pos + k])
            layer.update_cache(flat, ~ones, values[pos + k:pos + 2 * k])
            pos += 2 * k
            if cfg.compensate:
                chi = self.optimizer.chi[i].reshape(-1)
                chi[flat] += w_old[i] - layer.w.reshape(-1)[flat]
        self.refreshes += total
        return total

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
                rec.on_snapshot(self.step, self.cache_vector(), self.chi_dict())
            if on_progress is not None and self.step % 100 == 0:
                on_progress(min(s + bs, order.size))
            if monitor is not None:
                self._poll(monitor, control)
            if control is not None:
                control.check(self.step)
        self.full_read("full_read")
        test_acc = network.accuracy(self.weights, data.test_x, data.test_y)
        return EpochResult(epoch, correct_sum / order.size, loss_sum / order.size, test_acc,
                           self.io.counters.set_pulses - pulses0, self.refreshes - refresh0,
                           time.perf_counter() - t0)

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
            g = self.cache_vector()
        return hashlib.sha256(np.ascontiguousarray(g, dtype="<f4").tobytes()).hexdigest()


class BaselineTrainer:
    """The fp32 software baseline: same network, init, data order and learning rate."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.weights = initial_weights(cfg)

    def train_epoch(self, data: Dataset, epoch: int) -> float:
        lr = learning_rate(self.cfg, epoch)
        order = epoch_order(self.cfg.seed, epoch, data.train_x.shape[0])
        bs = self.cfg.optimizer.batch_size
        for s in range(0, order.size, bs):
            idx = order[s:s + bs]
            _, _, grads = network.train_step(self.weights, data.train_x[idx],
                                             data.train_y[idx], lr)
            for w, g in zip(self.weights, grads):
                network.apply_gradient(w, g)
        return network.accuracy(self.weights, data.test_x, data.test_y)


def run_experiment(cfg: ExperimentConfig, backend: ChipBackend,
                   recorder: Recorder | None = None, progress: bool = False,
                   data: Dataset | None = None,
                   report: Callable[[EpochResult], None] | None = None,
                   control: RunControl | None = None,
                   monitor: "Monitor | None" = None,
                   provenance: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """Train on `backend` as `cfg` says; returns the run summary (see docs/training.md).

    Raises RunAborted when `control` asks to stop (after finishing the step in flight); the
    recorder is told the run was aborted and the chip is put in its safe state either way.
    """
    recorder = recorder or NullRecorder()
    data = load_dataset(cfg) if data is None else data.head(cfg.data.train_examples,
                                                            cfg.data.test_examples)
    trainer = MixedPrecisionTrainer(cfg, backend, recorder)
    trainer.extra_provenance = dict(provenance or {})
    baseline = BaselineTrainer(cfg) if cfg.training.baseline else None
    n_train = data.train_x.shape[0]
    epochs: List[EpochResult] = []
    train_seconds = 0.0
    status, reason = "failed", None
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
            epochs.append(res)
            metrics = {k: v for k, v in res.__dict__.items() if v is not None}
            recorder.on_epoch_metrics(epoch, metrics)
            if report:
                report(res)
        recorder.on_snapshot(trainer.step, trainer.cache_vector(), trainer.chi_dict())
        status = "completed"
    except RunAborted as e:
        status, reason = "aborted", str(e)
        raise
    except KeyboardInterrupt:
        status, reason = "aborted", f"interrupted at once by the operator at step {trainer.step}"
        raise
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}"
        raise
    finally:
        summary = _summary(cfg, trainer, epochs, train_seconds, n_train) \
            if status == "completed" else None
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
             train_seconds: float, n_train: int) -> Dict[str, Any]:
    c = trainer.io.counters
    n_weights = sum(layer.w.size for layer in trainer.layers)
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
    return out
