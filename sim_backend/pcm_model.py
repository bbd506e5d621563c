"""The PCM device model: SET, RESET, drift and read noise, vectorised over devices.

Parameters live in YAML files (package data under sim_backend/presets, or a file a lab fitted
to its own chip). Every function takes its standard-normal draws as an argument, so the caller
(the simulated chip) decides where randomness comes from; the model itself is deterministic,
and its exp and power are drivers.portable_math's, so it is the same on every machine.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from importlib import resources
from types import SimpleNamespace
from typing import List

import numpy as np

from drivers import portable_math
from drivers.errors import ConfigError
from drivers.typed_yaml import dataclass_to_dict, load_dataclass, read_yaml

#: Pulse numbers with a table entry in PcmModel.set_pulse_counted (16 KiB of tables; a
#: device takes some tens of SET pulses between refreshes, a larger count is computed).
_SET_TABLE_SIZE = 1024


def _shape(x: object) -> tuple:
    """np.shape, without its wrapper for the common cases of an array and a float."""
    if isinstance(x, np.ndarray):
        return x.shape
    return () if isinstance(x, float) else np.shape(x)


@dataclass(frozen=True)
class SetParams:
    """SET pulse: dG ~ N(m1*G + c1 + a1*P, (m2*G + c2 + a2*P)^2), P = exp(-n/alpha)."""

    alpha: float = 2.6
    m1: float = -0.084
    c1: float = 0.880
    a1: float = 1.40
    m2: float = 0.091
    c2: float = 0.260
    a2: float = 2.15

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"set.alpha must be > 0, got {self.alpha}")


@dataclass(frozen=True)
class ResetParams:
    mean_us: float = 0.1
    std_us: float = 0.01


@dataclass(frozen=True)
class DriftParams:
    """G(t) = G(t_p + t0) * ((t - t_p) / t0)^-nu; nu ~ N(nu_mean, nu_std) per device."""

    nu_mean: float = 0.04
    nu_std: float = 0.0
    t0_s: float = 38.6

    def __post_init__(self) -> None:
        if not self.t0_s > 0:
            raise ValueError(f"drift.t0_s must be > 0, got {self.t0_s}")


@dataclass(frozen=True)
class ReadNoiseParams:
    """G_read = G + N(0, (rel * G + abs_us)^2)."""

    rel: float = 0.03
    abs_us: float = 0.13


@dataclass(frozen=True)
class VariabilityParams:
    """Device-to-device spread and stuck devices (fractions of the chip)."""

    set_mean_rel_std: float = 0.0
    stuck_low_fraction: float = 0.0
    stuck_high_fraction: float = 0.0
    stuck_high_us: float = 15.0

    def __post_init__(self) -> None:
        for name in ("stuck_low_fraction", "stuck_high_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"variability.{name} must be in [0, 1], got {v}")


@dataclass(frozen=True)
class PcmModel:
    """A PCM device model. Conductances in µS, times in seconds."""

    name: str = "custom"
    description: str = ""
    g_min_us: float = 0.1
    g_max_us: float = 20.0
    set: SetParams = field(default_factory=SetParams)
    reset: ResetParams = field(default_factory=ResetParams)
    drift: DriftParams = field(default_factory=DriftParams)
    read_noise: ReadNoiseParams = field(default_factory=ReadNoiseParams)
    variability: VariabilityParams = field(default_factory=VariabilityParams)

    def __post_init__(self) -> None:
        if not 0 <= self.g_min_us < self.g_max_us:
            raise ValueError(f"need 0 <= g_min_us < g_max_us, got {self.g_min_us}, "
                             f"{self.g_max_us}")

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "PcmModel":
        return load_dataclass(cls, read_yaml(path), source=str(path))

    @classmethod
    def preset(cls, name: str) -> "PcmModel":
        """A model shipped with the package: see `PcmModel.presets()`."""
        names = cls.presets()
        if name not in names:
            raise ConfigError(f"unknown device model preset {name!r}; presets: "
                              f"{', '.join(names)}")
        ref = resources.files("sim_backend") / "presets" / f"{name}.yaml"
        with resources.as_file(ref) as p:
            return cls.from_yaml(p)

    @staticmethod
    def presets() -> List[str]:
        d = resources.files("sim_backend") / "presets"
        return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))

    @classmethod
    def load(cls, name_or_path: str) -> "PcmModel":
        """A preset name, or the path of a model YAML file (e.g. one written by fit-model)."""
        if name_or_path in cls.presets():
            return cls.preset(name_or_path)
        if os.path.exists(name_or_path):
            return cls.from_yaml(name_or_path)
        raise ConfigError(f"{name_or_path!r} is neither a preset ({', '.join(cls.presets())}) "
                          "nor an existing model file")

    def to_dict(self) -> dict:
        return dataclass_to_dict(self)

    # --- physics (all vectorised; z arguments are standard-normal draws) ------------------
    def set_pulse(self, g: np.ndarray, n: np.ndarray, z: np.ndarray,
                  mean_scale: np.ndarray | float = 1.0) -> np.ndarray:
        """Conductance after one SET pulse; `n` counts this pulse (1 = first after RESET)."""
        g64 = np.asarray(g, dtype=np.float64)
        if not self._same_shapes(g64, n, z, mean_scale):
            return self._set_pulse_broadcast(g64, n, z, mean_scale)
        k = self._set_constants
        p = np.negative(n, dtype=np.float64)
        p /= k.alpha
        p = portable_math.exp(p)                      # P = exp(-n/alpha)
        a1p = k.a1 * p
        p *= k.a2
        return self._set_pulse_terms(g64, a1p, p, z, mean_scale)

    def set_pulse_counted(self, g: np.ndarray, n: np.ndarray, z: np.ndarray,
                          mean_scale: np.ndarray | float = 1.0) -> np.ndarray:
        """set_pulse for an integer array n >= 0 (the simulated chip's SET counts).

        a1·exp(-n/α) and a2·exp(-n/α) come from tables made once by the same numpy
        operations, so the result is set_pulse's bit for bit, in fewer calls per pulse."""
        g64 = np.asarray(g, dtype=np.float64)
        if not self._same_shapes(g64, n, z, mean_scale):
            return self._set_pulse_broadcast(g64, n, z, mean_scale)
        a1p_table, a2p_table = self._set_p_tables
        try:
            a1p, a2p = a1p_table.take(n), a2p_table.take(n)
        except IndexError:   # beyond the tables: compute
            return self.set_pulse(g64, n, z, mean_scale)
        return self._set_pulse_terms(g64, a1p, a2p, z, mean_scale)

    @staticmethod
    def _same_shapes(g64: np.ndarray, n: np.ndarray, z: np.ndarray,
                     mean_scale: np.ndarray | float) -> bool:
        """Whether n has g's shape and z, mean_scale are scalars or have it too (then the
        in-place arithmetic applies)."""
        shape = g64.shape
        return _shape(n) == shape and _shape(z) in ((), shape) \
            and _shape(mean_scale) in ((), shape)

    def _set_pulse_terms(self, g64: np.ndarray, a1p: np.ndarray, a2p: np.ndarray,
                         z: np.ndarray, mean_scale: np.ndarray | float) -> np.ndarray:
        """set_pulse from a1·P and a2·P (both consumed). The chip calls this per pulse on a
        few devices: the same arithmetic, operation for operation, as the textbook formula
        in _set_pulse_broadcast, but in place and with 0-d constants (cheap operands)."""
        k = self._set_constants
        mu = k.m1 * g64
        mu += k.c1
        mu += a1p
        if not (isinstance(mean_scale, float) and mean_scale == 1.0):   # x * 1.0 == x
            mu *= mean_scale
        sigma = k.m2 * g64
        sigma += k.c2
        sigma += a2p
        np.maximum(sigma, k.zero, out=sigma)
        sigma *= z
        mu += g64                                     # (g + mu) + sigma*z, in this order
        mu += sigma
        np.maximum(mu, k.g_min, out=mu)               # np.clip(x, lo, hi): max, then min
        return np.minimum(mu, k.g_max, out=mu)

    def _set_pulse_broadcast(self, g64: np.ndarray, n: np.ndarray, z: np.ndarray,
                             mean_scale: np.ndarray | float) -> np.ndarray:
        """set_pulse for operands of different shapes (broadcasting)."""
        s = self.set
        p = portable_math.exp(-np.asarray(n, dtype=np.float64) / s.alpha)
        mu = (s.m1 * g64 + s.c1 + s.a1 * p) * mean_scale
        sigma = np.maximum(s.m2 * g64 + s.c2 + s.a2 * p, 0.0)
        return np.clip(g64 + mu + sigma * z, self.g_min_us, self.g_max_us)

    @functools.cached_property
    def _set_p_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """a1·exp(-n/α) and a2·exp(-n/α) for n < _SET_TABLE_SIZE, each entry made by
        set_pulse's own operations."""
        k = self._set_constants
        p = np.negative(np.arange(_SET_TABLE_SIZE), dtype=np.float64)
        p /= k.alpha
        p = portable_math.exp(p)
        return k.a1 * p, k.a2 * p

    @functools.cached_property
    def _set_constants(self) -> SimpleNamespace:
        """The SET parameters and bounds as 0-d float64 arrays."""
        s = self.set
        return SimpleNamespace(**{name: np.array(float(v)) for name, v in (
            ("alpha", s.alpha), ("m1", s.m1), ("c1", s.c1), ("a1", s.a1), ("m2", s.m2),
            ("c2", s.c2), ("a2", s.a2), ("zero", 0.0), ("g_min", self.g_min_us),
            ("g_max", self.g_max_us))})

    def reset_level(self, z: np.ndarray) -> np.ndarray:
        """Conductance right after a RESET pulse."""
        return np.clip(self.reset.mean_us + self.reset.std_us * np.asarray(z, np.float64),
                       self.g_min_us, self.g_max_us)

    def nu(self, z: np.ndarray | None) -> np.ndarray | float:
        """Per-device drift exponent (a scalar when the model has no spread)."""
        d = self.drift
        if d.nu_std == 0.0 or z is None:
            return d.nu_mean
        return np.maximum(d.nu_mean + d.nu_std * z, 0.0)

    def drift_factor(self, dt_s: np.ndarray, nu: np.ndarray | float) -> np.ndarray:
        """((t - t_p)/t0)^-nu for t - t_p > t0, else 1."""
        t0 = self.drift.t0_s
        ratio = np.maximum(np.asarray(dt_s, dtype=np.float64) / t0, 1.0)
        if np.isscalar(nu) and nu == 0.0:
            return np.ones_like(ratio)
        return portable_math.pow_positive(ratio, -np.asarray(nu, dtype=np.float64))

    def add_read_noise(self, g: np.ndarray, z: np.ndarray) -> np.ndarray:
        r = self.read_noise
        return g + (r.rel * g + r.abs_us) * z

    @property
    def has_drift(self) -> bool:
        return self.drift.nu_mean != 0.0 or self.drift.nu_std != 0.0

    @property
    def has_read_noise(self) -> bool:
        return self.read_noise.rel != 0.0 or self.read_noise.abs_us != 0.0

    def mean_set_curve(self, n_max: int, g0: float | None = None) -> np.ndarray:
        """Expected conductance after 0..n_max SET pulses from RESET (mean-field, no noise).

        The host uses this as its blind-programming table: how many pulses to reach a target.
        """
        g = self.reset.mean_us if g0 is None else g0
        out = [g]
        for n in range(1, n_max + 1):
            g = float(self.set_pulse(np.array([g]), np.array([n]), np.zeros(1))[0])
            out.append(g)
        return np.asarray(out)
