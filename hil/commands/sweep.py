"""`pcm-hil sweep`: many simulated runs of one experiment over config keys, on Ray."""
from __future__ import annotations

import argparse
import sys

from hil.commands.arguments import at_least, non_negative_int, positive_int

HELP = """\
Run a sweep: a grid or a random search over experiment config keys (dotted paths such as
optimizer.refresh.high_us), crossed with seeds. Every point is one ordinary run on a simulated
chip, with its run log and summary, in the sweep's output folder (default sweeps/<name>).

Points run side by side on Ray (pip install 'pcm-hil[cluster]'): by default on a cluster
started for the sweep on this machine; --address joins a running cluster (`ray start --head`
on one node, `ray start --address HEAD:6379` on the others). A point that fails is recorded
with its error and the others go on. A sweep that was stopped or killed continues with
--resume, which runs only the points that have no summary yet.

Results, rebuilt at the end (and by --report): results.csv (every figure of every run
summary, one row per point), per_epoch.csv, settings.csv (mean and std over seeds),
pareto.png and seeds.png; Parquet copies when pyarrow is installed. See docs/sweeps.md.

Exit status: 0 when every point finished, 1 when some failed or a sweep file is wrong, 130
when interrupted.

examples:
  pcm-hil sweep configs/sweep_refresh.yaml --dry-run
  pcm-hil sweep configs/sweep_refresh.yaml --cpus-per-point 1
  pcm-hil sweep configs/sweep_refresh.yaml --resume          # after Ctrl-C or a crash
  pcm-hil sweep configs/sweep_refresh.yaml --address HEAD:6379
  pcm-hil sweep configs/sweep_refresh.yaml --report          # tables and plots only
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid or random search of simulated runs on Ray",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="the sweep file (docs/sweeps.md)")
    p.add_argument("--output", metavar="DIR",
                   help="output folder (default: the file's output:, else sweeps/<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in the output folder: run only the points "
                        "without a summary (a changed sweep file runs its new points)")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run the failed points again too")
    p.add_argument("--address", metavar="ADDR",
                   help="join this Ray cluster (HOST:PORT of its head, or 'auto') instead "
                        "of starting one on this machine; the output folder and any model "
                        "or data file must be at the same path on every node")
    p.add_argument("--cpus", type=positive_int, metavar="N",
                   help="CPUs of the cluster started on this machine (default: all)")
    p.add_argument("--cpus-per-point", type=at_least(float, 0.01), default=1.0, metavar="N",
                   help="CPUs reserved by each point (default 1)")
    p.add_argument("--max-parallel", type=positive_int, metavar="N",
                   help="points running at once (default: as many as the CPUs allow)")
    p.add_argument("--max-retries", type=non_negative_int, default=3, metavar="N",
                   help="re-runs of a point whose worker process died (default 3); a point "
                        "whose run raised an error is not re-run")
    p.add_argument("--dry-run", action="store_true",
                   help="check the sweep file and list its points; run nothing")
    p.add_argument("--report", action="store_true",
                   help="rebuild the tables and plots from the output folder; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError
    from hil.cluster import ClusterOptions
    from hil.sweep import expand, load_sweep, report_only, run_sweep

    if args.retry_failed and not args.resume:
        raise ConfigError("only with --resume (a new sweep has no failed points)",
                          key="--retry-failed")
    if args.address and args.cpus:
        raise ConfigError("sizes only the cluster started on this machine; a joined cluster "
                          "has the CPUs its nodes were started with", key="--cpus")
    if args.dry_run and args.report:
        raise ConfigError("cannot be combined with --report", key="--dry-run")
    options = ClusterOptions(address=args.address, cpus=args.cpus,
                             cpus_per_task=args.cpus_per_point,
                             max_parallel=args.max_parallel, max_retries=args.max_retries)
    sweep = load_sweep(args.sweep_file, output=args.output)
    points = expand(sweep)
    if args.dry_run:
        search = "variants" if sweep.search == "variants" else f"{sweep.search} search"
        print(f"sweep {sweep.name}: {search}, {len(points)} points, "
              f"{len({p.setting for p in points})} settings; output {sweep.output}")
        for p in points:
            print(f"  {p.id}  {p.label}, seed {p.seed}")
        return 0
    if args.report:
        report = report_only(sweep, points)
    else:
        report = run_sweep(sweep, points, options, resume=args.resume,
                           retry_failed=args.retry_failed, progress=not args.no_progress)
    if report.table:
        print(report.table)
    for f in report.files:
        print(f"wrote {f}")
    timing = ""
    if report.run_seconds is not None and report.ran:
        timing = (f"; ran {report.ran} in {report.run_seconds:.1f} s "
                  f"(cluster ready in {report.cluster_seconds:.1f} s)")
    print(f"{report.finished} of {report.points} points finished, {report.failed} failed, "
          f"{report.pending} not run{timing}")
    if report.interrupted:
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130
    if args.report:
        return 0
    return 0 if report.finished == report.points else 1
