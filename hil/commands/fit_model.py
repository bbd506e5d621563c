"""`pcm-hil fit-model`: fit the PCM device model to a characterisation file."""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

HELP = "fit the PCM model (SET, RESET, drift, read noise) to a characterisation file"

DESCRIPTION = """\
Fit the JAP PCM model to a file written by `pcm-hil characterize` and write it as a model
YAML that the simulated chip loads (sim://?model=FILE.yaml, PcmModel.from_yaml).

Fitted, each from the phase of the measurement that isolates it:
  read_noise  rel, abs_us       sigma(G) = rel*G + abs_us, from repeated reads
  reset       mean_us, std_us   RESET level, read noise removed, ADC floor accounted for
  set         m1 c1 a1 m2 c2 a2 alpha
                                dG ~ N(m1*G + c1 + a1*P, (m2*G + c2 + a2*P)^2),
                                P = exp(-n/alpha); simulation-based: the model with these
                                parameters (plus the fitted RESET and read noise, clipping
                                and ADC floor included) must reproduce the measured
                                statistics of the pulse trains (Levenberg-Marquardt;
                                starting point from a grid search over alpha)
  drift       nu_mean, nu_std   slopes of log G against log(t/t0) per device, for
                                reads at t >= t0 (t0 is chosen, --t0-s, not fitted)
Not fitted: variability (device-to-device SET spread, stuck devices) is written as zeros.

The standard errors printed (and written into the YAML's header) come from the spread of
each estimate across device groups. docs/characterization.md describes the method.
"""

EPILOG = """\
examples:
  pcm-hil fit-model jap.h5 -o my_chip.yaml --plot my_chip.png
  pcm-hil characterize --backend "sim://?model=my_chip.yaml" -o check.h5   # round trip
"""


def register(subparsers: Any) -> None:
    from hil.fit_model import FitOptions
    d = FitOptions()
    p = subparsers.add_parser("fit-model", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="FILE.h5", help="characterisation file")
    p.add_argument("-o", "--out", required=True, metavar="MODEL.yaml",
                   help="model YAML to write")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also plot measured vs fitted (pulse trains, distributions, read "
                        "noise, drift)")
    p.add_argument("--summary-json", metavar="FILE",
                   help="also write the fitted values, standard errors and diagnostics as JSON")
    p.add_argument("--name", help="model name in the YAML (default: OUT's file name)")
    p.add_argument("--t0-s", type=float, default=d.t0_s, metavar="S",
                   help=f"drift reference time t0 (default {d.t0_s} s)")
    p.add_argument("--g-min-us", type=float, metavar="US",
                   help="model g_min (default: the chip's, from the file)")
    p.add_argument("--g-max-us", type=float, metavar="US",
                   help="model g_max (default: the chip's, from the file)")
    p.add_argument("--drift-min-g-us", type=float, default=d.drift_min_g_us, metavar="US",
                   help="drift fit uses devices whose read after the train exceeds this "
                        f"(default {d.drift_min_g_us} µS)")
    p.add_argument("--n-sim", type=int, metavar="N",
                   help="simulated devices in the SET fit (default: 2x the measured, "
                        "20,000..100,000)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the SET fit's simulated devices (default {d.seed})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hil.characterize import load_characterization
    from hil.fit_model import FitOptions, fit_model, plot_fit, write_model_yaml
    from sim_backend.pcm_model import PcmModel

    from hil.output_files import check_writable
    for key, path in (("-o", args.out), ("--plot", args.plot),
                      ("--summary-json", args.summary_json)):
        if path:
            check_writable(path, key)   # before the fit, not after it
    name = args.name or os.path.splitext(os.path.basename(args.out))[0]
    opts = FitOptions(t0_s=args.t0_s, g_min_us=args.g_min_us, g_max_us=args.g_max_us,
                      drift_min_g_us=args.drift_min_g_us, n_sim=args.n_sim, seed=args.seed,
                      name=name)
    data = load_characterization(args.input)
    result = fit_model(data, opts)
    write_model_yaml(result, args.out, source=os.path.basename(args.input))
    PcmModel.from_yaml(args.out)   # what we wrote must load
    print(f"fitted {result.diagnostics['devices']} devices from {args.input} -> {args.out}")
    for pname, value, se in result.table():
        err = f"  ± {se:.2g}" if math.isfinite(se) else ""
        print(f"  {pname:<18} {value:>11.5g}{err}")
    if not result.diagnostics.get("set_converged", True):
        print("  warning: the SET fit stopped at its iteration limit")
    if "drift" in result.diagnostics:
        print(f"  warning: drift not fitted ({result.diagnostics['drift']}); nu set to 0")
    if args.plot:
        plot_fit(data, result, args.plot)
        print(f"plot -> {args.plot}")
    if args.summary_json:
        summary = {"model": result.model.to_dict(),
                   "standard_errors": result.se,
                   "diagnostics": result.diagnostics}
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=float)
    return 0
