"""The HDF5 file under a run log: how it is created, and how a reader opens it.

Opening is the delicate part: the file may be live (a writer appending to it in SWMR mode),
left by a killed writer (still marked open for writing), cut short, or not a run log at all;
each case gets one RunLogError that says which.
"""
from __future__ import annotations

import os
import time
from typing import Any

from hil.run_log.schema import RunLogError

#: A file HDF5 calls truncated that changed this recently is a live writer's, mid-commit.
SETTLE_S = 0.25
GIVE_UP_S = 5.0
#: Library-version bounds of the file format: SWMR needs at least the 1.10 format
#: (superblock version 3), and no newer one is allowed, so that every HDF5 1.10 or later
#: tool reads the file. ("latest" would mean the bundled library's own format - HDF5 2.0's
#: under h5py 3.16 - which 1.10 tools cannot read.)
LIBVER = ("v110", "v110")


def create_file(path: str) -> Any:
    """A new, empty HDF5 file for writing, in the 1.10 file format (SWMR needs it)."""
    import h5py
    try:
        return h5py.File(path, "w", libver=LIBVER)
    except OSError as e:
        raise RunLogError(f"cannot create the run log: {e}", path=path) from None


def open_file(path: str) -> Any:
    """Open read-only (SWMR read, so a crashed or live writer's file opens), mapping every
    failure to one RunLogError that says what is wrong with the file."""
    import h5py
    if not os.path.exists(path):
        raise RunLogError("no such file", path=path)
    if os.path.isdir(path):
        raise RunLogError("is a folder, not a run log", path=path)
    try:
        is_h5 = h5py.is_hdf5(path)
    except OSError as e:
        raise RunLogError(f"cannot read the file: {e}", path=path) from None
    if not is_h5:
        size = os.path.getsize(path)
        raise RunLogError("not a pcm-hil run log (not an HDF5 file"
                          + (", the file is empty" if size == 0 else "") + ")", path=path)
    msg = _open_plain(path)
    if not isinstance(msg, str):
        return msg
    if "already open for write" in msg:
        # A writer has it open, or was killed: SWMR read mode opens it anyway. (Not the
        # first choice: SWMR readers retry unreadable metadata many times, which makes a
        # corrupted file slow to reject.)
        try:
            return h5py.File(path, "r", swmr=True)
        except OSError as e:
            msg = str(e)
    if "truncated" in msg:
        raise RunLogError(f"truncated file (the end of the run log is missing): {msg}",
                          path=path)
    if "not already open for SWMR writing" in msg:
        raise RunLogError("its writer stopped before logging began (the file was never "
                          "switched to SWMR mode), so nothing of the run was logged",
                          path=path)
    raise RunLogError(f"corrupted run log, HDF5 cannot open it: {msg}", path=path)


def _open_plain(path: str) -> Any:
    """h5py.File(path, "r"), or the error message it gave.

    A writer in the middle of a commit has allocated file space it has not written yet, and
    HDF5 refuses such a file as truncated. (Opening it in SWMR mode instead, which skips that
    check, is no answer: for a file that really lost its end, SWMR reads retry the missing
    metadata for minutes.) So while the file keeps changing the open is retried: the commit
    ends in milliseconds. A file that stays unchanged for SETTLE_S really is truncated."""
    import h5py
    start = time.monotonic()
    last, changed = None, start
    while True:
        try:
            return h5py.File(path, "r")
        except OSError as e:
            msg = str(e)
        now = time.monotonic()
        if "truncated" not in msg or now - start > GIVE_UP_S:
            return msg
        st = os.stat(path)
        sig = (st.st_size, st.st_mtime_ns)
        if sig != last:
            last, changed = sig, now
        elif now - changed > SETTLE_S:
            return msg
        time.sleep(0.01)


__all__ = ["GIVE_UP_S", "LIBVER", "SETTLE_S", "create_file", "open_file"]
