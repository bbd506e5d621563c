"""Training throughput: mixed precision on the in-process simulated chip, against a textbook
fp32 numpy loop, the project's optimised fp32 baseline and IBM aihwkit's mixed-precision
simulator, on the same MLP, data order and learning rate."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from hil.benchmarks.common import open_sim_chip
from hil.config import ExperimentConfig
from hil.epoch_loop import epoch_order, learning_rate
from hil.training import (BaselineTrainer, Dataset, MixedPrecisionTrainer, initial_weights,
                          run_experiment)

F32 = np.float32

#: aihwkit 1.2.0, MixedPrecisionCompound over PCMPresetUnitCell, 784-250-10, batch 1, 2 cores,
#: as reported in the project's issue: a reference, not measured here.
AIHWKIT_REFERENCE_EXAMPLES_PER_S = 37.0
AIHWKIT_SKIP = ("aihwkit is not installed, so its figure is skipped. It is optional (pcm-hil "
                "never needs it); scripts/setup_bench builds aihwkit 1.2.0 into .venv (about 4-7 "
                "minutes on 2 cores; see docs/benchmarks.md)")


def run_in_process(cfg: ExperimentConfig, data: Dataset) -> Dict[str, Any]:
    """One epoch of mixed-precision training on an in-process simulated chip."""
    with open_sim_chip(cfg) as be:
        return run_experiment(cfg, be, data=data)


def mp_steps_examples_per_s(cfg: ExperimentConfig, data: Dataset) -> float:
    """Mixed precision timed as the textbook loop and aihwkit are: the training steps of one
    epoch alone (forward, backward, χ, the PROGRAM_READ of the pulses, refreshes), on an
    in-process simulated chip; the one-off initial programming, the epoch's closing full read
    and its test evaluation excluded (the other loops have none of them)."""
    with open_sim_chip(cfg) as be:
        trainer = MixedPrecisionTrainer(cfg, be)
        trainer.initialize()
        order = epoch_order(cfg.seed, 0, data.train_x.shape[0])
        lr, bs = learning_rate(cfg, 0), cfg.optimizer.batch_size
        x, y = data.train_x, data.train_y
        t0 = time.perf_counter()
        for s in range(0, order.size, bs):
            idx = order[s:s + bs]
            trainer.train_step(x[idx], y[idx], lr)
        return order.size / (time.perf_counter() - t0)


def fp32_textbook_epoch(weights: List[np.ndarray], x: np.ndarray, y: np.ndarray,
                        order: np.ndarray, lr: float) -> None:
    """The MLP trained per example the textbook way, in fp32 numpy: dense forward through
    every input (zeros included), dense outer-product update of every weight. This is the
    reference the ≥0.5x target is set against, so it is deliberately not optimised."""
    lr32 = F32(lr)
    for i in order:
        acts = [x[i]]                              # input with its bias 1.0 appended
        for w in weights[:-1]:
            h = 1.0 / (1.0 + np.exp(-(acts[-1] @ w)))
            acts.append(np.append(h, F32(1.0)).astype(F32))
        out = acts[-1] @ weights[-1]
        p = np.exp(out - out.max())
        p /= p.sum()
        delta = p.astype(F32)
        delta[y[i]] -= 1.0
        for k in range(len(weights) - 1, -1, -1):
            back = weights[k][:-1] @ delta if k else None
            weights[k] -= lr32 * np.outer(acts[k], delta)
            if k:
                h = acts[k][:-1]
                delta = (back * h * (1.0 - h)).astype(F32)


def fp32_textbook_examples_per_s(cfg: ExperimentConfig, data: Dataset) -> float:
    """Same init, data order and learning rate as the chip run."""
    weights = initial_weights(cfg)
    order = epoch_order(cfg.seed, 0, data.train_x.shape[0])
    t0 = time.perf_counter()
    fp32_textbook_epoch(weights, data.train_x, data.train_y, order, learning_rate(cfg, 0))
    return order.size / (time.perf_counter() - t0)


def fp32_opt_examples_per_s(cfg: ExperimentConfig, data: Dataset) -> float:
    """The project's fp32 baseline (BaselineTrainer: works on the active input rows only)."""
    trainer = BaselineTrainer(cfg)
    t0 = time.perf_counter()
    trainer.train_epoch(data, 0)
    return data.train_x.shape[0] / (time.perf_counter() - t0)


def aihwkit_examples_per_s(cfg: ExperimentConfig, data: Dataset,
                           n: int) -> Tuple[Optional[float], Optional[str]]:
    """aihwkit's MixedPrecisionCompound over PCMPresetUnitCell on the same MLP, batch 1, the
    same data order; (examples/s, None), or (None, why it was skipped)."""
    try:
        import torch
        from aihwkit.nn import AnalogLinear, AnalogSequential
        from aihwkit.optim import AnalogSGD
    except ImportError:
        return None, AIHWKIT_SKIP
    try:
        rpu = _aihwkit_rpu_config()
        layers = cfg.network.layers
        mods: List[Any] = []
        for k, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:])):
            mods.append(AnalogLinear(n_in, n_out, bias=True, rpu_config=rpu))
            if k < len(layers) - 2:
                mods.append(torch.nn.Sigmoid())
        model = AnalogSequential(*mods)
        opt = AnalogSGD(model.parameters(), lr=cfg.optimizer.learning_rate)
        opt.regroup_param_groups(model)
        loss_fn = torch.nn.CrossEntropyLoss()
        order = epoch_order(cfg.seed, 0, data.train_x.shape[0])[:n]
        x = torch.from_numpy(np.ascontiguousarray(data.train_x[order, :-1]))
        y = torch.from_numpy(data.train_y[order])
        t0 = time.perf_counter()
        for i in range(order.size):
            opt.zero_grad()
            loss = loss_fn(model(x[i:i + 1]), y[i:i + 1])
            loss.backward()
            opt.step()
        return order.size / (time.perf_counter() - t0), None
    except Exception as e:  # noqa: BLE001 - an optional comparison must not sink the run
        return None, f"aihwkit is installed but its run failed: {type(e).__name__}: {e}"


def _aihwkit_rpu_config() -> Any:
    """DigitalRankUpdateRPUConfig(MixedPrecisionCompound(PCMPresetUnitCell)), wherever this
    aihwkit version keeps the classes."""
    from aihwkit.simulator.configs import DigitalRankUpdateRPUConfig
    try:
        from aihwkit.simulator.presets.compounds import PCMPresetUnitCell
    except ImportError:
        from aihwkit.simulator.presets.devices import PCMPresetUnitCell  # older layout
    try:
        from aihwkit.simulator.configs.compounds import MixedPrecisionCompound
    except ImportError:
        from aihwkit.simulator.configs.devices import MixedPrecisionCompound  # older layout
    return DigitalRankUpdateRPUConfig(device=MixedPrecisionCompound(device=PCMPresetUnitCell()))
