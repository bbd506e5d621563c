"""`pcm-hil train`: mixed-precision training of an MLP on a PCM chip."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Optional

from drivers.errors import ConfigError, LinkError
from hil.commands.arguments import non_negative_int
from hil.commands.watch import add_server_arguments, check_server_arguments, live_view
from hil.config import load_config, with_overrides
from hil.epoch_loop import EpochResult
from hil.run_control import RunAborted, RunControl
from hil.output_files import check_writable
from hil.run_log import read_header
from hil.run_stack import (RunCompleted, RunRequest, RunStack, default_log_path,
                           open_run_stack)
from hil.station import Station, load_station
from hil.training import run_experiment

if TYPE_CHECKING:
    from hil.energy import EnergyTable

DEFAULT_CONFIG = "configs/mnist_mlp.yaml"
#: Exit status of a run whose chip link failed (EX_TEMPFAIL): it can be resumed once the
#: chip answers again; a supervisor retries it (docs/run-log.md, "Supervising a run").
EXIT_LINK_LOST = 75

HELP = """\
Train a multilayer perceptron on MNIST with the mixed-precision algorithm: the chip holds
each weight as a G+/G- conductance pair, the host accumulates updates in fp32 (chi) and sends
batched SET pulses whenever |chi| passes the device granularity. A config with a `model`
section trains that PyTorch network instead, through hil.torch (docs/torch.md), e.g. the
seed's CNN: configs/mnist_cnn.yaml.

Every read and pulse batch goes to the run log (--run), so the run can be replayed with
`pcm-hil replay`. Prints one line per epoch: train/test accuracy, the fp32 baseline's test
accuracy (when the config enables it), SET pulses and refreshes.

examples:
  pcm-hil train --config configs/quick.yaml
  pcm-hil train --config configs/mnist_mlp.yaml --backend socket://127.0.0.1:7700
  pcm-hil train --config configs/quick.yaml --seed 3 --epochs 1 --summary-json out.json
  pcm-hil train --config configs/mnist_cnn.yaml
  pcm-hil train --config configs/quick.yaml --run runs/q.h5 --chip-state runs/q.chip
  pcm-hil train --resume runs/q.h5        # after Ctrl-C or a crash: continues into runs/q-2.h5
  pcm-hil train --config configs/quick.yaml --watch   # follow it in the browser

--resume takes any segment of a run (RUN.h5, RUN-2.h5, ...) and continues its newest; a run
killed before its first command starts again from step 0. A resumed run keeps the station
limits it was started under (a --station given with --resume may only narrow them).

exit status: 0 completed (or, with --resume, already completed); 1 an error (the message
names it); 2 bad command line; 75 the chip's link failed (resumable); 130 stopped by Ctrl-C,
143 by SIGTERM (the step in flight finished, the chip left safe, the log marked aborted).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an MLP or a CNN on the chip (mixed precision)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE",
                   help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("--backend", metavar="URL",
                   help="chip URL, overriding the config: sim://, socket://HOST:PORT, "
                        "/dev/ttyUSB0, a pty path, replay://RUN.h5")
    p.add_argument("--seed", type=non_negative_int, metavar="N", help="experiment seed override")
    p.add_argument("--epochs", type=non_negative_int, metavar="N", help="epochs override")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the fp32 software baseline even if the config asks for it")
    p.add_argument("--summary-json", metavar="FILE", help="write the run summary as JSON")
    p.add_argument("--run", metavar="RUN.h5",
                   help="run log file (default: runs/<name>-<timestamp>.h5)")
    p.add_argument("--no-log", action="store_true", help="do not write a run log")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--station", metavar="FILE",
                   help="station (testbed) YAML: chip link, instruments, safety limits and "
                        "monitors (see docs/instruments.md); its limits guard every command "
                        "(with --resume: may only narrow the limits the run started under)")
    p.add_argument("--resume", metavar="RUN.h5",
                   help="continue an aborted or killed run from its log (any segment of it: "
                        "the newest is continued): the run is fast-forwarded against the log "
                        "(nothing sent to the chip), then continues live into a new log "
                        "(--run, default RUN-2.h5) that holds the whole run; the config and "
                        "the station's limits come from the log (see docs/run-log.md)")
    p.add_argument("--chip-state", metavar="FILE",
                   help="sim:// only: save the in-process simulated chip's state to FILE at "
                        "every commit of the run log, which makes the run resumable (with "
                        "--resume: the state file to restore, default the one the run used)")
    p.add_argument("--energy-table", metavar="FILE",
                   help="per-operation energies with their sources for the summary's energy "
                        "estimate (default: the packaged table; docs/energy.md)")
    p.add_argument("--dry-run", action="store_true",
                   help="walk the whole experiment against the simulated chip under the "
                        "station's limits and report what would be sent; the configured chip "
                        "and the instruments are not touched, nothing is logged")
    add_server_arguments(p, for_train=True)
    p.set_defaults(func=run)


