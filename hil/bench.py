"""`scripts/bench`: every figure of the README's Performance table, measured in one run.

Why one run: figures taken on different days, loads and commits cannot be compared with each
other, and a ratio is only meaningful when both sides were timed under the same conditions.
What each figure means and how it is measured is in docs/benchmarks.md.

  scripts/bench                      # full run (about 2 minutes here), rewrites README's table
  scripts/bench --quick --no-readme  # about 20 s: small N, no 4 M-device point
  scripts/bench --json out.json      # also every figure under stable keys

The wire figures come from hil.bench_wire (`scripts/bench_wire`) and the run-log figures from
scripts/bench_log (its functions are loaded from the script, so the two never disagree on
method; without the script they are reported as null).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hil.config import ExperimentConfig, config_from_dict
from hil.training import (BaselineTrainer, Dataset, MixedPrecisionTrainer, epoch_order,
                          initial_weights, learning_rate, load_dataset, run_experiment)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = np.float32

#: aihwkit 1.2.0, MixedPrecisionCompound over PCMPresetUnitCell, 784-250-10, batch 1, 2 cores,
#: as reported in the project's issue: a reference, not measured by this script.
AIHWKIT_REFERENCE_EXAMPLES_PER_S = 37.0
AIHWKIT_SKIP = ("aihwkit is not installed, so its figure is skipped. It is optional (pcm-hil "
                "never needs it); scripts/setup_bench builds aihwkit 1.2.0 into .venv (about 4-7 "
                "minutes on 2 cores; see docs/benchmarks.md)")
MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"
HEADING = "## Performance"
WIRE_BAUD = 12_000_000

#: Keys every --json output has (tests/test_bench.py checks them).
REQUIRED_KEYS = (
    "mp_examples_per_s", "fp32_examples_per_s", "fp32_opt_examples_per_s", "ratio_fp32",
    "ratio_fp32_opt", "aihwkit_examples_per_s", "ratio_aihwkit", "ratio_aihwkit_reference",
    "emulator_ratio", "emulator_12mbaud_ratio", "log_overhead", "replay_verify_speedup",
    "bytes_per_pulse", "bytes_per_read", "round_trips_per_step", "state_bytes_per_device",
    "scaling_devices", "scaling_networks")

#: Networks of the network-size scaling table: layers, init range, β per layer.
NETWORKS: Dict[str, Tuple[List[int], List[float], List[float]]] = {
    "784-100-10": ([784, 100, 10], [0.2, 0.3], [0.1, 0.3]),
    "784-250-10": ([784, 250, 10], [0.2, 0.3], [0.1, 0.3]),
    "784-500-10": ([784, 500, 10], [0.2, 0.3], [0.1, 0.3]),
    "784-1000-1000-10": ([784, 1000, 1000, 10], [0.2, 0.1, 0.3], [0.1, 0.1, 0.3]),
}


@dataclass(frozen=True)
class Plan:
    """How much work each benchmark does: the modes differ only in sizes, never in method."""

    name: str
    examples: int            # N: training examples of the throughput runs (1 epoch)
    test_examples: int       # held-out examples evaluated at the end of the epoch
    repeats: int             # throughput runs repeated, best kept (the machine is shared)
    aihwkit_examples: int    # aihwkit is ~50x slower: fewer examples
    log_examples: int        # steps of bench_log's overhead runs
    log_repeats: int
    verify_examples: int     # steps of the logged epoch that `replay --verify` re-runs
    synthetic_steps: int     # steps of bench_log's synthetic epoch log (state reconstruction)
    scaling_steps: int       # training steps per scaling point
    device_cols: Tuple[int, ...]    # chip sizes: 1 array x 512 rows x cols
    networks: Tuple[str, ...]


#: The network of the device-count series: small enough for the 0.25 M-device chip
#: (159,020 devices), so one network spans 0.25 M to 4 M devices.
DEVICE_SERIES_NETWORK = "784-100-10"

PLANS = {
    "full": Plan("full", 10_000, 1_000, 3, 2_000, 10_000, 3, 60_000, 60_000, 3_000,
                 (512, 1024, 2048, 8192), ("784-250-10", "784-500-10", "784-1000-1000-10")),
    "quick": Plan("quick", 2_000, 500, 1, 200, 1_000, 1, 1_000, 10_000, 600,
                  (512, 2048), ("784-250-10", "784-500-10")),
    "tiny": Plan("tiny", 300, 100, 1, 30, 200, 1, 200, 2_000, 100, (512, 1024),
                 ("784-250-10", "784-500-10")),
}


def say(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the table."""
    print(msg, file=sys.stderr, flush=True)


