"""Environment provenance (hil.run_log.provenance): what a log says about the software and
machine that wrote it."""
from __future__ import annotations

import re

import h5py
import numpy as np

from hil.run_log.provenance import PACKAGES, environment_provenance, git_info


def test_provenance_names_the_software_and_the_host():
    env = environment_provenance()
    pk = env["packages"]
    assert set(PACKAGES) <= set(pk)
    assert pk["numpy"] == np.__version__ and pk["h5py"] == h5py.__version__
    assert pk["hdf5"] == h5py.version.hdf5_version
    assert env["python"].count(".") == 2 and env["host"] and env["pid"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", env["started_utc"])


def test_git_info_is_a_commit_or_nothing():
    g = git_info()
    assert g is None or (re.fullmatch(r"[0-9a-f]{40}", g["commit"])
                         and g["dirty"] in (True, False, None))
