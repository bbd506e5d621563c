"""The sweep file: which experiment, which config keys take which values, where results go.

A sweep file is YAML, checked as strictly as an experiment config: an unknown key, a value of
the wrong type or a config key that does not exist is one ConfigError naming the sweep file's
key (`grid.optimizer.lerning_rate: ...`). Config keys are written as dotted paths into the
experiment config (`optimizer.refresh.high_us`); see docs/sweeps.md for every key.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from drivers.errors import ConfigError
from drivers.typed_yaml import load_dataclass, read_yaml
from hil.config import ExperimentConfig


class DistributionKind(str, enum.Enum):
    UNIFORM = "uniform"          # float uniform in [low, high)
    LOGUNIFORM = "loguniform"    # float whose log is uniform in [log low, log high)
    INT = "int"                  # integer uniform in [low, high], both included
    CHOICE = "choice"            # one of the listed values, equally likely


@dataclass(frozen=True)
class Distribution:
    """Where a random search draws one config key's value from."""

    kind: DistributionKind
    values: Tuple[Any, ...]      # (low, high) or, for choice, the candidates


@dataclass(frozen=True)
class RandomSearch:
    samples: int
    seed: int = 0
    params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")


@dataclass(frozen=True)
class PlotSpec:
    """Which summary figures the plots draw (flattened summary keys, see the results table).
    accuracy: default validation_accuracy where the summaries have it, else test_accuracy."""

    accuracy: Optional[str] = None
    pulses: str = "set_pulses"


@dataclass(frozen=True)
class SweepFile:
    """The sweep file as written (see docs/sweeps.md)."""

    name: Optional[str] = None                    # default: the file's name without .yaml
    base: Optional[str] = None                    # experiment YAML (default: the defaults)
    set: Dict[str, Any] = field(default_factory=dict)          # every point
    grid: Dict[str, List[Any]] = field(default_factory=dict)   # the cartesian product
    random: Optional[RandomSearch] = None
    variants: List[Dict[str, Any]] = field(default_factory=list)  # keys set together
    seeds: Optional[List[int]] = None             # default: the base config's seed
    output: Optional[str] = None                  # default: sweeps/<name>
    run_logs: bool = True                         # a run log per point
    plot: PlotSpec = field(default_factory=PlotSpec)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the file, where it came from, and its random distributions."""

    file: SweepFile
    path: str
    name: str
    output: str                                   # absolute
    base_config: Dict[str, Any]                   # the base experiment, as a config dict
    distributions: Dict[str, Distribution]

    @property
    def search(self) -> str:
        """grid, random, or variants (only variants × seeds)."""
        if self.file.random is not None:
            return "random"
        return "grid" if self.file.grid else "variants"


#: Keys the sweep sets itself: a point's seed comes from `seeds:`.
_SEED_KEY = "seed"


def check_config_key(dotted: str, where: str, source: str) -> None:
    """`dotted` must name a key of the experiment config (a value or a whole section)."""
    cls: Any = ExperimentConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ConfigError(f"{'.'.join(parts[:i])} is a value, not a section of the "
                              "experiment config", key=where, source=source)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        if part not in fields:
            raise ConfigError(f"not a key of the experiment config ("
                              f"{'.'.join(parts[:i]) or 'top level'} has: "
                              f"{', '.join(fields)})", key=where, source=source)
        cls = typing.get_type_hints(cls)[part]
    if dotted == _SEED_KEY:
        raise ConfigError("a point's seed comes from the sweep's `seeds:` list",
                          key=where, source=source)


def set_dotted(config: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key in a nested config dict (every section exists in a to_dict())."""
    *sections, leaf = dotted.split(".")
    d = config
    for s in sections:
        d = d[s]
    d[leaf] = value


