"""Invariant 1 across machines: one seed and config give one run, whatever arithmetic the
machine's BLAS and numpy would pick (drivers.portable_math, docs/portability.md).

Each run is the real CLI in a subprocess whose environment changes what numpy computes:
OPENBLAS_CORETYPE selects another OpenBLAS kernel (another summation order and FMA use),
NPY_DISABLE_CPU_FEATURES takes numpy's SIMD dispatch down to its baseline (other exp/log/cos
code). A probe first shows that these environments really change numpy's own results on this
machine; then every training run must end in the same state digest and metrics, a log recorded
under one must verify under the others, and the log committed in tests/data, recorded once,
must keep verifying and keep its digest.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_LOG = ROOT / "tests" / "data" / "portable-run.h5"
#: Its state digest, logged when it was recorded (the SMALL config, arithmetic portable-1).
COMMITTED_DIGEST = "4018069c0adcaeb39e350f9500874c2629121211936fdc2c79d24d6a13c8e7ff"

#: Small enough for a few seconds per run, big enough to pulse, refresh, decay the learning
#: rate, draw every random stream of a device model with spread, and train the baseline.
SMALL = {
    "name": "portability", "seed": 5,
    "data": {"train_examples": 200, "test_examples": 200},
    "network": {"layers": [784, 8, 10]},
    "chip": {"rows": 256, "cols": 256, "model": "pcm_like"},
    "optimizer": {"learning_rate": 0.3, "refresh": {"period_steps": 20}},
    "training": {"epochs": 2, "baseline": True},
}
#: The issue's run: 3,000 examples, seed 5, one epoch, the default network and chip.
ISSUE = {"name": "portability-issue", "seed": 5,
         "data": {"train_examples": 3000, "test_examples": 2000},
         "training": {"epochs": 1, "baseline": False}}

PROBE = """
import hashlib, numpy as np
rng = np.random.default_rng(0)
a = rng.standard_normal((3, 157)).astype(np.float32)
b = rng.standard_normal((157, 250)).astype(np.float32)
x = rng.uniform(-30, 30, 4096).astype(np.float32)
print(hashlib.sha256((a @ b).tobytes() + (a[:1] @ b).tobytes()).hexdigest()[:16],
      hashlib.sha256(np.exp(x).tobytes()).hexdigest()[:16])
