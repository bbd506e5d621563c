"""Step time and memory against chip size and network size: the trainer's work per step must
not grow with the devices it does not touch."""
from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hil.benchmarks.common import NETWORKS, bench_config, open_sim_chip, say
from hil.config import ExperimentConfig
from hil.epoch_loop import epoch_order, learning_rate
from hil.training import Dataset, MixedPrecisionTrainer

#: The network of the device-count series: small enough for the 0.25 M-device chip
#: (159,020 devices), so one network spans 0.25 M to 4 M devices.
DEVICE_SERIES_NETWORK = "784-100-10"


def scaling_point(cfg: ExperimentConfig, data: Dataset, steps: int) -> Dict[str, Any]:
    """Step time and memory of one chip size and network: the chip and the trainer are built
    and initialised under tracemalloc (numpy's buffers are traced), then `steps` training
    steps are timed with tracing off."""
    c = cfg.chip
    tracemalloc.start()
    try:
        chip = open_sim_chip(cfg)
        chip_bytes, _ = tracemalloc.get_traced_memory()
        trainer = MixedPrecisionTrainer(cfg, chip)
        trainer.initialize()
        traced, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    order = epoch_order(cfg.seed, 0, data.train_x.shape[0])
    lr = learning_rate(cfg, 0)
    x, y = data.train_x, data.train_y
    t0 = time.perf_counter()
    for s in range(steps):
        i = order[s % order.size]
        trainer.train_step(x[i:i + 1], y[i:i + 1], lr)
    dt = time.perf_counter() - t0
    n_dev = chip.geometry.n_devices
    row = {"network": "-".join(map(str, cfg.network.layers)), "devices": n_dev,
           "chip": f"{c.arrays}x{c.rows}x{c.cols}", "mapped_devices": trainer.mapping.n_devices,
           "steps": steps, "step_us": 1e6 * dt / steps,
           "chip_state_bytes": int(chip.state_bytes),
           "state_bytes_per_device": chip.state_bytes / n_dev,
           "chip_traced_bytes": int(chip_bytes), "traced_bytes": int(traced),
           "traced_peak_bytes": int(peak)}
    chip.close()
    return row


def scaling_tables(device_cols: Sequence[int], networks: Sequence[str], steps: int,
                   data: Dataset) -> Tuple[List[dict], List[dict]]:
    """Step time against chip size (network fixed at DEVICE_SERIES_NETWORK) and against
    network size (on the smallest of the 1 M / 4 M chips that holds it)."""
    by_devices = []
    for cols in device_cols:
        cfg = bench_config(data.train_x.shape[0], 1, DEVICE_SERIES_NETWORK, cols=cols)
        say(f"  chip 1x512x{cols} ({512 * cols / 2**20:.2f} M devices), "
            f"{DEVICE_SERIES_NETWORK}")
        by_devices.append(scaling_point(cfg, data, steps))
    by_network = []
    for name in networks:
        layers = NETWORKS[name][0]
        need = 2 * sum((a + 1) * b for a, b in zip(layers[:-1], layers[1:]))
        cols = 2048 if need <= 512 * 2048 else 8192
        say(f"  network {name} ({need:,} devices) on 1x512x{cols}")
        by_network.append(scaling_point(bench_config(data.train_x.shape[0], 1, name, cols),
                                        data, steps))
    return by_devices, by_network


def growth_exponent(rows: Sequence[dict]) -> Optional[float]:
    """k in step_time ∝ devices^k between the smallest and largest chip (≤ 1: at most
    linear)."""
    if len(rows) < 2:
        return None
    a, b = rows[0], rows[-1]
    return math.log(b["step_us"] / a["step_us"]) / math.log(b["devices"] / a["devices"])
