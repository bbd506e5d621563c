"""Training in-process vs through the firmware emulator over TCP (`scripts/bench_wire`).

  scripts/bench_wire                         # 10k examples, 1 epoch: in-process, TCP, 12 Mbaud
  scripts/bench_wire --examples 2000 --json
  scripts/bench_wire --profile driver.prof   # cProfile of the unlimited-TCP run (host side)
  scripts/bench_wire --in-thread             # emulator in a thread of this process instead
  scripts/bench_wire --repeats 3             # best of 3 interleaved runs (shared machines)

Runs the benchmark experiment (hil.benchmarks.common.bench_config: the default config, --examples
training digits, 1 epoch, no fp32 baseline, --test-examples held out) three ways, each from a
fresh chip of the same seed:

  in-process   sim:// (SimulatedChip in this process)
  tcp          `pcm-hil emulate --listen 127.0.0.1:0` in a subprocess, unlimited link rate
  tcp-12M      the same with a modelled 12 Mbaud link (--baud 12000000: 10 bits per byte)

and prints, for each: examples/s (the run's own training clock), the ratio to in-process
(target >= 0.5 for unlimited TCP), round trips per training step, and bytes on the wire per
pulsed device and per read value: the driver's byte counters over the whole run, divided by
the trainer's counts of devices pulsed and read (its ChipIO counters).
A pulsed device is charged its PROGRAM request + ACK bytes, or the request bytes of a
PROGRAM_READ (which carries the addresses once for both halves); a read value its READ
request + reply bytes, or the reply bytes of a PROGRAM_READ. Every emulated run is checked
against the in-process run (same state digest, same accuracy): a fast wrong answer is not a
result.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import select
import subprocess
import sys
import time

from hil.benchmarks.common import bench_config, open_sim_chip


class ThreadEmulator:
    """The same emulator served from a thread of this process (no process switch per round
    trip, but host and firmware share one interpreter lock)."""

    def __init__(self, cfg, baud: int) -> None:
        from sim_backend.emulator import EmulatorServer, LinkModel
        from sim_backend.firmware import Firmware

        chip = open_sim_chip(cfg)
        self.server = EmulatorServer(Firmware(chip), listen=("127.0.0.1", 0),
                                     link=LinkModel(baud=baud)).start()
        self.url = self.server.url

    def close(self) -> None:
        self.server.stop()


class Emulator:
    """`pcm-hil emulate` in its own process (so host and firmware do not share a GIL)."""

    def __init__(self, cfg, baud: int) -> None:
        c = cfg.chip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hil.cli", "emulate", "--listen", "127.0.0.1:0",
             "--model", c.model, "--seed", str(cfg.chip_seed), "--arrays", str(c.arrays),
             "--rows", str(c.rows), "--cols", str(c.cols), "--baud", str(baud)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        self.url = self.proc.stdout.readline().strip() if ready else ""
        if not self.url:
            self.proc.kill()
            raise SystemExit(f"emulator did not start: {self.proc.stderr.read()}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()


def run_mode(mode: str, cfg, data, baud: int, profile: str | None,
             in_thread: bool = False) -> dict:
    from drivers.fpga import FpgaChip
    from hil.training import run_experiment

    if mode == "in-process":
        with open_sim_chip(cfg) as be:
            s = run_experiment(cfg, be, data=data)
        return {"summary": s}
    emu = ThreadEmulator(cfg, baud) if in_thread else Emulator(cfg, baud)
    try:
        chip = FpgaChip(emu.url, baudrate=baud or 921_600, timeout_s=10.0)
        prof = cProfile.Profile() if profile else None
        with chip:
            if prof:
                prof.enable()
            s = run_experiment(cfg, chip, data=data)
            if prof:
                prof.disable()
                prof.dump_stats(profile)
            stats = {k: dict(v) for k, v in chip.stats.items()}
            # the trainer's own counts of the devices behind the driver's byte counters
            pulsed, read_values = s["io"]["devices_pulsed"], s["io"]["devices_read"]
            link = dict(chip.link_counters)
    finally:
        emu.close()
    none = {"bytes_tx": 0, "bytes_rx": 0, "round_trips": 0}
    prog = [v for k, v in stats.items() if k in ("PROGRAM_SET", "PROGRAM_RESET")]
    both = stats.get("PROGRAM_READ", none)
    rd = stats.get("READ", none)
    prog_bytes = sum(v["bytes_tx"] + v["bytes_rx"] for v in prog) + both["bytes_tx"]
    train_rt = sum(v["round_trips"] for v in prog) + both["round_trips"] + rd["round_trips"]
    return {"summary": s, "stats": stats, "link": link,
            "round_trips_total": sum(v["round_trips"] for v in stats.values()),
            "round_trips_per_step": train_rt / max(1, s["steps"]),
            "bytes_total": sum(v["bytes_tx"] + v["bytes_rx"] for v in stats.values()),
            "bytes_per_pulsed_device": prog_bytes / max(1, pulsed),
            "program_request_bytes_per_pulsed_device":
                (sum(v["bytes_tx"] for v in prog) + both["bytes_tx"]) / max(1, pulsed),
            "bytes_per_read_value": (rd["bytes_tx"] + rd["bytes_rx"] + both["bytes_rx"])
            / max(1, read_values),
            "read_reply_bytes_per_value": (rd["bytes_rx"] + both["bytes_rx"])
            / max(1, read_values),
            "pulsed_devices": pulsed, "read_values": read_values}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_wire",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=10_000, help="training examples (10000)")
    p.add_argument("--test-examples", type=int, default=1_000,
                   help="held-out examples for the epoch's test accuracy (1000)")
    p.add_argument("--baud", type=int, default=12_000_000,
                   help="modelled link rate of the slow run, baud (12000000; 0 skips it)")
    p.add_argument("--profile", metavar="FILE",
                   help="cProfile the unlimited-TCP run (host side) into FILE")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every mode this many times, interleaved, and keep each mode's "
                        "fastest run (a shared machine's load only ever slows a run down)")
    p.add_argument("--in-thread", action="store_true",
                   help="serve the emulator from a thread of this process, not a subprocess")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)

    from hil.training import load_dataset

    cfg = bench_config(args.examples, args.test_examples)
    data = load_dataset(cfg)
    modes = [("in-process", 0), ("tcp", 0)] + ([("tcp-12M", args.baud)] if args.baud else [])
    results: dict = {}
    for rep in range(max(1, args.repeats)):
        for mode, baud in modes:
            t0 = time.perf_counter()
            r = run_mode(mode, cfg, data, baud,
                         args.profile if mode == "tcp" and rep == 0 else None, args.in_thread)
            r["wall_s"] = time.perf_counter() - t0
            s = r.pop("summary")
            r.update(examples=s["examples"], steps=s["steps"],
                     train_seconds=s["train_seconds"], examples_per_s=s["examples_per_s"],
                     test_accuracy=s["test_accuracy"], state_digest=s["state_digest"])
            print(f"  {mode:10} {r['examples_per_s']:8.0f} examples/s  "
                  f"({r['train_seconds']:.1f} s training, {r['wall_s']:.1f} s wall)",
                  file=sys.stderr, flush=True)
            first = results.get("in-process", r)
            if (r["state_digest"], r["test_accuracy"]) != (first["state_digest"],
                                                           first["test_accuracy"]):
                print(f"ERROR: {mode} run differs from the in-process run", file=sys.stderr)
                return 1
            runs = results.get(mode, {}).get("all_examples_per_s", []) + [r["examples_per_s"]]
            if mode not in results or r["examples_per_s"] > results[mode]["examples_per_s"]:
                results[mode] = r
            results[mode]["all_examples_per_s"] = runs
    ref = results["in-process"]
    for mode, r in results.items():
        r["ratio_to_in_process"] = r["examples_per_s"] / ref["examples_per_s"]
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    where = "a thread of this process" if args.in_thread else "a subprocess"
    print(f"\nwire benchmark: {args.examples} examples, 1 epoch, batch "
          f"{cfg.optimizer.batch_size}, {ref['steps']} steps, emulator in {where}, best of "
          f"{max(1, args.repeats)} (every run bit-identical)")
    print(f"{'mode':11}{'examples/s':>11}{'ratio':>8}{'round trips':>13}{'bytes/pulsed':>14}"
          f"{'bytes/read':>12}{'MB on wire':>12}")
    for mode, r in results.items():
        if mode == "in-process":
            print(f"{mode:11}{r['examples_per_s']:>11.0f}{1.0:>8.2f}")
            continue
        print(f"{mode:11}{r['examples_per_s']:>11.0f}{r['ratio_to_in_process']:>8.2f}"
              f"{r['round_trips_per_step']:>13.2f}{r['bytes_per_pulsed_device']:>14.2f}"
              f"{r['bytes_per_read_value']:>12.2f}{r['bytes_total'] / 1e6:>12.2f}")
    print("round trips: PROGRAM, READ and PROGRAM_READ per training step; bytes/pulsed: PROGRAM "
          "request + ACK, or PROGRAM_READ request, per pulsed device;\nbytes/read: READ request "
          "+ reply, or PROGRAM_READ reply, per value read (frame overhead included)")
    tcp = results.get("tcp")
    if tcp and tcp["ratio_to_in_process"] < 0.5:
        print(f"below target: unlimited TCP at {tcp['ratio_to_in_process']:.2f} of in-process "
              "(target 0.5)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
