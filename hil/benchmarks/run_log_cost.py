"""`scripts/bench_log`: what the run log costs: logging overhead, file size, state
reconstruction, `replay --verify` speed.

  scripts/bench_log                       # everything, with defaults (a few minutes)
  scripts/bench_log --examples 5000 --synthetic-steps 20000
  scripts/bench_log --skip-synthetic --json

1. overhead     the same training run (real trainer, simulated chip) without and with the run
                log, alternating (off-on, on-off, ...), best of --repeats; reports time per
                step and the ratio.
2. size         bytes per step of that run's log, extrapolated to a 60k-step MNIST epoch.
3. reconstruct  a synthetic one-epoch log at the worst case of a dense epoch (--synthetic-steps steps,
                --events-per-step pulsed and read-back devices per step, snapshots only at the
                start and the end): time to rebuild the conductance of every mapped device at
                arbitrary steps, including the step just before the final snapshot (every read
                of the epoch must be scanned).
4. verify       `pcm-hil replay --verify` on the logged run vs the live run, same data.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from hil.benchmarks.common import open_sim_chip


def _config(examples: int):
    from hil.config import ExperimentConfig, config_from_dict
    d = ExperimentConfig(name="bench").to_dict()
    d["data"].update(train_examples=examples, validation_examples=0, test_examples=1000)
    d["training"].update(epochs=1, baseline=False)
    return config_from_dict(d)


def _run(cfg, data, path=None) -> tuple:
    """One training run on the simulated chip, logged to `path` if given."""
    from hil.run_log import RunLogWriter
    from hil.training import run_experiment

    if path and os.path.exists(path):
        os.remove(path)
    rec = RunLogWriter(path, cfg) if path else None
    with open_sim_chip(cfg) as be:
        t0 = time.perf_counter()
        s = run_experiment(cfg, be, rec, data=data)
        return s, time.perf_counter() - t0


def bench_overhead(args: argparse.Namespace, folder: str, data) -> dict:
    """Epoch time without and with the log, best of the repeats. The order alternates
    (off-on, on-off, ...) so that drift in the machine's load falls on both modes alike, and
    every run starts after a full garbage collection, so that no run pays for collecting
    the garbage of the run before it."""
    import gc

    cfg = _config(args.examples)
    times = {"off": [], "on": []}
    path = os.path.join(folder, "overhead.h5")
    for r in range(args.repeats):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            gc.collect()
            s, total = _run(cfg, data, path if mode == "on" else None)
            times[mode].append(s["per_epoch"][0]["seconds"])
            print(f"  repeat {r + 1} log {mode:3}: epoch {times[mode][-1]:.2f} s, "
                  f"whole run {total:.2f} s", flush=True)
    steps = s["steps"]
    off, on = min(times["off"]), min(times["on"])
    return {"steps": steps, "step_us_without_log": 1e6 * off / steps,
            "step_us_with_log": 1e6 * on / steps, "overhead_ratio": on / off}


def bench_epoch(args: argparse.Namespace, folder: str, data) -> dict:
    """One full logged epoch: file size; then --verify on it."""
    from hil.replay.verify import verify_run
    from hil.run_log import RunLog

    cfg = _config(args.epoch_examples)
    path = os.path.join(folder, "epoch.h5")
    s, live = _run(cfg, data, path)
    with RunLog(path) as log:
        c = log.counts
        out = {"epoch_steps": s["steps"], "epoch_log_bytes": log.file_size,
               "epoch_read_events": c["read_events"], "epoch_pulse_events": c["pulse_events"],
               "epoch_live_seconds": live}
    print(f"  live run {live:.1f} s, log {out['epoch_log_bytes'] / 1e6:.1f} MB; verifying",
          flush=True)
    rep = verify_run(path, data=data)
    out.update({"verify_ok": rep.ok, "verify_seconds": rep.seconds,
                "verify_over_live": rep.seconds / live, "verify_message": rep.message})
    return out


def bench_synthetic(args: argparse.Namespace, folder: str) -> dict:
    from drivers.pulse import DEFAULT_SET
    from hil.config import ExperimentConfig, LogConfig, replace
    from hil.run_log import RunLog, RunLogWriter

    n_dev = args.devices
    k = args.events_per_step
    steps = args.synthetic_steps
    cfg = replace(ExperimentConfig(name="synthetic"),
                  log=LogConfig(snapshot_every_steps=60000, flush_every_steps=1000))
    path = os.path.join(folder, "synthetic.h5")
    if os.path.exists(path):
        os.remove(path)
    half = n_dev // 2
    cols = 250
    layout = {"layer0.plus": np.arange(half, dtype=np.uint32)[: half - half % cols]
              .reshape(-1, cols)}
    layout["layer0.minus"] = (np.arange(layout["layer0.plus"].size, dtype=np.uint32)
                              + half).reshape(-1, cols)
    n_dev = 2 * layout["layer0.plus"].size
    rng = np.random.default_rng(0)
    # Pre-draw the per-step device sets so the timing is the log's, not the RNG's.
    pool = [np.sort(rng.choice(n_dev, k, replace=False)).astype(np.uint32)
            for _ in range(64)]
    w = RunLogWriter(path, cfg)
    w.begin(config=cfg.to_dict(), provenance={}, layout=layout)
    g = rng.uniform(0.1, 10, n_dev).astype(np.float32)
    chi = {"layer0": np.zeros(layout["layer0.plus"].shape, np.float32)}
    w.on_snapshot(0, g, chi)
    t_hooks = 0.0
    n_p = np.ones(k, np.int64)
    for s in range(1, steps + 1):
        a = pool[s % 64]
        v = rng.uniform(0.1, 10, k).astype(np.float32) if s % 64 == 0 else g[a] + 0.01
        t0 = time.perf_counter()
        w.before_program(s, a, n_p, DEFAULT_SET, "update")
        w.on_program(s, a, n_p, DEFAULT_SET, "update")
        w.on_read(s, a, v, "readback")
        w.on_step_metrics(s, {"loss": 0.5, "set_pulses": k, "refreshes": 0})
        t_hooks += time.perf_counter() - t0
        g[a] = v
    w.on_snapshot(steps, g, chi)
    t0 = time.perf_counter()
    w.finish("completed", None, {})
    t_hooks += time.perf_counter() - t0
    out = {"synthetic_steps": steps, "synthetic_events": 2 * k * steps,
           "synthetic_devices": n_dev, "synthetic_log_bytes": os.path.getsize(path),
           "synthetic_log_us_per_step": 1e6 * t_hooks / steps}
    with RunLog(path) as log:
        probes = [steps - 1, steps // 2, 1234 % steps, steps]
        res = {}
        for step in probes:
            t0 = time.perf_counter()
            gs = log.conductance(step)
            res[step] = time.perf_counter() - t0
            assert gs.size == n_dev
        # correctness spot check: the step before the final snapshot equals it except for the
        # last step's reads (which the final snapshot includes)
        last = log.conductance(steps)
        assert np.array_equal(last, log.snapshot_g(-1))
    out["reconstruct_seconds"] = {str(s): t for s, t in res.items()}
    out["reconstruct_seconds_worst"] = max(res.values())
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_log", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=10000,
                   help="training examples (= steps) of the overhead runs (default 10000)")
    p.add_argument("--epoch-examples", type=int, default=60000,
                   help="examples of the logged epoch measured for size and --verify speed "
                        "(default 60000, a full MNIST epoch; 0 skips it)")
    p.add_argument("--repeats", type=int, default=3, help="repeats, best kept (default 3)")
    p.add_argument("--synthetic-steps", type=int, default=60000,
                   help="steps of the synthetic one-epoch log (default 60000)")
    p.add_argument("--events-per-step", type=int, default=150,
                   help="pulsed (and read-back) devices per synthetic step (default 150: "
                        "18M events per 60k-step epoch)")
    p.add_argument("--devices", type=int, default=397520,
                   help="mapped devices of the synthetic log (default: 784-250-10 MLP)")
    p.add_argument("--skip-training", action="store_true", help="skip benchmarks 1, 2, 4")
    p.add_argument("--skip-synthetic", action="store_true", help="skip benchmark 3")
    p.add_argument("--keep", metavar="DIR", help="write the logs here and keep them")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    folder = args.keep or tempfile.mkdtemp(prefix="bench_log_")
    os.makedirs(folder, exist_ok=True)
    results: dict = {}
    if not args.skip_training:
        from hil.training import load_dataset
        data = load_dataset(_config(max(args.examples, args.epoch_examples, 1)))
        print(f"1. logging overhead: {args.examples} steps, best of {args.repeats}",
              flush=True)
        results.update(bench_overhead(args, folder, data))
        if args.epoch_examples:
            print(f"2+4. one logged epoch of {args.epoch_examples} steps, then --verify",
                  flush=True)
            results.update(bench_epoch(args, folder, data))
    if not args.skip_synthetic:
        print(f"3. synthetic one-epoch log: {args.synthetic_steps} steps x "
              f"{2 * args.events_per_step} events", flush=True)
        results.update(bench_synthetic(args, folder))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        r = results
        print()
        if "overhead_ratio" in r:
            print(f"logging overhead      {r['step_us_without_log']:.0f} us/step without, "
                  f"{r['step_us_with_log']:.0f} us/step with the log: x{r['overhead_ratio']:.3f} "
                  f"({100 * (r['overhead_ratio'] - 1):+.1f} %)")
        if "epoch_log_bytes" in r:
            ev = r["epoch_read_events"] + r["epoch_pulse_events"]
            print(f"log size              {r['epoch_log_bytes'] / 1e6:.1f} MB for one epoch of "
                  f"{r['epoch_steps']:,} steps ({ev:,} events, "
                  f"{r['epoch_log_bytes'] / ev:.1f} B/event)")
            print(f"verify                {r['verify_seconds']:.1f} s vs live run "
                  f"{r['epoch_live_seconds']:.1f} s: x{r['verify_over_live']:.2f} "
                  f"({'ok' if r['verify_ok'] else 'FAILED: ' + r['verify_message']})")
        if "reconstruct_seconds_worst" in r:
            print(f"synthetic epoch log   {r['synthetic_steps']:,} steps, "
                  f"{r['synthetic_events']:,} events, {r['synthetic_devices']:,} devices: "
                  f"{r['synthetic_log_bytes'] / 1e6:.0f} MB, logging "
                  f"{r['synthetic_log_us_per_step']:.1f} us/step")
            rs = ", ".join(f"step {s}: {t:.3f} s" for s, t in r["reconstruct_seconds"].items())
            print(f"reconstruct state     {rs} (worst {r['reconstruct_seconds_worst']:.3f} s)")
    if not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
