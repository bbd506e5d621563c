"""Fakes shared by the run-log, journal and replay tests.

`fake_run` is a small hand-driven training-like loop on a SimulatedChip through ChipIO, so
tests exercise the real code paths and real HDF5 files without the trainer; `Capture`
keeps in memory what a log of it must hold.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import h5py
import numpy as np

from drivers.geometry import Geometry
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil.chip_io import ChipIO
from hil.config import ExperimentConfig, LogConfig, replace
from hil.recorder import Recorder
from hil.run_log import RunLogWriter
from sim_backend.pcm_model import PcmModel
from sim_backend.sim_chip import SimulatedChip

GEOMETRY = Geometry(1, 64, 64)
SHAPES = [(6, 4), (5, 3)]
N_DEVICES = 2 * sum(a * b for a, b in SHAPES)


def small_cfg(flush_every: int = 25, snapshot_every: int = 40) -> ExperimentConfig:
    cfg = ExperimentConfig(name="fake")
    return replace(cfg, log=LogConfig(snapshot_every_steps=snapshot_every,
                                      flush_every_steps=flush_every))


def fake_layout() -> Dict[str, np.ndarray]:
    out, pos = {}, 0
    for i, (a, b) in enumerate(SHAPES):
        for sign in ("plus", "minus"):
            out[f"layer{i}.{sign}"] = np.arange(pos, pos + a * b, dtype=np.uint32).reshape(a, b)
            pos += a * b
    return out


class Capture(Recorder):
    """Keeps everything in memory: the expected content of a log."""

    def __init__(self) -> None:
        self.reads: List[tuple] = []
        self.programs: List[tuple] = []
        self.snapshots: List[tuple] = []
        self.step_metrics: List[tuple] = []
        self.epoch_metrics: List[tuple] = []

    def on_read(self, step, addresses, values, purpose):
        self.reads.append((step, addresses.copy(), values.copy(), purpose))

    def on_program(self, step, addresses, n_pulses, pulse, purpose):
        self.programs.append((step, addresses.copy(), np.asarray(n_pulses).copy(), pulse,
                              purpose))

    def on_snapshot(self, step, g_us, chi):
        self.snapshots.append((step, g_us.copy(), {k: v.copy() for k, v in chi.items()}))

    def on_step_metrics(self, step, metrics):
        self.step_metrics.append((step, dict(metrics)))

    def on_epoch_metrics(self, epoch, metrics):
        self.epoch_metrics.append((epoch, dict(metrics)))


class Tee(Recorder):
    """Forwards every hook to several recorders."""

    def __init__(self, *recs: Recorder) -> None:
        self.recs = recs

    def _all(self, name: str, *a: Any, **k: Any) -> None:
        for r in self.recs:
            getattr(r, name)(*a, **k)

    def begin(self, **k):
        self._all("begin", **k)

    def on_read(self, *a):
        self._all("on_read", *a)

    def before_program(self, *a):
        self._all("before_program", *a)

    def on_program(self, *a):
        self._all("on_program", *a)

    def on_snapshot(self, *a):
        self._all("on_snapshot", *a)

    def on_step_metrics(self, *a):
        self._all("on_step_metrics", *a)

    def on_epoch_metrics(self, *a):
        self._all("on_epoch_metrics", *a)

    def finish(self, *a):
        self._all("finish", *a)


def fake_run(recorder: Recorder, steps: int = 120, seed: int = 0, snapshot_every: int = 40,
             backend: Any = None, finish: bool = True, per_step: Optional[callable] = None,
             width: int = 1) -> Dict[str, Any]:
    """A training-like loop: init, per step an update batch + read-back, periodic refresh,
    periodic snapshots, epoch metrics. Decisions depend on the values read, so a replay that
    served wrong values would diverge. `width` scales the number of devices per step."""
    chip = backend or SimulatedChip(PcmModel.preset("jap"), GEOMETRY, seed=seed)
    io = ChipIO(chip, recorder)
    layout = fake_layout()
    addr = np.concatenate([a.ravel() for a in layout.values()])
    n = addr.size
    recorder.begin(config=small_cfg().to_dict(),
                   provenance={"chip": chip.info().to_dict(), "seed": seed},
                   layout=layout)
    io.step = 0
    io.program(addr, np.ones(n, np.int64), DEFAULT_RESET, "init_reset")
    cache = io.read(addr, "full_read").astype(np.float32)
    chi_sizes = [a * b for a, b in SHAPES]
    chi = np.zeros(sum(chi_sizes), np.float32)

    def chi_dict():
        return {"layer0": chi[:chi_sizes[0]].reshape(SHAPES[0]),
                "layer1": chi[chi_sizes[0]:].reshape(SHAPES[1])}

    def pair(w):
        # weight w → (plus address, minus address) in the layout
        lay = 0 if w < chi_sizes[0] else 1
        base = 0 if lay == 0 else 2 * chi_sizes[0]
        k = w - (0 if lay == 0 else chi_sizes[0])
        return base + k, base + chi_sizes[lay] + k

    plus_pos = np.array([pair(w)[0] for w in range(chi.size)])
    minus_pos = np.array([pair(w)[1] for w in range(chi.size)])
    recorder.on_snapshot(0, cache.copy(), chi_dict())
    rng = np.random.default_rng(seed)
    total_set = 0
    for step in range(1, steps + 1):
        io.step = step
        chi += rng.normal(0, 0.6 * width, chi.size).astype(np.float32)
        hit = np.flatnonzero(np.abs(chi) >= 1.0)
        n_p = np.minimum(np.floor(np.abs(chi[hit])), 3).astype(np.int64)
        pos = np.where(chi[hit] > 0, plus_pos[hit], minus_pos[hit])
        chi[hit] -= np.sign(chi[hit]) * n_p
        refreshed = 0
        if hit.size:
            io.program(addr[pos], n_p, DEFAULT_SET, "update")
            cache[pos] = io.read(addr[pos], "readback")
            total_set += int(n_p.sum())
        if step % 15 == 0:
            sat = np.flatnonzero(np.maximum(cache[plus_pos], cache[minus_pos]) > 6.0)
            if sat.size:
                both = np.concatenate([plus_pos[sat], minus_pos[sat]])
                io.program(addr[both], np.ones(both.size, np.int64), DEFAULT_RESET,
                           "refresh_reset")
                cache[both] = io.read(addr[both], "refresh_readback")
                refreshed = int(sat.size)
        recorder.on_step_metrics(step, {"loss": float(np.mean(np.abs(chi))),
                                        "set_pulses": int(n_p.sum()),
                                        "refreshes": refreshed})
        if snapshot_every and step % snapshot_every == 0:
            recorder.on_snapshot(step, cache.copy(), chi_dict())
        if per_step:
            per_step(step)
    cache = io.read(addr, "full_read")
    recorder.on_epoch_metrics(0, {"train_accuracy": 0.5, "test_accuracy": float(cache.mean()),
                                  "seconds": 1.23})
    recorder.on_snapshot(steps, cache.copy(), chi_dict())
    summary = {"name": "fake", "set_pulses": total_set, "steps": steps}
    if finish:
        recorder.finish("completed", None, summary)
    return summary


def host_view(cap: Capture, step: int, n: int) -> np.ndarray:
    """Reference: replay every read up to `step` one by one (slow, obviously right)."""
    g = np.full(n, np.nan, np.float32)
    for s, a, v, _ in cap.reads:
        if s > step:
            break
        g[a] = v
    return g


def as_schema_1_0(f: Any) -> None:
    """Edit an open (r+) h5py file into what a schema 1.0 writer made: no /matvec, a
    /commit of the 18 fields before `matvec_batches`."""
    del f["matvec"]
    f.attrs["schema_version"] = "1.0"
    fields = [n.decode() if isinstance(n, bytes) else str(n) for n in f["commit"].attrs["fields"]]
    keep = fields.index("matvec_batches")
    values = f["commit"][:keep]
    del f["commit"]
    f["commit"] = values
    f["commit"].attrs["fields"] = np.array(fields[:keep], dtype=object)


def fake_log(folder: Any, **run: Any) -> Tuple[str, Capture]:
    """A finished fake run logged in `folder`: (its path, a Capture of what it must hold)."""
    path = str(folder / "run.h5")
    cap = Capture()
    fake_run(Tee(RunLogWriter(path, small_cfg()), cap), **run)
    return path, cap


def tamper_one_pulse(path: str, batch: int = 10, delta: int = 1) -> tuple:
    """Change n_pulses of the first device of a logged batch; returns (step, seq, device)."""
    with h5py.File(path, "r+") as f:
        off = int(f["pulses/batches/offset"][batch])
        f["pulses/events/n_pulses"][off] = int(f["pulses/events/n_pulses"][off]) + delta
        return (int(f["pulses/batches/step"][batch]), int(f["pulses/batches/seq"][batch]),
                int(f["pulses/events/address"][off]))


def set_arithmetic(path: str, value: Optional[str]) -> None:
    """Make a log claim another arithmetic in its provenance (None: none, as a log written
    before the arithmetic was recorded)."""
    with h5py.File(path, "r+") as f:
        prov = json.loads(f["meta/provenance_json"][()].decode())
        prov.pop("arithmetic", None)
        if value is not None:
            prov["arithmetic"] = value
        del f["meta/provenance_json"]
        f["meta"].create_dataset("provenance_json", data=json.dumps(prov),
                                 dtype=h5py.string_dtype("utf-8"))