# --- configs and data ----------------------------------------------------------------------
def bench_config(examples: int, test_examples: int, network_name: str = "784-250-10",
                 cols: int = 2048) -> ExperimentConfig:
    """The default experiment config, one epoch of `examples`, no baseline, no log."""
    layers, init_range, beta = NETWORKS[network_name]
    d = ExperimentConfig(name="bench").to_dict()
    d["data"].update(train_examples=examples, test_examples=test_examples)
    d["training"].update(epochs=1, baseline=False)
    d["network"].update(layers=list(layers), init_range=list(init_range))
    d["optimizer"]["beta"] = list(beta)
    d["chip"]["cols"] = cols
    return config_from_dict(d, source="bench")


def _sim_url(cfg: ExperimentConfig) -> Tuple[str, Any]:
    return "sim://", cfg.sim_chip_spec()


def _load_script(name: str) -> Optional[ModuleType]:
    """Load scripts/<name> (no .py suffix) as a module, or None when it is not there."""
    path = os.path.join(ROOT, "scripts", name)
    if not os.path.isfile(path):
        return None
    # The scripts re-exec themselves under the project venv unless told not to.
    os.environ.setdefault(f"{name.upper()}_NO_VENV", "1")
    loader = importlib.machinery.SourceFileLoader(f"pcm_hil_script_{name}", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# --- a. throughput: mixed precision and the fp32 loops ------------------------------------
def epoch_examples_per_s(summary: Dict[str, Any]) -> float:
    """Examples per second of the training epoch (the chip's one-off initial programming is
    excluded, so the figure compares with the fp32 loops, which have none)."""
    return summary["examples"] / summary["per_epoch"][0]["seconds"]


def run_in_process(cfg: ExperimentConfig, data: Dataset) -> Dict[str, Any]:
    """One epoch of mixed-precision training on an in-process simulated chip."""
    from hil.backend_url import open_backend
    url, defaults = _sim_url(cfg)
    with open_backend(url, defaults) as be:
        return run_experiment(cfg, be, data=data)


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


# --- c. aihwkit ------------------------------------------------------------------------------
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


# --- b, e. the emulator over a socket ------------------------------------------------------
def wire_runs(cfg: ExperimentConfig, data: Dataset) -> Dict[str, Dict[str, Any]]:
    """Training through the firmware emulator over TCP, unlimited and at 12 Mbaud; each
    result has the run summary, bytes per pulsed device and per read value, round trips per
    step (hil.bench_wire, the same code as `scripts/bench_wire`)."""
    from hil import bench_wire
    out: Dict[str, Dict[str, Any]] = {}
    for mode, baud in (("tcp", 0), ("tcp-12M", WIRE_BAUD)):
        with contextlib.redirect_stdout(sys.stderr):
            out[mode] = bench_wire.run_mode(mode, cfg, data, baud, None)
    return out


# --- d. run log ------------------------------------------------------------------------------
def log_figures(plan: Plan, data: Dataset) -> Dict[str, Any]:
    """Logging overhead, log size, state reconstruction and `replay --verify` speed, by
    scripts/bench_log's own functions."""
    bl = _load_script("bench_log")
    if bl is None or not hasattr(bl, "bench_overhead"):
        say("  scripts/bench_log not found: logging figures are null")
        return {}
    args = argparse.Namespace(examples=plan.log_examples, repeats=plan.log_repeats,
                              epoch_examples=plan.verify_examples,
                              synthetic_steps=plan.synthetic_steps, events_per_step=150,
                              devices=397_520)
    out: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pcm_hil_bench_") as folder, \
            contextlib.redirect_stdout(sys.stderr):
        out.update(bl.bench_overhead(args, folder, data))
        if plan.verify_examples and hasattr(bl, "bench_epoch"):
            out.update(bl.bench_epoch(args, folder, data))
        if plan.synthetic_steps and hasattr(bl, "bench_synthetic"):
            out.update(bl.bench_synthetic(args, folder))
    return out


# --- f. scaling ------------------------------------------------------------------------------
def scaling_point(cfg: ExperimentConfig, data: Dataset, steps: int) -> Dict[str, Any]:
    """Step time and memory of one chip size and network: the chip and the trainer are built
    and initialised under tracemalloc (numpy's buffers are traced), then `steps` training
    steps are timed with tracing off."""
    spec = cfg.sim_chip_spec()
    tracemalloc.start()
    try:
        chip = spec.build()
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
           "chip": f"{spec.arrays}x{spec.rows}x{spec.cols}",
           "mapped_devices": trainer.mapping.n_devices,
           "steps": steps, "step_us": 1e6 * dt / steps,
           "chip_state_bytes": int(chip.state_bytes),
           "state_bytes_per_device": chip.state_bytes / n_dev,
           "chip_traced_bytes": int(chip_bytes), "traced_bytes": int(traced),
           "traced_peak_bytes": int(peak)}
    chip.close()
    return row


