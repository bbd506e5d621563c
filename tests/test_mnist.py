"""The offline MNIST loaders."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from drivers import ConfigError
from hil.mnist import load_idx_folder, load_mnist, load_pickle


def test_packaged_mnist_shapes(mnist):
    assert mnist.train_x.shape == (60000, 784) and mnist.test_x.shape == (10000, 784)
    assert mnist.train_x.dtype == np.float32 and 0 <= mnist.train_x.min()
    assert mnist.train_x.max() < 1.0
    assert set(np.unique(mnist.test_y)) == set(range(10))
    assert mnist.train_y[:5].tolist() == [5, 0, 4, 1, 9]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    p = tmp_path / "evil.pkl.gz"
    with gzip.open(p, "wb") as f:
        pickle.dump(((_Evil(), None), None, None), f)
    with pytest.raises(ConfigError, match="refusing to load posix.system|refusing to load os"):
        load_pickle(p)


def test_idx_folder(tmp_path, rng):
    def write(name, arr):
        dims = arr.shape
        header = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
        with gzip.open(tmp_path / (name + ".gz"), "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())
    imgs = rng.integers(0, 256, size=(20, 28, 28))
    labels = rng.integers(0, 10, size=20)
    write("train-images-idx3-ubyte", imgs)
    write("train-labels-idx1-ubyte", labels)
    write("t10k-images-idx3-ubyte", imgs[:5])
    write("t10k-labels-idx1-ubyte", labels[:5])
    m = load_mnist(str(tmp_path))
    assert m.train_x.shape == (20, 784) and m.test_x.shape == (5, 784)
    assert np.array_equal(m.train_x[3], imgs[3].ravel() / 256.0)
    assert m.train_y.tolist() == labels.tolist()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte"):
        load_idx_folder(tmp_path)


def test_bad_source():
    with pytest.raises(ConfigError, match="data.source"):
        load_mnist("/no/such/thing")