def _print_epoch(total: int) -> callable:
    def report(r: EpochResult) -> None:
        print(r.describe(total), flush=True)
    return report


def _check_resume_args(args: argparse.Namespace) -> None:
    """--resume takes everything that defines the run from the log: one clear error for an
    option that would change it."""
    for opt, given in (("--config", args.config), ("--seed", args.seed),
                       ("--epochs", args.epochs), ("--no-baseline", args.no_baseline or None),
                       ("--no-log", args.no_log or None), ("--dry-run", args.dry_run or None)):
        if given is not None:
            raise ConfigError("cannot be combined with --resume (a resumed run continues the "
                              "logged config; the log it writes is the run's record)", key=opt)


def _request(args: argparse.Namespace, station: Optional[Station]) -> RunRequest:
    """The run the command line asks for."""
    if args.resume:
        _check_resume_args(args)
        return RunRequest.resume(args.resume, log_to=args.run, backend_url=args.backend,
                                 station=station, chip_state=args.chip_state, note=_say)
    url = args.backend or (station.chip.url if station else None)
    cfg = with_overrides(load_config(args.config or DEFAULT_CONFIG), seed=args.seed,
                         epochs=args.epochs, backend=url,
                         baseline=False if args.no_baseline else None)
    log_path = None if args.no_log or args.dry_run else (args.run or default_log_path(cfg))
    return RunRequest(cfg, backend_url=url, station=station, log_path=log_path,
                      chip_state=args.chip_state, dry_run=args.dry_run)


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.epochs == 0:
        raise ConfigError("must be >= 1", key="--epochs")
    check_server_arguments(args)
    if args.summary_json:
        check_writable(args.summary_json, "--summary-json", make_folder=True)  # not at the end
    station = load_station(args.station) if args.station else None
    from hil.energy import EnergyTable
    energy_table = EnergyTable.load(args.energy_table) if args.energy_table else None
    try:
        request = _request(args, station)
    except RunCompleted as done:
        # A supervisor's loop around --resume ends here, however late its last kill came.
        _say(f"nothing to resume: the run completed in {done.path}")
        if done.summary:
            _write_summary(args.summary_json, done.summary)
        return 0
    if request.dry_run:
        return _dry_run(request, args)
    control = RunControl()
    with control.sigint_handler():
        return _train(request, args, control, energy_table)


def _train(request: RunRequest, args: argparse.Namespace, control: RunControl,
           energy_table: "EnergyTable | None" = None) -> int:
    cfg = request.config
    stack = None
    try:
        with open_run_stack(request, note=_say) as stack, \
                live_view(args, stack.log_path, control):
            _say(f"training {cfg.name}: {cfg.describe_data()} x "
                 f"{cfg.training.epochs} epochs on {request.url} (Ctrl-C or SIGTERM stops "
                 "after the current step)")
            summary = run_experiment(cfg, stack.backend, stack.recorder,
                                     progress=not args.no_progress,
                                     report=_print_epoch(cfg.training.epochs),
                                     control=control, monitor=stack.monitor,
                                     provenance=stack.provenance,
                                     energy_table=energy_table)
            resumed = stack.resumed
    except (RunAborted, KeyboardInterrupt) as e:
        started = getattr(e, "started", True)
        print(f"aborted: {str(e) or 'stopped at once'}; "
              + _where_it_stopped(request, stack, started), file=sys.stderr)
        return control.exit_status
    except LinkError as e:
        # The chip's link, not the run, failed: the log and its journal say how far it got.
        path = stack.log_path if stack is not None else None
        print(f"pcm-hil train: error: {e}"
              + (f"; once the chip is back, `pcm-hil train --resume {path}` continues the run"
                 if path else ""), file=sys.stderr)
        return EXIT_LINK_LOST
    if resumed is not None:
        print(f"resumed: {resumed.committed:,} logged and {resumed.served_from_journal} "
              f"journaled commands fast-forwarded, {resumed.resent} uncertain command(s) "
              "re-sent under their wire sequence numbers")
    print(_final_line(summary))
    _write_summary(args.summary_json, summary)
    return 0


