"""`scripts/cnn_runs`: the seed's CNN in full: tuning on the validation split, three seeds.

  scripts/cnn_runs tune [--baseline-only] [--set KEY=VALUE ...]   # held-out: last 10k train
  scripts/cnn_runs seeds [--seeds 0 1 2] [--set KEY=VALUE ...]     # the test set, mean ± std

Every run is `configs/mnist_cnn.yaml` with the overrides (dotted keys, YAML values), on the
in-process simulated chip, with its fp32 baseline (same initial weights, data order and
hyperparameters). `tune` holds out the last 10,000 of the 60,000 training digits and trains
on the first 50,000, so the test set is never looked at while choosing. One line per epoch
and a JSON summary per run go to --out (default runs/cnn/). These runs take hours on two
cores; run them niced (`nice -n 10 scripts/cnn_runs ...`), one torch thread each (the
default --threads 1: on a shared machine torch's two-thread pool spins against the other load
and trains 10-20x slower).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import List, Optional

from drivers.typed_yaml import read_yaml
from hil.backend_url import open_backend
from hil.config import TorchExperimentConfig, apply_settings, config_from_dict
from hil.mnist import load_mnist
from hil.torch.experiment import TorchBaseline, torch_dataset
from hil.torch.threads import torch_threads
from hil.training import run_experiment


def study_config(path: str, overrides: List[str], holdout: str,
                 seed: Optional[int] = None) -> TorchExperimentConfig:
    """The config file with `KEY=VALUE` overrides (YAML values), on the given holdout."""
    d = read_yaml(path)
    apply_settings(d, overrides)
    d.setdefault("data", {})["holdout"] = holdout
    if holdout == "validation":
        d["data"]["train_examples"] = min(int(d["data"].get("train_examples", 60000)), 50000)
    if seed is not None:
        d["seed"] = seed
    return config_from_dict(d, source=f"{path} with {' '.join(overrides) or 'no overrides'}")


def study_run(cfg: TorchExperimentConfig, out: str, tag: str, baseline_only: bool) -> dict:
    """One run (or its baseline alone); its summary also goes to OUT/TAG.json."""
    t0 = time.time()
    if baseline_only:
        data = torch_dataset(load_mnist(cfg.data.source), cfg)
        b = TorchBaseline(cfg)
        accs = []
        for e in range(cfg.training.epochs):
            accs.append(b.train_epoch(data, e))
            print(f"{tag} epoch {e + 1}: fp32 {accs[-1]:.4f}", flush=True)
        summary = {"baseline_test_accuracy": accs[-1], "per_epoch_baseline": accs}
    else:
        def report(r):
            print(f"{tag} epoch {r.epoch + 1}: chip {r.test_accuracy:.4f} fp32 "
                  f"{r.baseline_test_accuracy} pulses {r.set_pulses} refreshes "
                  f"{r.refreshes} ({r.seconds:.0f} s)", flush=True)
        with open_backend("sim://", cfg.sim_chip_spec()) as be:
            summary = run_experiment(cfg, be, report=report)
    summary["config"] = cfg.to_dict()
    summary["wall_seconds"] = time.time() - t0
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{tag}.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/cnn_runs", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("mode", choices=["tune", "seeds"])
    p.add_argument("--config", default=os.path.join("configs", "mnist_cnn.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. optimizer.learning_rate=0.05")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baseline-only", action="store_true", help="tune: fp32 only (fast)")
    p.add_argument("--tag", default=None, help="file name stem of the summaries")
    p.add_argument("--out", default=os.path.join("runs", "cnn"))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    a = p.parse_args(argv)
    with torch_threads(a.threads):
        return _study(a)


def _study(a: argparse.Namespace) -> int:
    """The tuning run, or every seed's runs and the mean ± std over the seeds."""
    if a.mode == "tune":
        cfg = study_config(a.config, a.set, "validation")
        tag = a.tag or ("tune-" + "-".join(s.replace("=", "") for s in a.set) or "tune")
        study_run(cfg, a.out, tag, a.baseline_only)
        return 0
    chip, fp32, pulses = [], [], []
    for seed in a.seeds:
        cfg = study_config(a.config, a.set, "test", seed)
        s = study_run(cfg, a.out, f"{a.tag or 'seed'}{seed}", False)
        chip.append(s["test_accuracy"])
        fp32.append(s["baseline_test_accuracy"])
        pulses.append(s["update_set_pulses"] / s["epochs"])
        print(f"seed {seed}: chip {chip[-1]:.4f} fp32 {fp32[-1]:.4f} reduction "
              f"{s['programming_reduction']:.0f}x", flush=True)
    if len(chip) > 1:
        def ms(v):
            return f"{100 * statistics.mean(v):.2f} ± {100 * statistics.stdev(v):.2f} %"
        print(f"chip {ms(chip)}; fp32 {ms(fp32)}; update SET pulses per epoch "
              f"{statistics.mean(pulses):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