"""


def _cpu_features() -> tuple:
    try:
        from numpy._core import _multiarray_umath as mu   # numpy 2
    except ImportError:                                     # numpy 1.x
        from numpy.core import _multiarray_umath as mu
    return mu.__cpu_features__, mu.__cpu_dispatch__


def environments(combined: bool = False) -> Dict[str, Dict[str, str]]:
    """The environments this machine can run: OpenBLAS kernels its CPU supports, numpy with
    every SIMD feature it would dispatch to disabled (and, `combined`, both at once)."""
    features, dispatch = _cpu_features()
    envs: Dict[str, Dict[str, str]] = {"default": {}}
    if platform.machine().lower() in ("x86_64", "amd64"):
        needs = {"Haswell": ("AVX2", "FMA3"), "SandyBridge": ("AVX",), "Nehalem": ("SSE42",),
                 "Prescott": ("SSE3",)}
        for core, fs in needs.items():
            if all(features.get(f) for f in fs):
                envs[f"openblas-{core}"] = {"OPENBLAS_CORETYPE": core}
    present = [f for f in dispatch if features.get(f)]
    if present:
        envs["numpy-baseline"] = {"NPY_DISABLE_CPU_FEATURES": " ".join(present)}
        if combined and "openblas-Prescott" in envs:
            envs["numpy-baseline+openblas-Prescott"] = {**envs["numpy-baseline"],
                                                       **envs["openblas-Prescott"]}
    return envs


def _env(extra: Dict[str, str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _cli(args: List[str], extra: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hil.cli", *args], cwd=cwd, env=_env(extra),
                          capture_output=True, text=True, timeout=900)


def _probe(extra: Dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env=_env(extra), capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip()


def _train(cfg: dict, extra: Dict[str, str], tmp: Path, tag: str, log: bool = False) -> dict:
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    summary = tmp / f"{tag}.json"
    args = ["train", "--config", str(config), "--no-progress", "--summary-json", str(summary)]
    args += ["--run", str(tmp / f"{tag}.h5")] if log else ["--no-log"]
    r = _cli(args, extra, tmp)
    assert r.returncode == 0, f"{tag}: {r.stderr[-2000:]}"
    return json.loads(summary.read_text())


def _comparable(summary: dict) -> dict:
    """The summary without wall-clock figures."""
    drop = {"train_seconds", "examples_per_s", "seconds"}
    out = {k: v for k, v in summary.items() if k not in drop}
    out["per_epoch"] = [{k: v for k, v in e.items() if k not in drop}
                        for e in summary["per_epoch"]]
    return out


def _verify(log: Path, extra: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return _cli(["replay", str(log), "--verify", "--no-progress"], extra, cwd)


def _check_one_run(cfg: dict, envs: Dict[str, Dict[str, str]], tmp: Path) -> None:
    probes = {name: _probe(extra) for name, extra in envs.items()}
    if len(set(probes.values())) == 1:
        pytest.skip("numpy and BLAS give the same bits under every environment this machine "
                    f"can run ({', '.join(envs)}): nothing to compare")
    runs = {name: _comparable(_train(cfg, extra, tmp, name)) for name, extra in envs.items()}
    digests = {name: s["state_digest"] for name, s in runs.items()}
    assert len(set(digests.values())) == 1, digests
    first = next(iter(runs.values()))
    for name, s in runs.items():
        assert s == first, name


def test_one_run_under_every_blas_kernel_and_numpy_feature_set(tmp_path):
    _check_one_run(SMALL, environments(), tmp_path)


def test_a_log_recorded_under_one_kernel_verifies_under_the_others(tmp_path):
    envs = environments()
    names = list(envs)
    _train(SMALL, envs[names[0]], tmp_path, "recorded", log=True)
    others = [n for n in names[1:] if n.startswith("openblas")][-1:] + \
        [n for n in names if n.startswith("numpy")]
    assert others, "no other environment to verify under"
    for name in others:
        r = _verify(tmp_path / "recorded.h5", envs[name], tmp_path)
        assert r.returncode == 0 and "replay matches the log" in r.stdout, \
            f"{name}: {r.stdout[-1500:]}{r.stderr[-1500:]}"


def test_the_committed_log_verifies_and_keeps_its_digest(tmp_path):
    """tests/data/portable-run.h5 was recorded once (the SMALL config) and must verify on
    every machine and numpy version from now on: replay re-runs the host's arithmetic
    against it, and a fresh run of its config on the simulated chip must end in the digest
    it logged (the simulator's arithmetic)."""
    from hil.run_log import RunLog
    r = _verify(COMMITTED_LOG, {}, tmp_path)
    assert r.returncode == 0 and "replay matches the log" in r.stdout, r.stdout + r.stderr
    with RunLog(str(COMMITTED_LOG)) as log:
        cfg, logged, arithmetic = log.config, log.summary, log.arithmetic
    assert arithmetic == "portable-1" and logged["state_digest"] == COMMITTED_DIGEST
    # the logged config has no config_version: it is format 1, as a file it must say so
    assert "config_version" not in cfg
    assert _train({**cfg, "config_version": 1}, {}, tmp_path, "fresh")["state_digest"] == \
        COMMITTED_DIGEST


@pytest.mark.slow
def test_the_issues_run_under_every_environment(tmp_path):
    """The run the issue measured (seed 5, 3,000 examples, 784-250-10 on the full chip) gave
    two digests under two OpenBLAS kernels; now one, under every kernel and feature set."""
    _check_one_run(ISSUE, environments(combined=True), tmp_path)


@pytest.mark.slow
def test_the_committed_log_verifies_under_every_environment(tmp_path):
    for name, extra in environments(combined=True).items():
        r = _verify(COMMITTED_LOG, extra, tmp_path)
        assert r.returncode == 0 and "replay matches the log" in r.stdout, name