def _where_it_stopped(request: RunRequest, stack: Optional[RunStack],
                      started: bool = True) -> str:
    """What an aborted run left: the chip's state and what its log now holds."""
    path = request.log_path if stack is None else stack.log_path
    began = stack is not None and started
    if stack is not None and stack.recorder is not None:
        began = stack.recorder.began
    elif stack is None and path and os.path.exists(path) and not request.resume_from:
        began = read_header(path).began
    if not began:
        return "nothing was sent to the chip" + (
            f"; run log {path} holds only the run's config (`--resume {path}` starts it "
            "from step 0)" if path and os.path.exists(path) else "")
    return "the chip is in its safe state" + (f"; run log {path} is marked aborted"
                                               if path else "")


def _write_summary(path: Optional[str], summary: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


def _dry_run(request: RunRequest, args: argparse.Namespace) -> int:
    """The whole experiment on a simulated stand-in of the chip, under the station's limits."""
    cfg, station = request.config, request.station
    print(f"dry run of {cfg.name} against a simulated chip"
          + (f" under the limits of {args.station}" if station else " (no station: only the "
             "chip's own hard limits apply)"), flush=True)
    with open_run_stack(request) as stack:
        summary = run_experiment(cfg, stack.backend, None, progress=not args.no_progress,
                                 report=_print_epoch(cfg.training.epochs))
    c = summary["io"]
    guard = stack.guard
    split = ""
    if guard is not None and c["largest_batch"] > guard.station_limits.max_batch_devices:
        split = (f" (batches above safety.max_batch_devices = "
                 f"{guard.station_limits.max_batch_devices:,} go in parts: "
                 f"{guard.commands_sent:,} commands on the wire)")
    print(f"would send: {summary['program_commands']:,} program commands "
          f"({summary['set_pulses']:,} SET and {summary['reset_pulses']:,} RESET pulses), "
          f"{summary['read_commands']:,} read commands; largest batch "
          f"{c['largest_batch']:,} devices{split}; at most {c['most_pulses_per_device']} "
          "pulses to one device in one command; every command within the limits")
    _write_summary(args.summary_json, summary)
    return 0


def _final_line(s: dict) -> str:
    if "headline" in s:          # an experiment that is not scored by accuracy says its own
        return f"done: {s['headline']}; {s['examples_per_s'] or 0:,.0f} examples/s"
    base = ""
    if "baseline_test_accuracy" in s:
        base = (f", fp32 baseline {100 * s['baseline_test_accuracy']:.2f}% "
                f"(gap {100 * s['accuracy_gap']:+.2f} pts)")
    val = f" (validation {100 * s['validation_accuracy']:.2f}%)" \
        if "validation_accuracy" in s else ""
    reduction = s.get("reduction_all_pulses", s["programming_reduction"])
    energy = ""
    if "energy" in s:
        e = s["energy"]
        energy = (f"; energy {_si(e['mixed_precision_j_per_image'])}J per image against "
                  f"{_si(e['digital_fp32_j_per_image'])}J for a 32-bit digital design "
                  f"({e['ratio']:,.1f}x)")
    return (f"done: test accuracy {100 * s['test_accuracy']:.2f}%{val}{base}; "
            f"{s['set_pulses']:,} SET and {s['reset_pulses']:,} RESET pulses, "
            f"{s['refreshes']:,} refreshes, {reduction:,.0f}x fewer pulses than programming "
            f"every weight every example{energy}; {s['examples_per_s']:,.0f} examples/s")


def _si(v: float) -> str:
    for scale, prefix in ((1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}"
    return f"{v / 1e-15:.3g} f"


def main(argv: Optional[list] = None) -> int:  # pragma: no cover - convenience
    from hil.cli import main as cli_main
    return cli_main(["train", *(argv or [])])