def _distribution(value: Any, where: str, source: str) -> Distribution:
    forms = "{uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]} or " \
            "{choice: [a, b, ...]}"
    if not (isinstance(value, Mapping) and len(value) == 1):
        raise ConfigError(f"expected one of {forms}, got {value!r}", key=where, source=source)
    (name, args), = value.items()
    try:
        kind = DistributionKind(name)
    except ValueError:
        raise ConfigError(f"unknown distribution {name!r}; expected one of {forms}",
                          key=where, source=source) from None
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{name}: expected a non-empty list, got {args!r}", key=where,
                          source=source)
    if kind is DistributionKind.CHOICE:
        return Distribution(kind, tuple(args))
    if len(args) != 2:
        raise ConfigError(f"{name}: expected [low, high], got {args!r}", key=where,
                          source=source)
    number = int if kind is DistributionKind.INT else (int, float)
    if any(isinstance(a, bool) or not isinstance(a, number) for a in args):
        raise ConfigError(f"{name}: expected two {'integers' if number is int else 'numbers'}"
                          f", got {args!r}", key=where, source=source)
    low, high = args
    if not all(math.isfinite(a) for a in args):
        raise ConfigError(f"{name}: bounds must be finite, got {args!r}", key=where,
                          source=source)
    ordered = low <= high if kind is DistributionKind.INT else low < high
    if not ordered:
        raise ConfigError(f"{name}: low must be below high, got {args!r}", key=where,
                          source=source)
    if kind is DistributionKind.LOGUNIFORM and not low > 0:
        raise ConfigError(f"loguniform: low must be > 0, got {low}", key=where, source=source)
    return Distribution(kind, (low, high))


def load_sweep(path: str | os.PathLike, output: Optional[str] = None) -> Sweep:
    """Read and check a sweep file (the keys; each point's values are checked when the sweep
    is expanded, see hil.sweep.points). `output` overrides the file's `output:`."""
    from hil.config import load_config

    source = os.fspath(path)
    f = load_dataclass(SweepFile, read_yaml(source), source=source)
    if f.grid and f.random is not None:
        raise ConfigError("a sweep is a grid or a random search, not both (drop grid: or "
                          "random:)", key="random", source=source)
    for k, values in f.grid.items():
        check_config_key(k, f"grid.{k}", source)
        if not values:
            raise ConfigError("needs at least one value", key=f"grid.{k}", source=source)
    for k in f.set:
        check_config_key(k, f"set.{k}", source)
    for i, variant in enumerate(f.variants):
        if not variant:
            raise ConfigError("an empty variant", key=f"variants[{i}]", source=source)
        for k in variant:
            check_config_key(k, f"variants[{i}].{k}", source)
    distributions: Dict[str, Distribution] = {}
    if f.random is not None:
        if not f.random.params:
            raise ConfigError("needs at least one key to draw", key="random.params",
                              source=source)
        for k, v in f.random.params.items():
            check_config_key(k, f"random.params.{k}", source)
            distributions[k] = _distribution(v, f"random.params.{k}", source)
    swept = [*f.grid, *distributions]
    for i, variant in enumerate(f.variants):
        for k in variant:
            if k in swept:
                raise ConfigError("also swept by grid: or random: (a key is set in one "
                                  "place)", key=f"variants[{i}].{k}", source=source)
    for k in f.set:
        if k in swept or any(k in v for v in f.variants):
            raise ConfigError("also swept (a key is set in one place)", key=f"set.{k}",
                              source=source)
    if f.seeds is not None:
        if not f.seeds:
            raise ConfigError("needs at least one seed", key="seeds", source=source)
        for i, s in enumerate(f.seeds):
            if s < 0:
                raise ConfigError(f"must be >= 0, got {s}", key=f"seeds[{i}]", source=source)
        if len(set(f.seeds)) != len(f.seeds):
            raise ConfigError(f"repeats a seed: {f.seeds}", key="seeds", source=source)
    if f.base and not os.path.isfile(f.base):
        raise ConfigError(f"experiment config {f.base} not found (paths are relative to the "
                          "current folder)", key="base", source=source)
    base = (load_config(f.base) if f.base else ExperimentConfig()).to_dict()
    name = f.name or os.path.splitext(os.path.basename(source))[0]
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"not usable as a folder name: {name!r}", key="name", source=source)
    out = output or f.output or os.path.join("sweeps", name)
    return Sweep(f, source, name, os.path.abspath(out), base, distributions)


__all__ = ["Distribution", "DistributionKind", "PlotSpec", "RandomSearch", "Sweep",
           "SweepFile", "check_config_key", "load_sweep", "set_dotted"]
