"""Files a command will write, checked before the work that produces them.

A run of hours that fails at its end because its summary file cannot be written has wasted
those hours; so every output an operator names (a summary, a model, a characterisation
file, a chip-state file) is tried for writing before the first command is sent. The try is
real - the file is opened for writing, and removed again if it did not exist - because
permission bits say nothing on a read-only mount and nothing at all to root.
"""
from __future__ import annotations

import errno
import os

from drivers.errors import ConfigError


def check_writable(path: str, key: str, *, make_folder: bool = False) -> None:
    """Raise one ConfigError naming `key` unless `path` can be written (created, or
    overwritten where it exists). `make_folder` creates missing parent folders, as the
    writer would."""
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder; give a file name", key=key)
    folder = os.path.dirname(os.path.abspath(path))
    if make_folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the folder {folder}: {_why(e)}", key=key) \
                from None
    elif not os.path.isdir(folder):
        raise ConfigError(f"the folder {folder} does not exist", key=key)
    existed = os.path.exists(path)
    try:
        # Append mode leaves an existing file's content (and its mtime) as it is.
        with open(path, "ab"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {_why(e)}", key=key) from None
    if not existed:
        try:
            os.remove(path)
        except OSError:
            pass


def _why(e: OSError) -> str:
    if e.errno == errno.EROFS:
        return "read-only file system"
    return e.strerror or str(e)


__all__ = ["check_writable"]
