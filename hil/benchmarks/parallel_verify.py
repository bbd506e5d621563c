"""`scripts/bench_verify`: `pcm-hil replay --verify --workers N` against the serial
`--verify` and the live run, on a real log.

  scripts/bench_verify                                  # quick config, workers 1 and 2
  scripts/bench_verify --config configs/mnist_mlp.yaml --workers 1,2,4,8,16
  scripts/bench_verify --log runs/day.h5 --workers 1,16 --json

Trains the config (simulated chip) into a log with a snapshot every --snapshot-every steps
(unless --log names one), then verifies it serially once and with each N of --workers,
each run loading its own data as the command does. Prints the times, the speed-up over the
serial verification, the ratio to the live run, and where a split run's time went: plan,
starting the workers, the segments, the merge, and the longest segment's set-up (opening
the log, seeking, restoring its state) - the parts that must not grow with the log.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Optional, Sequence

from hil.benchmarks.common import say


def _train(config: str, snapshot_every: int, path: str) -> float:
    """The config's run, logged to `path`; returns its training time (s)."""
    from hil.config import config_from_dict, load_config
    from hil.run_log import RunLogWriter
    from hil.training import run_experiment

    d = load_config(config).to_dict()
    d["log"]["snapshot_every_steps"] = snapshot_every
    cfg = config_from_dict(d, source=config)
    t0 = time.perf_counter()
    with cfg.sim_chip_spec().build() as chip:
        s = run_experiment(cfg, chip, RunLogWriter(path, cfg))
    say(f"  trained {s['steps']:,} steps in {time.perf_counter() - t0:.1f} s")
    return float(s["train_seconds"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quick.yaml",
                   help="experiment to log and verify (default configs/quick.yaml)")
    p.add_argument("--snapshot-every", type=int, default=2500, metavar="STEPS",
                   help="log.snapshot_every_steps of the logged run (default 2500)")
    p.add_argument("--log", metavar="RUN.h5", help="verify this log instead of training one")
    p.add_argument("--workers", default="1,2", metavar="LIST",
                   help="comma-separated worker counts; 1 is the serial --verify (default 1,2)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    from hil.replay.verify import verify_run
    from hil.run_log import RunLog

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as folder:
        path = args.log or os.path.join(folder, "run.h5")
        if args.log is None:
            say(f"logging {args.config}, a snapshot every {args.snapshot_every} steps")
            live = _train(args.config, args.snapshot_every, path)
        else:
            with RunLog(path) as log:
                live = float((log.status.summary or {}).get("train_seconds") or "nan")
        with RunLog(path) as log:
            out = {"log": os.path.basename(path), "steps": int(log.counts["last_step"]),
                   "snapshots": int(log.counts["snapshots"]),
                   "log_bytes": os.path.getsize(path), "live_seconds": live,
                   "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "runs": []}
        serial = None
        for n in counts:
            say(f"verifying with --workers {n}")
            rep = verify_run(path, workers=n)
            if not rep.ok:
                raise SystemExit(f"scripts/bench_verify: verification failed: {rep.message}")
            serial = rep.seconds if n == 1 else serial
            out["runs"].append({"workers": n, "segments": rep.segments,
                                "seconds": rep.seconds,
                                "speedup": serial / rep.seconds if serial else None,
                                "over_live": rep.seconds / live, "note": rep.note,
                                "timings": rep.timings})
        out["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"log: {out['steps']:,} steps, {out['snapshots']} snapshots, "
          f"{out['log_bytes'] / 1e6:.1f} MB; live run {live:.1f} s; {out['cpus']} CPUs, "
          f"load {out['load_average']:.1f} -> {out['load_average_end']:.1f}")
    for r in out["runs"]:
        t = r["timings"]
        split = (f"  plan {t['plan']:.2f} s, workers start {t['workers_start']:.2f} s, "
                 f"segments {t['segments']:.1f} s, merge {t['merge'] * 1e3:.1f} ms, "
                 f"longest segment set-up {t['segment_setup_max']:.2f} s "
                 f"+ data {t['segment_data_max']:.2f} s" if r["segments"] > 1 else "")
        speed = f", x{r['speedup']:.2f} vs serial" if r["speedup"] else ""
        print(f"--workers {r['workers']:>2}: {r['segments']:>2} segment(s), "
              f"{r['seconds']:.1f} s{speed}, {r['over_live']:.2f} x the live run{split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
