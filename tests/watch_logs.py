"""Small run logs for the live-view tests, written by the real RunLogWriter.

`LogBuilder` drives the writer through the same hooks the trainer calls (program batches
with their read-back, refreshes, step and epoch metrics, monitor polls, snapshots), on any
layout: the MLP's `layer0.plus` ... or a PyTorch model's `conv1.weight.plus` ...
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np

from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil.config import config_from_dict
from hil.run_log import RunLogWriter

GEOMETRY = {"arrays": 2, "rows": 32, "cols": 128}
CHIP = {"chip_id": "test-chip", "firmware_version": "1", "protocol_version": "1.2",
        "geometry": GEOMETRY, "g_min_us": 0.1, "g_max_us": 20.0, "adc_bits": 16,
        "capabilities": [], "hard_limits": {}}
STATION = {"monitors": [
    {"instrument": "vdd", "quantity": "current_a", "every_n_steps": 10, "low": 0.0,
     "high": 0.4, "action": "abort"},
    {"instrument": "socket", "quantity": "temperature_c", "every_n_steps": 10,
     "low": 20.0, "high": 30.0, "action": "pause"}]}


def mlp_layout(start: int = 0, shapes=((9, 8), (9, 4))) -> Dict[str, np.ndarray]:
    out, pos = {}, start
    for i, (a, b) in enumerate(shapes):
        for sign in ("plus", "minus"):
            out[f"layer{i}.{sign}"] = np.arange(pos, pos + a * b, dtype=np.uint32).reshape(a, b)
            pos += a * b
    return out


def torch_layout() -> Dict[str, np.ndarray]:
    """A PyTorch-style layout: keys named after the module's parameters, not contiguous."""
    rng = np.random.default_rng(3)
    n = GEOMETRY["arrays"] * GEOMETRY["rows"] * GEOMETRY["cols"]
    addr = rng.permutation(n)[:2 * (6 * 9 + 10 * 6)].astype(np.uint32)
    shapes = {"conv1.weight": (6, 9), "fc.weight": (10, 6)}
    out, pos = {}, 0
    for name, (a, b) in shapes.items():
        for sign in ("plus", "minus"):
            out[f"{name}.{sign}"] = addr[pos:pos + a * b].reshape(a, b)
            pos += a * b
    return out


def config(train_examples: int = 100, epochs: int = 2, bad: Optional[List[int]] = None,
           flush_every: int = 2000) -> object:
    return config_from_dict({
        "name": "watch-test", "data": {"train_examples": train_examples, "test_examples": 10},
        "chip": dict(GEOMETRY), "training": {"epochs": epochs, "baseline": True},
        "mapping": {"bad_devices": list(bad or [])},
        "log": {"flush_every_steps": flush_every, "snapshot_every_steps": 0}})


class LogBuilder:
    """Writes a run step by step; `commit()` makes what was written visible to readers."""

    def __init__(self, path: str, layout: Mapping[str, np.ndarray], *, cfg=None,
                 provenance: Optional[dict] = None, seed: int = 0) -> None:
        self.cfg = cfg or config()
        self.layout = dict(layout)
        self.addresses = np.concatenate([a.ravel() for a in layout.values()])
        self.rng = np.random.default_rng(seed)
        self.w = RunLogWriter(path, self.cfg, journal=False)
        prov = {"chip": CHIP}
        prov.update(provenance or {})
        self.w.begin(config=self.cfg.to_dict(), provenance=prov, layout=self.layout)
        self.step = 0
        n = self.addresses.size
        ones = np.ones(n, np.int64)
        self.w.before_program(0, self.addresses, ones, DEFAULT_RESET, "init_reset")
        self.w.on_program(0, self.addresses, ones, DEFAULT_RESET, "init_reset")
        self.g = self.rng.uniform(0.1, 12.0, n).astype(np.float32)
        self.w.before_read(0, self.addresses, "full_read")
        self.w.on_read(0, self.addresses, self.g.copy(), "full_read")
        self.w.on_snapshot(0, self.g.copy(), self._chi())
        self.epoch = 0

    def _chi(self) -> Dict[str, np.ndarray]:
        out = {}
        for k, a in self.layout.items():
            out.setdefault(k.split(".")[0], np.zeros(a.shape, np.float32))
        return out

    def steps(self, n: int, *, monitor: Optional[Dict[str, float]] = None,
              refresh_every: int = 7) -> None:
        for _ in range(n):
            self.step += 1
            s = self.step
            k = int(self.rng.integers(0, 6))
            pulses = 0
            if k:
                pos = np.sort(self.rng.choice(self.addresses.size, k, replace=False))
                a = self.addresses[pos]
                npl = self.rng.integers(1, 4, k).astype(np.int64)
                self.w.before_program_read(s, a, npl, DEFAULT_SET, "update", "readback")
                self.w.on_program(s, a, npl, DEFAULT_SET, "update")
                v = np.clip(self.g[pos] + 0.5 * npl, 0.1, 20.0).astype(np.float32)
                self.g[pos] = v
                self.w.on_read(s, a, v, "readback")
                pulses = int(npl.sum())
            refreshed = 0
            if s % refresh_every == 0:
                pos = np.sort(self.rng.choice(self.addresses.size, 4, replace=False))
                a = self.addresses[pos]
                ones = np.ones(4, np.int64)
                self.w.before_program(s, a, ones, DEFAULT_RESET, "refresh_reset")
                self.w.on_program(s, a, ones, DEFAULT_RESET, "refresh_reset")
                self.w.before_read(s, a, "refresh_readback")
                v = np.full(4, 0.1, np.float32)
                self.g[pos] = v
                self.w.on_read(s, a, v, "refresh_readback")
                refreshed = 2
            self.w.on_step_metrics(s, {"epoch": self.epoch, "loss": float(1.0 / s),
                                       "correct": s % 2, "examples": 1, "set_pulses": pulses,
                                       "refreshes": refreshed})
            if monitor is not None:
                self.w.on_monitor(s, monitor)

    def poll(self, readings: Dict[str, float]) -> None:
        """A monitor poll at the current step (a paused run polls repeatedly)."""
        self.w.on_monitor(self.step, readings)

    def end_epoch(self, **metrics: float) -> None:
        base = {"train_accuracy": 0.5 + 0.1 * self.epoch, "train_loss": 1.0 / (1 + self.epoch),
                "test_accuracy": 0.6 + 0.1 * self.epoch,
                "baseline_test_accuracy": 0.7 + 0.05 * self.epoch, "seconds": 1.0}
        base.update(metrics)
        self.w.before_read(self.step, self.addresses, "full_read")
        self.w.on_read(self.step, self.addresses, self.g.copy(), "full_read")
        self.w.on_epoch_metrics(self.epoch, base)
        self.epoch += 1

    def commit(self) -> None:
        self.w.flush()

    def finish(self, status: str = "completed", reason: Optional[str] = None) -> None:
        self.w.on_snapshot(self.step, self.g.copy(), self._chi())
        self.w.finish(status, reason, {"examples_per_s": 123.0} if status == "completed"
                      else None)
        self.w.close()


def finished_log(path: str, layout=None, epochs: int = 2, steps_per_epoch: int = 50,
                 **kw) -> str:
    b = LogBuilder(path, layout or mlp_layout(), **kw)
    for _ in range(epochs):
        b.steps(steps_per_epoch)
        b.end_epoch()
    b.finish()
    return path