def scaling_tables(plan: Plan, data: Dataset) -> Tuple[List[dict], List[dict]]:
    """Step time against chip size (network fixed at DEVICE_SERIES_NETWORK) and against
    network size (on the smallest of the 1 M / 4 M chips that holds it)."""
    by_devices = []
    for cols in plan.device_cols:
        cfg = bench_config(data.train_x.shape[0], 1, DEVICE_SERIES_NETWORK, cols=cols)
        say(f"  chip 1x512x{cols} ({512 * cols / 2**20:.2f} M devices), "
            f"{DEVICE_SERIES_NETWORK}")
        by_devices.append(scaling_point(cfg, data, plan.scaling_steps))
    by_network = []
    for name in plan.networks:
        layers = NETWORKS[name][0]
        need = 2 * sum((a + 1) * b for a, b in zip(layers[:-1], layers[1:]))
        cols = 2048 if need <= 512 * 2048 else 8192
        say(f"  network {name} ({need:,} devices) on 1x512x{cols}")
        by_network.append(scaling_point(bench_config(data.train_x.shape[0], 1, name, cols),
                                        data, plan.scaling_steps))
    return by_devices, by_network


def growth_exponent(rows: Sequence[dict]) -> Optional[float]:
    """k in step_time ∝ devices^k between the smallest and largest chip (≤ 1: at most
    linear)."""
    if len(rows) < 2:
        return None
    a, b = rows[0], rows[-1]
    return math.log(b["step_us"] / a["step_us"]) / math.log(b["devices"] / a["devices"])


