"""`pcm-hil train`: mixed-precision training of an MLP on a PCM chip."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Optional

from drivers.errors import ConfigError
from drivers.safety import LimitedBackend
from hil.backend_url import SimDefaults, open_backend
from hil.config import ExperimentConfig, load_config, with_overrides
from hil.monitors import Monitor
from hil.run_control import RunAborted, RunControl
from hil.station import load_station, open_instruments
from hil.training import EpochResult, run_experiment

DEFAULT_CONFIG = "configs/mnist_mlp.yaml"

HELP = """\
Train a multilayer perceptron on MNIST with the mixed-precision algorithm: the chip holds
each weight as a G+/G- conductance pair, the host accumulates updates in fp32 (chi) and sends
batched SET pulses whenever |chi| passes the device granularity.

Every read and pulse batch goes to the run log (--run), so the run can be replayed with
`pcm-hil replay`. Prints one line per epoch: train/test accuracy, the fp32 baseline's test
accuracy (when the config enables it), SET pulses and refreshes.

examples:
  pcm-hil train --config configs/quick.yaml
  pcm-hil train --config configs/mnist_mlp.yaml --backend socket://127.0.0.1:7700
  pcm-hil train --config configs/quick.yaml --seed 3 --epochs 1 --summary-json out.json
"""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an MLP on the chip (mixed precision)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("--backend", metavar="URL",
                   help="chip URL, overriding the config: sim://, socket://HOST:PORT, "
                        "/dev/ttyUSB0, a pty path, replay://RUN.h5")
    p.add_argument("--seed", type=_positive_int, metavar="N", help="experiment seed override")
    p.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs override")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the fp32 software baseline even if the config asks for it")
    p.add_argument("--summary-json", metavar="FILE", help="write the run summary as JSON")
    p.add_argument("--run", metavar="RUN.h5",
                   help="run log file (default: runs/<name>-<timestamp>.h5)")
    p.add_argument("--no-log", action="store_true", help="do not write a run log")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--station", metavar="FILE",
                   help="station (testbed) YAML: chip link, instruments, safety limits and "
                        "monitors (see docs/instruments.md); its limits guard every command")
    p.add_argument("--dry-run", action="store_true",
                   help="walk the whole experiment against the simulated chip under the "
                        "station's limits and report what would be sent; the configured chip "
                        "and the instruments are not touched, nothing is logged")
    p.set_defaults(func=run)


def sim_defaults(cfg: ExperimentConfig) -> SimDefaults:
    c = cfg.chip
    return SimDefaults(model=c.model, seed=cfg.chip_seed, arrays=c.arrays, rows=c.rows,
                       cols=c.cols)


def _open_recorder(args: argparse.Namespace, cfg: ExperimentConfig):
    if args.no_log:
        return None, None
    try:
        from hil.run_log import RunLogWriter
    except ImportError:
        return None, None
    path = args.run or os.path.join(
        "runs", f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}.h5")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return RunLogWriter(path, cfg), path


def _print_epoch(total: int) -> callable:
    def report(r: EpochResult) -> None:
        base = "" if r.baseline_test_accuracy is None else \
            f"  baseline {100 * r.baseline_test_accuracy:6.2f}%"
        print(f"epoch {r.epoch + 1:>3}/{total}  train {100 * r.train_accuracy:6.2f}%  "
              f"test {100 * r.test_accuracy:6.2f}%{base}  SET pulses {r.set_pulses:>9,}  "
              f"refreshes {r.refreshes:>7,}  {r.seconds:6.1f} s", flush=True)
    return report


def run(args: argparse.Namespace) -> int:
    if args.epochs == 0:
        raise ConfigError("must be >= 1", key="--epochs")
    station = load_station(args.station) if args.station else None
    url = args.backend or (station.chip.url if station else None)
    cfg = with_overrides(load_config(args.config), seed=args.seed, epochs=args.epochs,
                         backend=url, baseline=False if args.no_baseline else None)
    if args.dry_run:
        return _dry_run(cfg, station, args)
    recorder, path = _open_recorder(args, cfg)
    if path:
        print(f"run log: {path}")
    control = RunControl()
    try:
        with contextlib.ExitStack() as stack:
            backend = stack.enter_context(open_backend(cfg.chip.backend, sim_defaults(cfg)))
            monitor, provenance = None, {}
            if station is not None:
                backend = LimitedBackend(backend, station.safety)
                instruments = stack.enter_context(open_instruments(station))
                monitor = Monitor.from_station(station, instruments)
                provenance = {"station": station.to_dict(),
                              "instruments": instruments.snapshot()}
            stack.enter_context(control.sigint_handler())
            print(f"training {cfg.name}: {cfg.data.train_examples:,} examples x "
                  f"{cfg.training.epochs} epochs on {cfg.chip.backend} (Ctrl-C stops after the "
                  "current step)", flush=True)
            summary = run_experiment(cfg, backend, recorder, progress=not args.no_progress,
                                     report=_print_epoch(cfg.training.epochs),
                                     control=control, monitor=monitor, provenance=provenance)
    except (RunAborted, KeyboardInterrupt) as e:
        print(f"aborted: {e or 'stopped at once'}; the chip is in its safe state"
              + (f"; run log {path} is marked aborted" if path else ""), file=sys.stderr)
        return 130
    print(_final_line(summary))
    _write_summary(args.summary_json, summary)
    return 0


def _write_summary(path: Optional[str], summary: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


def _dry_run(cfg: ExperimentConfig, station, args: argparse.Namespace) -> int:
    """The whole experiment on a simulated stand-in of the chip, under the station's limits."""
    backend = open_backend("sim://", sim_defaults(cfg))
    limits = station.safety if station else None
    guarded = LimitedBackend(backend, limits) if limits else backend
    print(f"dry run of {cfg.name} against a simulated chip"
          + (f" under the limits of {args.station}" if limits else " (no station: only the "
             "chip's own hard limits apply)"), flush=True)
    summary = run_experiment(cfg, guarded, None, progress=not args.no_progress,
                             report=_print_epoch(cfg.training.epochs))
    c = summary["io"]
    print(f"would send: {summary['program_commands']:,} program commands "
          f"({summary['set_pulses']:,} SET and {summary['reset_pulses']:,} RESET pulses), "
          f"{summary['read_commands']:,} read commands; largest batch "
          f"{c['largest_batch']:,} devices; at most {c['most_pulses_per_device']} pulses to one "
          "device in one command; every command within the limits")
    _write_summary(args.summary_json, summary)
    return 0


def _final_line(s: dict) -> str:
    base = ""
    if "baseline_test_accuracy" in s:
        base = (f", fp32 baseline {100 * s['baseline_test_accuracy']:.2f}% "
                f"(gap {100 * s['accuracy_gap']:+.2f} pts)")
    return (f"done: test accuracy {100 * s['test_accuracy']:.2f}%{base}; "
            f"{s['set_pulses']:,} SET pulses, {s['refreshes']:,} refreshes, "
            f"{s['programming_reduction']:,.0f}x fewer pulses than programming every weight "
            f"every example; {s['examples_per_s']:,.0f} examples/s")


def main(argv: Optional[list] = None) -> int:  # pragma: no cover - convenience
    from hil.cli import main as cli_main
    return cli_main(["train", *(argv or [])])
