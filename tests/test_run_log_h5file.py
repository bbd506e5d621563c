"""Opening the HDF5 file under a run log (hil.run_log.h5file): every file that is not a
readable log gets one RunLogError saying why, and a live writer's file caught mid-commit
opens once the commit lands.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
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


# --- other HDF5 tools read every dataset (schema 1.2) ------------------------------------------
H5DUMP, H5LS = shutil.which("h5dump"), shutil.which("h5ls")
needs_hdf5_tools = pytest.mark.skipif(
    H5DUMP is None or H5LS is None,
    reason="the HDF5 command-line tools (h5dump, h5ls; Debian package hdf5-tools) are not "
           "installed, so the run log cannot be checked against a C HDF5 reader; .ci/run "
           "installs them")
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "b": b"\b", "f": b"\f", "a": b"\a",
            "v": b"\v", "\\": b"\\", '"': b'"'}


def _unescape(text: str) -> bytes:
    """A string as `h5dump -e` prints it (C escapes, octal for other bytes) → its bytes."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] != "\\":
            out += text[i].encode("utf-8")
            i += 1
            continue
        octal = re.match(r"[0-7]{1,3}", text[i + 1:i + 4])
        if octal:
            out.append(int(octal.group(), 8))
            i += 1 + len(octal.group())
        else:
            out += _ESCAPES[text[i + 1]]
            i += 2
    return bytes(out)


def _h5dump(args: list) -> str:
    done = subprocess.run([H5DUMP, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"h5dump {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


def _h5dump_values(path: str, name: str, ds: h5py.Dataset, folder: str) -> object:
    """What h5dump reads from one dataset: raw little-endian bytes for numbers, the list of
    byte strings for strings."""
    if ds.dtype.kind in "iuf":
        out = os.path.join(folder, "dump.bin")
        if os.path.exists(out):
            os.remove(out)
        _h5dump(["-b", "LE", "-o", out, "-d", name, path])
        return open(out, "rb").read() if os.path.exists(out) else b""
    text = _h5dump(["-e", "-y", "-w", "0", "-d", name, path])
    data = text[text.index("DATA {"):]
    return [_unescape(s) for s in re.findall(r'"((?:[^"\\]|\\.)*)"', data)]


def _h5py_values(ds: h5py.Dataset) -> object:
    v = ds[()]
    if ds.dtype.kind in "iuf":
        return np.ascontiguousarray(v, dtype=ds.dtype.newbyteorder("<")).tobytes()
    items = [v] if ds.shape == () else list(np.ravel(v))
    if ds.dtype.kind == "S":   # fixed length: numpy drops the padding h5dump shows
        return [bytes(x).ljust(ds.dtype.itemsize, b"\0") for x in items]
    return [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in items]


class _EventfulWriter(RunLogWriter):
    """The real writer, also given an instrument reading and a run event each epoch (the
    trainer logs those only with a station or a monitor), so no table stays empty."""

    def on_epoch_metrics(self, epoch, metrics):
        self.on_monitor(self._last_step, {"smu.current_a": 1.5e-3, "temp_c": 24.5})
        self.on_event(self._last_step, "run_paused", {"monitor": "temp_c", "value": 24.5,
                                                      "note": 'a "quoted"\nline µ'})
        super().on_epoch_metrics(epoch, metrics)


@pytest.fixture(scope="module")
def trained_log(tmp_path_factory, small_data):
    """A real run's log: the trainer on the simulated chip, MATVECs on the chip."""
    from conftest import small_config
    from hil.backend_url import open_backend
    from hil.training import run_experiment
    cfg = small_config(seed=2, data={"train_examples": 150, "test_examples": 100},
                       training={"matvec": "chip"}, log={"flush_every_steps": 40})
    path = str(tmp_path_factory.mktemp("h5tools") / "run.h5")
    with open_backend("sim://", cfg.sim_chip_spec()) as chip:
        run_experiment(cfg, chip, _EventfulWriter(path, cfg), data=small_data)
    return path


@needs_hdf5_tools
def test_h5dump_reads_every_dataset_of_a_real_run_as_h5py_does(trained_log, tmp_path):
    """Any HDF5 1.10+ tool reads the log: the C library's h5dump gets from every dataset
    (numbers bit for bit, strings byte for byte) what h5py gets."""
    names = []
    with h5py.File(trained_log, "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert len(names) > 60
        for name in names:
            ds = f[name]
            assert ds.compression in (None, "gzip"), name     # no LZF, no plugin filters
            assert _h5dump_values(trained_log, name, ds, str(tmp_path)) == _h5py_values(ds), \
                name
        for name in ("reads/events/value", "pulses/events/address", "matvec/events/value",
                     "events/step", "metrics/monitor/step", "snapshots/g_us"):
            assert f[name].shape[0] > 0, name     # every kind of table has rows
    whole = subprocess.run([H5DUMP, "-A", trained_log], capture_output=True, text=True,
                           timeout=60)
    assert whole.returncode == 0 and "error" not in whole.stderr.lower(), whole.stderr
    with RunLog(trained_log) as r:
        assert r.schema_version == "1.2" and r.events()[0].detail["note"] == 'a "quoted"\nline µ'


@needs_hdf5_tools
def test_h5ls_lists_every_dataset_with_its_shape(trained_log):
    out = subprocess.run([H5LS, "-r", trained_log], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    listed = {}
    for line in out.stdout.splitlines():
        name, kind = line.split(None, 1)
        listed[name.lstrip("/")] = kind
    with h5py.File(trained_log, "r") as f:
        for name in listed:
            assert name == "" or name in f, name
        def check(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert "ERROR" not in listed[name], (name, listed[name])
                want = "Dataset {SCALAR}" if obj.shape == () else \
                    "Dataset {" + ", ".join(f"{n}/Inf" if m is None else str(n)
                                            for n, m in zip(obj.shape, obj.maxshape)) + "}"
                assert listed[name] == want, (name, listed[name], want)
        f.visititems(check)