# --- the run -------------------------------------------------------------------------------
def _best(runs: Sequence[float]) -> float:
    return max(runs)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def run(plan: Plan) -> Dict[str, Any]:
    """Every figure, measured in this run."""
    t_start = time.perf_counter()
    r: Dict[str, Any] = {"mode": plan.name, "examples": plan.examples,
                         "load_average_start": list(os.getloadavg()), "cpu_count": os.cpu_count()}
    cfg = bench_config(plan.examples, plan.test_examples)
    n_data = max(plan.examples, plan.log_examples, plan.verify_examples)
    say(f"loading MNIST ({n_data} training examples)")
    full = load_dataset(bench_config(n_data, 1000))
    data = full.head(plan.examples, plan.test_examples)

    say(f"a. throughput, {plan.examples} examples, best of {plan.repeats}")
    mp, fp, fo, summary = [], [], [], None
    for rep in range(plan.repeats):
        summary = run_in_process(cfg, data)
        mp.append(epoch_examples_per_s(summary))
        fp.append(fp32_textbook_examples_per_s(cfg, data))
        fo.append(fp32_opt_examples_per_s(cfg, data))
        say(f"  repeat {rep + 1}: mixed precision {mp[-1]:.0f}, fp32 textbook {fp[-1]:.0f}, "
            f"fp32 optimised {fo[-1]:.0f} examples/s")
    assert summary is not None
    r.update(mp_examples_per_s=_best(mp), fp32_examples_per_s=_best(fp),
             fp32_opt_examples_per_s=_best(fo), mp_test_accuracy=summary["test_accuracy"],
             mp_examples_per_s_with_init=summary["examples_per_s"])
    r["ratio_fp32"] = r["mp_examples_per_s"] / r["fp32_examples_per_s"]
    r["ratio_fp32_opt"] = r["mp_examples_per_s"] / r["fp32_opt_examples_per_s"]

    n_aihw = min(plan.aihwkit_examples, plan.examples)
    say(f"c. aihwkit, {n_aihw} examples")
    r["aihwkit_examples_per_s"], r["aihwkit_skip_reason"] = aihwkit_examples_per_s(
        cfg, data, n_aihw)
    if r["aihwkit_skip_reason"]:
        say("  skipped: " + r["aihwkit_skip_reason"])
    r["ratio_aihwkit"] = _ratio(r["mp_examples_per_s"], r["aihwkit_examples_per_s"])
    r["aihwkit_reference_examples_per_s"] = AIHWKIT_REFERENCE_EXAMPLES_PER_S
    r["ratio_aihwkit_reference"] = r["mp_examples_per_s"] / AIHWKIT_REFERENCE_EXAMPLES_PER_S

    say(f"b, e. emulator over TCP, unlimited and {WIRE_BAUD / 1e6:.0f} Mbaud")
    wire = wire_runs(cfg, data)
    for key, mode in (("emulator", "tcp"), ("emulator_12mbaud", "tcp-12M")):
        s = wire[mode]["summary"]
        r[f"{key}_examples_per_s"] = epoch_examples_per_s(s)
        r[f"{key}_ratio"] = r[f"{key}_examples_per_s"] / r["mp_examples_per_s"]
        r[f"{key}_identical"] = s["state_digest"] == summary["state_digest"]
        if not r[f"{key}_identical"]:
            say(f"  WARNING: the {mode} run's state digest differs from the in-process run")
    tcp = wire["tcp"]
    r["bytes_per_pulse"] = tcp["bytes_per_pulsed_device"]
    r["bytes_per_read"] = tcp["bytes_per_read_value"]
    r["round_trips_per_step"] = tcp["round_trips_per_step"]

    say(f"d. run log: overhead over {plan.log_examples} steps, --verify of "
        f"{plan.verify_examples} steps")
    lf = log_figures(plan, full)
    r["log"] = lf
    r["log_overhead"] = lf.get("overhead_ratio")
    r["replay_verify_speedup"] = (1.0 / lf["verify_over_live"]
                                  if lf.get("verify_over_live") else None)
    r["replay_verify_ok"] = lf.get("verify_ok")
    # A log's fixed part (initial programming, snapshots) dwarfs a short run's steps, so the
    # size is only reported for a whole 60k-step epoch (full mode), never extrapolated.
    r["log_bytes_per_epoch"] = (lf["epoch_log_bytes"] if lf.get("epoch_steps", 0) >= 60_000
                                else None)
    r["reconstruct_seconds_worst"] = lf.get("reconstruct_seconds_worst")

    say(f"f. scaling, {plan.scaling_steps} steps per point")
    r["scaling_devices"], r["scaling_networks"] = scaling_tables(plan, data)
    r["step_time_device_exponent"] = growth_exponent(r["scaling_devices"])
    default = [row for row in r["scaling_devices"] if row["devices"] == 512 * 2048]
    row = default[0] if default else r["scaling_devices"][0]
    r["state_bytes_per_device"] = row["state_bytes_per_device"]
    r["load_average_end"] = list(os.getloadavg())
    r["seconds"] = time.perf_counter() - t_start
    return r


# --- output --------------------------------------------------------------------------------
def _x(v: Optional[float], digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}×"


