"""Opening the HDF5 file under a run log (hil.run_log.h5file): every file that is not a
readable log gets one RunLogError saying why, and a live writer's file caught mid-commit
opens once the commit lands.
"""
from __future__ import annotations

import os
import sys
import time

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_log_fakes import fake_layout, small_cfg  # noqa: E402

from drivers.pulse import DEFAULT_SET  # noqa: E402
from hil.run_log import RunLog, RunLogError, RunLogWriter  # noqa: E402
from hil.run_log.h5file import create_file, open_file  # noqa: E402


def test_what_is_not_an_hdf5_file_is_named(tmp_path):
    with pytest.raises(RunLogError, match="no such file"):
        open_file(str(tmp_path / "missing.h5"))
    with pytest.raises(RunLogError, match="is a folder"):
        open_file(str(tmp_path))
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(RunLogError, match="not an HDF5 file, the file is empty"):
        open_file(str(empty))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(RunLogError, match=r"not an HDF5 file\)"):
        open_file(str(text))
    with pytest.raises(RunLogError, match="cannot create the run log"):
        create_file(str(tmp_path / "no" / "such" / "folder.h5"))


def test_a_live_writers_file_opens_while_it_is_written(tmp_path):
    """A writer in SWMR mode holds the file open for writing; readers still open it."""
    path = str(tmp_path / "live.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    f = open_file(path)
    try:
        assert f.swmr_mode and "commit" in f
    finally:
        f.close()
    w.finish("completed")


def test_live_file_caught_mid_commit_opens_and_a_cut_file_does_not(tmp_path):
    """A reader can catch a live writer mid-commit, between allocating file space and
    writing it: HDF5 then calls the file truncated. RunLog retries while the file changes
    (a monitoring loop hit this mid-run), and still rejects a file that stays cut short."""
    import threading
    path = str(tmp_path / "live.h5")
    w = RunLogWriter(path, small_cfg())
    w.begin(config={}, provenance={}, layout=fake_layout())
    a = np.arange(4, dtype=np.uint32)
    for step in range(1, 31):
        w.before_program(step, a, np.ones(4), DEFAULT_SET, "update")
        w.on_program(step, a, np.ones(4), DEFAULT_SET, "update")
    w.flush()
    data = open(path, "rb").read()
    seen = tmp_path / "seen.h5"
    seen.write_bytes(data[:-4096])    # the commit's last writes not on disk yet
    with pytest.raises(OSError, match="truncated"):
        h5py.File(str(seen), "r")

    def commit_ends() -> None:
        time.sleep(0.1)
        with open(seen, "ab") as f:
            f.write(data[-4096:])
    t = threading.Thread(target=commit_ends)
    t.start()
    with RunLog(str(seen)) as r:      # opened once the writer's flush has landed
        assert r.status.status == "running"
        assert len(r.pulse_batches()["step"]) == 30
    t.join()
    seen.write_bytes(data[:-4096])    # and a file that stays cut short is refused
    t0 = time.monotonic()
    with pytest.raises(RunLogError, match="truncated file"):
        RunLog(str(seen))
    assert time.monotonic() - t0 < 3.0
    w.finish("completed", None, {})
    with RunLog(path) as r:
        assert r.status.status == "completed"


def test_a_live_log_in_its_first_seconds_is_never_called_corrupted(tmp_path):
    """A reader polling a run's log from the instant it exists - while the trainer loads its
    data, while begin() builds the tables, once it logs - finds a header that says the run
    has not begun, then the log; never a corrupted, locked or truncated file."""
    import subprocess
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: early\ndata: {train_examples: 50, test_examples: 20}\n"
                   "training: {epochs: 1, baseline: false}\n")
    path = str(tmp_path / "r.h5")
    p = subprocess.Popen([sys.executable, "-m", "hil.cli", "train", "--config", str(cfg),
                          "--run", path, "--no-progress"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seen = set()
    try:
        while p.poll() is None or not seen:
            if not os.path.exists(path):
                time.sleep(0.002)
                continue
            try:
                with RunLog(path) as lg:
                    seen.add(f"log, status {lg.status.status}")
            except RunLogError as e:
                assert "nothing of the run is logged yet" in str(e), str(e)
                seen.add("header")
    finally:
        _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "header" in seen and "log, status running" in seen, seen
