"""Sweep files for the sweep tests: a tiny base experiment (a few hundred digits, one epoch,
a 784-16-10 network) that runs in seconds, and a writer for sweep files around it."""
from __future__ import annotations

import pathlib
from typing import Any

import yaml

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"train_examples": 300, "test_examples": 300},
    "network": {"layers": [784, 16, 10]},
    "chip": {"cols": 256},
    "training": {"epochs": 1, "baseline": False},
}


def write_base(folder: pathlib.Path, **changes: Any) -> pathlib.Path:
    cfg = {**TINY, **changes}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def write_sweep(folder: pathlib.Path, name: str = "sweep", **keys: Any) -> pathlib.Path:
    """A sweep file over the tiny base (`base:` defaults to it; output into `folder`)."""
    if "base" not in keys:
        keys["base"] = str(write_base(folder))
    keys.setdefault("output", str(folder / "out" / name))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **keys}, sort_keys=False), encoding="utf-8")
    return path