def _num(v: Optional[float], fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def table(r: Dict[str, Any]) -> List[str]:
    """The Performance table as markdown lines (what README's marked region holds)."""
    cmd = "`scripts/bench`"
    mp = r["mp_examples_per_s"]
    rows = [
        ("training throughput, mixed precision, in-process simulated chip (784-250-10, "
         "batch 1)", f"{mp:,.0f} examples/s", "", cmd),
        (f"… against a textbook fp32 numpy loop ({r['fp32_examples_per_s']:,.0f} examples/s)",
         _x(r["ratio_fp32"]), "≥ 0.5×", cmd),
        (f"… against the optimised fp32 baseline ({r['fp32_opt_examples_per_s']:,.0f} "
         "examples/s)", _x(r["ratio_fp32_opt"]), "", cmd),
        ("… against aihwkit MixedPrecisionCompound (PCMPresetUnitCell), measured in this run",
         _x(r["ratio_aihwkit"], 1) if r["ratio_aihwkit"] is not None
         else "skipped (aihwkit not installed, docs/benchmarks.md)", "≥ 50×", cmd),
        ("… against aihwkit 1.2.0's reference figure of 37 examples/s (2 cores, batch 1; "
         "not measured here)", _x(r["ratio_aihwkit_reference"], 1), "≥ 50×", cmd),
        ("emulator over TCP, unlimited link, relative to in-process",
         _x(r["emulator_ratio"]), "≥ 0.5×", cmd),
        ("emulator over TCP, 12 Mbaud modelled link, relative to in-process",
         _x(r["emulator_12mbaud_ratio"]), "", cmd),
        ("logging overhead (step time with / without the run log)",
         _num(r["log_overhead"], "{:.3f}"), "≤ 1.15", cmd),
        ("run-log size of one 60k-step epoch",
         "n/a (full mode only)" if r["log_bytes_per_epoch"] is None
         else f"{r['log_bytes_per_epoch'] / 1e6:.1f} MB", "", cmd),
        ("full conductance state (397,520 devices) at any step of a "
         f"{r['log'].get('synthetic_steps', 0):,}-step synthetic log, worst case",
         _num(r["reconstruct_seconds_worst"], "{:.2f} s"), "≤ 1 s", cmd),
        ("`replay --verify` speed relative to the live run",
         _x(r["replay_verify_speedup"]), "≥ 5×", cmd),
        ("bytes on the wire per pulsed device (PROGRAM request + ACK, or PROGRAM_READ "
         "request; frames included)", _num(r["bytes_per_pulse"]), "≤ 4", cmd),
        ("bytes on the wire per read value (READ request + reply, or PROGRAM_READ reply; "
         "frames included; the value itself is a 2-byte ADC code)",
         _num(r["bytes_per_read"]), "≤ 2 + framing", cmd),
        ("round trips per training step (PROGRAM_READ, PROGRAM, READ; init and refreshes "
         "included)", _num(r["round_trips_per_step"]), "", cmd),
        ("simulated-chip state per device", f"{r['state_bytes_per_device']:g} bytes", "≤ 16",
         cmd),
    ]
    for row in r["scaling_devices"]:
        rows.append((f"step time, {row['network']} on a {row['devices'] / 2**20:g} M-device chip "
                     f"({row['chip']}); chip + trainer memory",
                     f"{row['step_us']:,.0f} µs; {row['traced_bytes'] / 2**20:.0f} MiB", "",
                     cmd))
    k = r.get("step_time_device_exponent")
    if k is not None:
        rows.append(("step-time growth with device count (exponent k of devices^k)",
                     f"{k:.2f}".replace("-0.00", "0.00"), "≤ 1", cmd))
    for row in r["scaling_networks"]:
        rows.append((f"step time, {row['network']} ({row['mapped_devices']:,} devices, "
                     f"{row['devices'] / 2**20:g} M-device chip); chip + trainer memory",
                     f"{row['step_us']:,.0f} µs; {row['traced_bytes'] / 2**20:.0f} MiB", "",
                     cmd))
    lines = ["| figure | value | target | command |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    la = r.get("load_average_start") or [0.0]
    lines.append("")
    lines.append(f"Measured by `scripts/bench` ({r['mode']} mode, N = {r['examples']:,} "
                 f"examples, {r.get('cpu_count')} cores, load average {la[0]:.2f} at the "
                 "start); every figure comes from the same run. docs/benchmarks.md says how "
                 "each is measured.")
    return lines


def write_readme(path: str, lines: List[str]) -> None:
    """Replace the lines between the bench markers; without markers, put them right under
    the Performance heading, in place of the table that directly follows it, if any."""
    with open(path, encoding="utf-8") as f:
        text = f.read().split("\n")
    block = [MARK_START, *lines, MARK_END]
    if MARK_START in text and MARK_END in text:
        a, b = text.index(MARK_START), text.index(MARK_END)
        if b < a:
            raise SystemExit(f"{path}: {MARK_END} comes before {MARK_START}")
        text[a:b + 1] = block
    else:
        try:
            h = text.index(HEADING)
        except ValueError:
            raise SystemExit(f"{path}: no '{HEADING}' heading to put the table under") \
                from None
        i = h + 1
        while i < len(text) and not text[i].strip():
            i += 1
        j = i
        while j < len(text) and text[j].startswith("|"):
            j += 1
        text[h + 1:j] = ["", *block] + ([""] if j < len(text) and text[j].strip() else [])
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true",
                   help="small N, no 4 M-device point, no largest network (under 2 minutes)")
    g.add_argument("--tiny", action="store_true", help="a few hundred examples (the tests)")
    p.add_argument("--examples", type=int, help="override N, the throughput runs' examples")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    p.add_argument("--readme", metavar="FILE", default=os.path.join(ROOT, "README.md"),
                   help="the README whose Performance table is rewritten")
    args = p.parse_args(argv)
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.examples:
        from dataclasses import replace
        plan = replace(plan, examples=args.examples)
    r = run(plan)
    lines = table(r)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2, default=_json_default)
    if not args.no_readme:
        write_readme(args.readme, lines)
        say(f"wrote the table into {os.path.relpath(args.readme)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
