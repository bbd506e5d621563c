"""`pcm-hil characterize`: pulse trains, repeated reads and drift on N devices, to HDF5."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Optional

from drivers.errors import ConfigError

HELP = "measure SET pulse trains, read noise and drift on N devices (for fit-model)"

DESCRIPTION = """\
Characterise PCM devices for fitting the device model (then run `pcm-hil fit-model`).

On a chip opened by URL (or the chip of a station file), N devices drawn at random (--seed)
are measured in five phases, every command a batch over all N devices:

  1. initial   one read of the devices as found
  2. reset     one RESET pulse, then --reset-reads repeated reads
               (RESET level, read noise at low conductance)
  3. set       --pulses times: one SET pulse to every device, then one read
               (the pulse-train response: mean and spread of dG against G and pulse number)
  4. noise     --noise-reads repeated reads right after the train
               (read noise across the conductance range)
  5. drift     --drift-reads reads at log-spaced times from --drift-start-s to
               --drift-end-s after the last SET pulse (drift exponent and its spread)

Time: a simulated chip keeps its own clock, which only commands move: in-process (sim://) or
behind the firmware emulator (socket://, the chip advertises the SIM_CLOCK capability).
Waiting for drift moves that clock forward, so a simulated characterisation takes seconds.
A real chip is timed with the host clock and the drift phase really waits (the default span
is about an hour).

With --station, the station's safety limits are checked for every command before the first
is sent (pulse amplitude and width per kind, pulses per device, batch size: larger batches
are split), its chip URL is used unless --backend is given, and its instruments are opened
and snapshotted into the file's provenance (skip with --no-instruments).

Everything is written to OUT as it is measured (HDF5, format "pcm-hil-characterization"
version 1; schema in docs/characterization.md). An interrupted run leaves a readable file
marked "aborted"; an existing OUT is never overwritten without --force.
"""

EPILOG = """\
examples:
  pcm-hil characterize --backend "sim://?model=jap&seed=1" -o jap.h5
  pcm-hil characterize --station configs/station_sim.yaml -o bench.h5 --devices 20000
  pcm-hil characterize --backend /dev/ttyUSB0 -o chip7.h5 --drift-end-s 36000
"""


def register(subparsers: Any) -> None:
    from hil.characterize import CharacterizeConfig
    d = CharacterizeConfig()
    p = subparsers.add_parser("characterize", help=HELP, description=DESCRIPTION,
                              epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("chip and bench")
    src.add_argument("--backend", metavar="URL",
                     help="chip backend URL: sim://?model=jap&seed=1, socket://HOST:PORT, "
                          "/dev/ttyUSB0, ... (overrides the station's chip URL)")
    src.add_argument("--station", metavar="FILE",
                     help="station YAML: chip URL, safety limits, instruments "
                          "(docs/instruments.md)")
    src.add_argument("--no-instruments", action="store_true",
                     help="with --station: do not open the instruments (no snapshot)")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--out", required=True, metavar="FILE.h5",
                     help="characterisation file to write (HDF5)")
    out.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = p.add_argument_group("measurement")
    m.add_argument("--devices", type=int, default=d.devices, metavar="N",
                   help=f"devices to measure, drawn at random (default {d.devices})")
    m.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the device draw (default {d.seed})")
    m.add_argument("--pulses", type=int, default=d.pulses, metavar="K",
                   help=f"SET pulses in the train, a read after each (default {d.pulses})")
    m.add_argument("--set-amplitude-v", type=float, default=d.set_amplitude_v, metavar="V",
                   help=f"SET pulse amplitude (default {d.set_amplitude_v} V)")
    m.add_argument("--set-width-ns", type=float, default=d.set_width_ns, metavar="NS",
                   help=f"SET pulse width (default {d.set_width_ns} ns)")
    m.add_argument("--reset-amplitude-v", type=float, default=d.reset_amplitude_v,
                   metavar="V", help=f"RESET pulse amplitude (default {d.reset_amplitude_v} V)")
    m.add_argument("--reset-width-ns", type=float, default=d.reset_width_ns, metavar="NS",
                   help=f"RESET pulse width (default {d.reset_width_ns} ns)")
    m.add_argument("--reset-reads", type=int, default=d.reset_reads, metavar="M",
                   help=f"repeated reads after RESET (default {d.reset_reads})")
    m.add_argument("--noise-reads", type=int, default=d.noise_reads, metavar="M",
                   help=f"repeated reads after the SET train (default {d.noise_reads})")
    m.add_argument("--drift-reads", type=int, default=d.drift_reads, metavar="R",
                   help=f"drift reads, log-spaced in time (default {d.drift_reads}; 0 = none)")
    m.add_argument("--drift-start-s", type=float, default=d.drift_start_s, metavar="S",
                   help=f"first drift read, seconds after the last SET pulse "
                        f"(default {d.drift_start_s}, the JAP model's t0)")
    m.add_argument("--drift-end-s", type=float, default=d.drift_end_s, metavar="S",
                   help=f"last drift read, seconds after the last SET pulse "
                        f"(default {d.drift_end_s})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drivers.safety import LimitedBackend
    from hil.backend_url import open_backend
    from hil.characterize import CharacterizeConfig, characterize
    from hil.station import InstrumentSet, load_station, open_instruments

    if not args.backend and not args.station:
        raise ConfigError("give --backend URL or --station FILE (which chip to measure)",
                          key="--backend")
    cfg = CharacterizeConfig(
        devices=args.devices, pulses=args.pulses, set_amplitude_v=args.set_amplitude_v,
        set_width_ns=args.set_width_ns, reset_amplitude_v=args.reset_amplitude_v,
        reset_width_ns=args.reset_width_ns, reset_reads=args.reset_reads,
        noise_reads=args.noise_reads, drift_reads=args.drift_reads,
        drift_start_s=args.drift_start_s, drift_end_s=args.drift_end_s, seed=args.seed)
    if os.path.exists(args.out) and not args.force:
        raise ConfigError("file exists (refusing to overwrite characterisation data; "
                          "--force to replace it)", source=args.out)
    station = load_station(args.station) if args.station else None
    url = args.backend or station.chip.url  # type: ignore[union-attr]
    safety = station.safety if station else None
    if safety:   # refuse before opening anything
        safety.check_pulse(cfg.set_pulse)
        safety.check_pulse(cfg.reset_pulse)
    provenance: Dict[str, Any] = {"command": "characterize"}
    instruments: Optional[InstrumentSet] = None
    if station is not None:
        provenance["station"] = station.to_dict()
        if not args.no_instruments and station.instruments:
            instruments = open_instruments(station)
            provenance["instruments_start"] = instruments.snapshot()
    bar = None
    try:
        progress = None
        if not args.no_progress and sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=1, unit="cmd", desc="characterize", leave=False)

            def progress(phase: str, done: int, total: int) -> None:
                bar.total = total
                bar.set_description(phase)
                bar.update(done - bar.n)
        with open_backend(url) as chip:
            # every command through the station's guard, as in training
            backend = chip if safety is None else LimitedBackend(chip, safety)
            summary = characterize(backend, cfg, args.out, backend_url=url,
                                   provenance=provenance, overwrite=args.force,
                                   progress=progress)
        if instruments is not None:
            import h5py
            with h5py.File(args.out, "a") as f:
                f.attrs["instruments_end_json"] = json.dumps(instruments.snapshot(),
                                                             default=str)
    except KeyboardInterrupt:
        print(f"pcm-hil characterize: interrupted; partial data kept in {args.out} "
              "(status 'aborted')", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        if instruments is not None:
            instruments.close()
    g = summary.mean_g_after_pulse_us
    shown = sorted({1, min(5, g.size), min(10, g.size), g.size})
    print(f"characterised {summary.devices} devices, {summary.pulses} SET pulses, "
          f"{summary.commands} commands ({summary.clock} clock, "
          f"{summary.duration_s:.1f} s wall) -> {summary.path}")
    print("mean read after pulse " + ", ".join(f"{n}: {g[n - 1]:.2f}" for n in shown)
          + " µS")
    return 0
