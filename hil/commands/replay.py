"""`pcm-hil replay`: summarise, plot and verify a logged run, long after the chip is gone."""
from __future__ import annotations

import argparse
import json
import os

from drivers.errors import ConfigError
from hil.commands.arguments import positive_int
from hil.replay.plots import make_plots, parse_steps
from hil.replay.summary import format_summary, summarize
from hil.run_log import RunLog

HELP = """\
Open a run log (the HDF5 file `pcm-hil train --run RUN.h5` writes) and print its summary:
status (and the reason when the run was aborted or failed), config name, epochs, accuracy
(with the fp32 baseline when it was trained), pulse and read counts, refreshes, snapshots,
chip and file size, and the run's state digest (the SHA-256 of the final conductance of
every mapped device that the trainer put in the summary of the final status record; with
--json, `state_digest` is null unless the run completed). A log cut short by a crash opens
too: it shows everything up to the last flush, and the pulse batches its write-ahead journal
(RUN.h5.journal) recorded after that.

--plot DIR writes PNG figures into DIR:
  accuracy.png          train/test accuracy per epoch, and the fp32 baseline when logged
  conductance_hist.png  histograms of G+ and G- at the --steps you choose (the host's
                        view: nearest snapshot plus every read up to the step)
  pulses.png            SET and RESET pulses per step
  refreshes.png         refreshed devices per step, and their running total
  refresh_distribution.png
                        refreshes per pair over the run, and per epoch the most-refreshed
                        pair and the share of SET pulses taken by the 100 most-pulsed weights
  traces.png            the conductance of a few devices, read by read, over the run
  loss.png              the training loss per step (a GAN: both players' losses)
  bpc.png               a language model's bits per character per epoch, chip and fp32
  fid.png               a GAN's classifier-FID and inception-style score per epoch
  gan_losses.png        a GAN's mean losses of both players per epoch, chip and fp32

--energy prints an energy estimate of the run per training image, for the mixed-precision
design and for a 32-bit digital design doing the same training, part by part (docs/energy.md),
and draws it (energy.png in the --plot folder, else RUN-energy.png beside the log). Every
per-operation energy comes from one table with its sources (hil/energy_table.yaml); a lab
gives its own with --energy-table FILE.

--verify re-runs the experiment from the logged config against the log itself (the
replay:// backend): every read and on-chip weighted sum (MATVEC) is served from the log,
every pulse batch, metric and snapshot the re-run produces must equal the logged one bit for
bit. Exit status 0 when everything matches; otherwise the first divergence (step, command
index, device) is printed and the exit status is 1. Timing metrics (names like seconds,
*_s, *_ms) are not compared. Runs with training.matvec: chip can be verified from logs of
schema 1.1 on (1.0 logs hold no MATVEC results).

--verify --workers N splits the log at its snapshots and checks the segments side by side
on N worker processes of this machine (--ray: on a Ray cluster started on this machine;
--address: on the Ray cluster at that address, which must see RUN.h5 at the same path).
Every segment but the first restarts the trainer from the full state its first snapshot
holds (schema 1.3 logs; log.snapshot_every_steps, default one per 60,000 steps, sets how
many a run takes) and checks the run up to the next one, bit for bit. The verdict is the
serial one: the first divergence in the order of the log, with its step, command index and
device. A log of an older schema, or one with too few snapshots, is verified in one re-run,
with a note saying why.

examples:
  pcm-hil replay runs/quick.h5
  pcm-hil replay runs/quick.h5 --plot figs --steps 0,5000,last --devices 8
  pcm-hil replay runs/quick.h5 --verify
  pcm-hil replay runs/long.h5 --verify --workers 2
  pcm-hil replay runs/long.h5 --verify --workers 16 --address 10.0.0.5:6379
  pcm-hil replay runs/quick.h5 --energy --energy-table lab_energy.yaml
  pcm-hil train --config configs/quick.yaml --backend replay://runs/quick.h5

exit status: 0 ok, 1 error or divergence, 2 bad command line.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="summarise, plot or verify a run log",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN.h5", help="run log written by `pcm-hil train --run`")
    p.add_argument("--plot", metavar="DIR",
                   help="write PNG figures into DIR (created if missing)")
    p.add_argument("--steps", metavar="LIST", default="first,last",
                   help="steps for the conductance histograms: comma-separated step numbers "
                        "or first, mid, last (default: first,last)")
    p.add_argument("--devices", metavar="N", type=int, default=6,
                   help="number of devices to trace in traces.png, sampled among the mapped "
                        "devices that were pulsed (default: 6)")
    p.add_argument("--device", metavar="ADDR", type=int, action="append", default=None,
                   help="trace this device address (repeatable; overrides --devices)")
    p.add_argument("--verify", action="store_true",
                   help="re-run the logged experiment against the log and check that every "
                        "pulse batch, metric and snapshot matches exactly")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="with --verify: check the log's segments on N workers at once "
                        "(default 1: one serial re-run)")
    p.add_argument("--ray", action="store_true",
                   help="with --workers: run the segments on a Ray cluster started on this "
                        "machine (N CPUs) instead of N local processes")
    p.add_argument("--address", metavar="ADDR",
                   help="with --verify: run the segments on the Ray cluster at ADDR "
                        "(HOST:PORT of its head, or 'auto'), N at once")
    p.add_argument("--energy", action="store_true",
                   help="print the run's energy estimate per image against a 32-bit digital "
                        "design, and plot it")
    p.add_argument("--energy-table", metavar="FILE",
                   help="per-operation energies with their sources (default: the packaged "
                        "table, hil/energy_table.yaml)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for --verify")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.devices < 0:
        raise ConfigError(f"must be >= 0, got {args.devices}", key="--devices")
    for flag, given in (("--workers", args.workers != 1), ("--ray", args.ray),
                        ("--address", args.address is not None)):
        if given and not args.verify:
            raise ConfigError("only goes with --verify", key=flag)
    if args.ray and args.address is not None:
        raise ConfigError("--ray starts a cluster on this machine, --address joins one: "
                          "give one of them", key="--ray")
    with RunLog(args.run) as log:
        s = summarize(log)
        if args.json:
            print(json.dumps(s, indent=2))
        else:
            print(format_summary(s))
        if args.plot:
            steps = parse_steps(args.steps, log)
            files = make_plots(log, args.plot, steps, args.devices, args.device)
            print(f"plots: {', '.join(files)}")
        if args.energy or args.energy_table:
            _energy(log, args)
    if args.verify:
        from hil.replay.verify import verify_run
        report = verify_run(args.run, progress=not args.no_progress, workers=args.workers,
                            ray=args.ray, address=args.address)
        if report.note:
            print(f"note: {report.note}")
        print(report.message)
        if report.logged_seconds:
            print(f"verify took {report.seconds:.1f} s (the live run trained for "
                  f"{report.logged_seconds:.1f} s)")
        return 0 if report.ok else 1
    return 0


def _energy(log: RunLog, args: argparse.Namespace) -> None:
    from hil.energy import EnergyTable, counts_from_log, estimate, format_estimate, \
        plot_estimate
    table = EnergyTable.load(args.energy_table)
    est = estimate(counts_from_log(log), table)
    print(format_estimate(est))
    if args.plot:
        png = os.path.join(args.plot, "energy.png")
    else:
        png = os.path.splitext(args.run)[0] + "-energy.png"
    print(f"energy plot: {plot_estimate(est, png)}")
