"""Fit the PCM model (PAPER.md §3) to a characterisation file.

The fit runs in four stages, each from the part of the measurement that isolates it:

1. Read noise (rel, abs_us): the spread of repeated reads of the same device, against its
   mean conductance, from the reads after the SET train (whole range) and after RESET (low
   G). sigma(G) = rel*G + abs_us by weighted least squares over conductance bins.
2. RESET level (mean, std): the spread of the devices' mean RESET reads minus the read-noise
   part. A chip's ADC reads nothing below 0 µS (a quarter of the reads at the RESET level are
   0), and the JAP RESET level is clipped at g_min: both censorings are undone by inverting
   the moments of a censored normal distribution.
3. SET (m1, c1, a1, m2, c2, a2, alpha): read noise and clipping at g_min bias any direct
   regression of dG on G, so the fit is simulation-based (indirect inference): summary
   statistics of the measured pulse trains (mean and spread of G per pulse number, and a
   regression of dG on the previous read with per-pulse intercepts, for mean and |residual|)
   are matched by the same statistics of simulated trains (PcmModel itself, with the fitted
   RESET and read noise, reads clipped like the ADC's, common random numbers) with
   Levenberg-Marquardt on numpy least squares. A grid search over alpha on the naive
   regression gives the starting point.
4. Drift (nu_mean, nu_std): per-device slopes of log G against log(t/t0), corrected for the
   bias of the log of a noisy read; their mean, and their spread minus estimation noise.

Standard errors are sandwich estimates from the spread of the statistics across device groups.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import yaml

from drivers.errors import ConfigError
from hil.characterize import CharacterizationData
from sim_backend.pcm_model import (DriftParams, PcmModel, ReadNoiseParams, ResetParams,
                                   SetParams)

SET_NAMES = ("m1", "c1", "a1", "m2", "c2", "a2", "alpha")


@dataclass(frozen=True)
class FitOptions:
    """Knobs of the fit. t0_s is the drift reference time (not identifiable from the data)."""

    t0_s: float = 38.6
    g_min_us: Optional[float] = None      # default: the chip's, from the file
    g_max_us: Optional[float] = None
    drift_min_g_us: float = 2.0           # devices used for drift: mean G after train above
    noise_bins: int = 30
    n_sim: Optional[int] = None           # simulated devices for the SET fit
    groups: int = 20                      # device groups for standard errors
    max_iter: int = 50
    seed: int = 12345
    name: str = "fitted"

    def __post_init__(self) -> None:
        if not self.t0_s > 0:
            raise ConfigError(f"must be > 0, got {self.t0_s}", key="t0_s")
        if self.groups < 2:
            raise ConfigError(f"must be >= 2, got {self.groups}", key="groups")
        if self.n_sim is not None and self.n_sim < 1000:
            raise ConfigError(f"must be >= 1000, got {self.n_sim}", key="n_sim")
        if self.g_min_us is not None and self.g_max_us is not None and \
                not 0 <= self.g_min_us < self.g_max_us:
            raise ConfigError(f"must be >= 0 and below g_max_us = {self.g_max_us:g} µS, got "
                              f"{self.g_min_us:g}", key="g_min_us")


@dataclass
class FitResult:
    """The fitted model plus what a reader needs to judge it."""

    model: PcmModel
    se: Dict[str, float]
    diagnostics: Dict[str, Any]
    curves: Dict[str, np.ndarray] = field(default_factory=dict)

    def table(self) -> List[Tuple[str, float, float]]:
        """(parameter, value, standard error) rows, NaN where no error is estimated."""
        m = self.model
        rows = [(f"set.{k}", getattr(m.set, k), self.se.get(k, math.nan)) for k in SET_NAMES]
        rows += [("reset.mean_us", m.reset.mean_us, self.se.get("reset_mean", math.nan)),
                 ("reset.std_us", m.reset.std_us, self.se.get("reset_std", math.nan)),
                 ("drift.nu_mean", m.drift.nu_mean, self.se.get("nu_mean", math.nan)),
                 ("drift.nu_std", m.drift.nu_std, self.se.get("nu_std", math.nan)),
                 ("drift.t0_s", m.drift.t0_s, math.nan),
                 ("read_noise.rel", m.read_noise.rel, self.se.get("rel", math.nan)),
                 ("read_noise.abs_us", m.read_noise.abs_us, self.se.get("abs", math.nan))]
        return rows


# --- 1+2. read noise and RESET level ----------------------------------------------------------
def _repeat_stats(reads: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-device mean and unbiased variance over repeated reads (rows)."""
    r = reads.astype(np.float64)
    return r.mean(axis=0), r.var(axis=0, ddof=1)


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _censored_moments(c: float) -> Tuple[float, float]:
    """(E[X]-a)/s and Var[X]/s^2 for X = max(Y, a), Y ~ N(mu, s^2), c = (a - mu)/s."""
    tail = 1.0 - _Phi(c)
    h1 = _phi(c) - c * tail
    h2 = (1.0 + c * c) * tail - c * _phi(c) - h1 * h1
    return h1, max(h2, 1e-300)


def uncensor(mean: float, var: float, floor: Optional[float]) -> Tuple[float, float]:
    """Mean and std of Y from the mean and variance of max(Y, floor) (moment inversion)."""
    if var <= 0:
        return mean, 0.0
    if floor is None:
        return mean, math.sqrt(var)
    target = (mean - floor) / math.sqrt(var)

    def ratio(c: float) -> float:
        h1, h2 = _censored_moments(c)
        return h1 / math.sqrt(h2)

    lo, hi = -8.0, 6.0
    if target >= ratio(lo):     # no censoring to speak of
        return mean, math.sqrt(var)
    if target <= ratio(hi):
        c = hi
    else:
        for _ in range(100):    # ratio decreases with c
            mid = 0.5 * (lo + hi)
            if ratio(mid) > target:
                lo = mid
            else:
                hi = mid
        c = 0.5 * (lo + hi)
    _, h2 = _censored_moments(c)
    s = math.sqrt(var / h2)
    return floor - c * s, s


def _reset_estimate(r: np.ndarray, g_min: float, floor: Optional[float]
                    ) -> Tuple[float, float, float, float]:
    """(mean_us, std_us, read-noise std at the RESET level, RESET-level mean) from (reads, dev).

    Reads below the ADC floor read as the floor, so the pooled reads are a censored normal:
    inverted for their location and total spread. The device-to-device part of the spread is
    the variance of the devices' mean reads minus their within-device part, scaled back
    through the censoring (a device's mean read moves by Phi((mu - floor)/sigma) per µS).
    """
    mu_r, sd_tot = uncensor(float(r.mean()), float(r.var()), floor)
    m, v = _repeat_stats(r)
    slope = _Phi((mu_r - floor) / sd_tot) if (floor is not None and sd_tot > 0) else 1.0
    var_g = max(float(m.var(ddof=1) - v.mean() / r.shape[0]), 0.0) / max(slope, 1e-6) ** 2
    sd_noise = math.sqrt(max(sd_tot ** 2 - var_g, 0.0))
    mean_us, std_us = uncensor(mu_r, var_g, g_min)
    return mean_us, std_us, sd_noise, mu_r


def fit_noise_and_reset(reset_g: np.ndarray, noise_g: np.ndarray, g_min: float,
                        floor: Optional[float], bins: int = 30, groups: int = 20
                        ) -> Tuple[ReadNoiseParams, ResetParams, Dict[str, float],
                                   Dict[str, np.ndarray]]:
    """Read noise sigma(G) = rel*G + abs and the RESET level, from the repeated reads.

    Points for the noise line: conductance bins of the reads after the SET train (bins where
    the ADC floor clips reads are left out), plus the RESET level, whose spread is recovered
    through the censoring.
    """
    mean_us, std_us, sd0, mu_r = _reset_estimate(reset_g, g_min, floor)
    m, v = _repeat_stats(noise_g)
    clipped = (noise_g <= floor).mean(axis=0) if floor is not None else np.zeros(m.size)
    edges = np.unique(np.quantile(m, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, max(edges.size - 2, 0))
    nb = max(edges.size - 1, 1)
    count = np.bincount(idx, minlength=nb).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        g_b = np.bincount(idx, weights=m, minlength=nb) / count
        s_b = np.sqrt(np.bincount(idx, weights=v, minlength=nb) / count)
        clip_b = np.bincount(idx, weights=clipped, minlength=nb) / count
    keep = (count >= 2) & (clip_b < 1e-3) & np.isfinite(s_b)
    reads = noise_g.shape[0]
    xs = np.append(g_b[keep], mu_r)
    ys = np.append(s_b[keep], sd0)
    n_eff = np.append(count[keep] * (reads - 1), reset_g.size / 2.0)
    w = np.sqrt(2.0 * n_eff) / np.maximum(ys, 1e-12)
    X = np.column_stack([xs, np.ones_like(xs)])
    coef, *_ = np.linalg.lstsq(X * w[:, None], ys * w, rcond=None)
    resid = (ys - X @ coef) * w
    dof = max(xs.size - 2, 1)
    cov = np.linalg.inv((X * w[:, None]).T @ (X * w[:, None])) * max(
        float(resid @ resid) / dof, 1.0)
    # RESET standard errors from device groups
    perm = np.random.default_rng(0).permutation(reset_g.shape[1])
    est = np.array([_reset_estimate(reset_g[:, gi], g_min, floor)[:2]
                    for gi in np.array_split(perm, groups)])
    se_reset = est.std(axis=0, ddof=1) / math.sqrt(groups)
    se = {"rel": float(np.sqrt(cov[0, 0])), "abs": float(np.sqrt(cov[1, 1])),
          "reset_mean": float(se_reset[0]), "reset_std": float(se_reset[1])}
    curves = {"noise_g_us": g_b[keep], "noise_sigma_us": s_b[keep],
              "noise_reset_point": np.array([mu_r, sd0])}
    return (ReadNoiseParams(rel=float(coef[0]), abs_us=float(coef[1])),
            ResetParams(mean_us=mean_us, std_us=std_us), se, curves)


# --- 3. SET: indirect inference ---------------------------------------------------------------
def set_statistics(g0: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Summary statistics of pulse trains: g0 (devices,) before pulse 1, g (pulses, devices).

    Mean and std of G per pulse number; the common slope and per-pulse intercepts of dG on
    the previous read; the same for |residual| (the spread's dependence on G and n).
    """
    prev = np.vstack([g0[None, :], g[:-1]])
    dg = g - prev
    xm = prev.mean(axis=1, keepdims=True)
    ym = dg.mean(axis=1, keepdims=True)
    xc = prev - xm
    yc = dg - ym
    sxx = float((xc * xc).sum())
    slope = float((xc * yc).sum()) / sxx
    icpt = (ym - slope * xm).ravel()
    r = np.abs(yc - slope * xc)
    rm = r.mean(axis=1, keepdims=True)
    slope_r = float((xc * (r - rm)).sum()) / sxx
    icpt_r = (rm - slope_r * xm).ravel()
    return np.concatenate([g.mean(axis=1), g.std(axis=1), [slope], icpt, [slope_r], icpt_r])


def _naive_set_start(g0: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Direct regression of dG on [G, 1, exp(-n/alpha)], best alpha on a grid: the start."""
    k = g.shape[0]
    prev = np.vstack([g0[None, :], g[:-1]])
    dg = (g - prev).ravel()
    x = prev.ravel()
    n = np.repeat(np.arange(1, k + 1, dtype=np.float64), g.shape[1])
    best = None
    for alpha in np.geomspace(0.3, 30.0, 41):
        X = np.column_stack([x, np.ones_like(x), np.exp(-n / alpha)])
        coef, res, *_ = np.linalg.lstsq(X, dg, rcond=None)
        sse = float(res[0]) if res.size else float(((X @ coef - dg) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, alpha, coef, X)
    _, alpha, coef, X = best
    r = np.abs(dg - X @ coef) * math.sqrt(math.pi / 2)
    coef_s, *_ = np.linalg.lstsq(X, r, rcond=None)
    return np.array([*coef, *coef_s, math.log(alpha)])


class _SetSimulator:
    """Simulated pulse trains with fixed (common) random numbers: smooth in the parameters."""

    def __init__(self, base: PcmModel, pulses: int, n_sim: int, reset_reads: int,
                 seed: int, floor: Optional[float], ceiling: Optional[float]) -> None:
        rng = np.random.default_rng(seed)
        self.base = base
        self.k = pulses
        self.lo = -np.inf if floor is None else floor
        self.hi = np.inf if ceiling is None else ceiling
        # The RESET state does not depend on the SET parameters: simulate its reads once.
        self.g_reset = base.reset_level(rng.standard_normal(n_sim))
        acc = np.zeros(n_sim)
        for _ in range(reset_reads):
            acc += self._read(base, self.g_reset, rng.standard_normal(n_sim))
        self.g0 = acc / reset_reads
        self.z_set = rng.standard_normal((pulses, n_sim))
        self.z_read = rng.standard_normal((pulses, n_sim))

    def _read(self, m: PcmModel, g: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.clip(m.add_read_noise(g, z), self.lo, self.hi)

    def model(self, theta: np.ndarray) -> PcmModel:
        m1, c1, a1, m2, c2, a2, log_alpha = (float(t) for t in theta)
        sp = SetParams(alpha=math.exp(log_alpha), m1=m1, c1=c1, a1=a1, m2=m2, c2=c2, a2=a2)
        b = self.base
        return PcmModel(name=b.name, g_min_us=b.g_min_us, g_max_us=b.g_max_us, set=sp,
                        reset=b.reset, drift=b.drift, read_noise=b.read_noise)

    def trains(self, theta: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        m = self.model(theta)
        g = self.g_reset
        out = np.empty((self.k, g.size))
        for j in range(self.k):
            g = m.set_pulse(g, np.full(g.size, j + 1), self.z_set[j])
            out[j] = self._read(m, g, self.z_read[j])
        return self.g0, out

    def stats(self, theta: np.ndarray) -> np.ndarray:
        return set_statistics(*self.trains(theta))


def fit_set(g0: np.ndarray, g: np.ndarray, base: PcmModel, reset_reads: int,
            opts: FitOptions, floor: Optional[float] = None,
            ceiling: Optional[float] = None
            ) -> Tuple[SetParams, Dict[str, float], Dict[str, Any], _SetSimulator, np.ndarray]:
    """SET parameters by matching simulated to measured pulse-train statistics."""
    n = g0.size
    s_obs = set_statistics(g0, g)
    perm = np.random.default_rng(opts.seed + 1).permutation(n)
    groups = np.array_split(perm, opts.groups)
    s_groups = np.array([set_statistics(g0[i], g[:, i]) for i in groups])
    n_sim = opts.n_sim or int(min(max(2 * n, 20_000), 100_000))
    inflate = 1.0 + n / n_sim          # simulation noise adds to sampling noise
    se_stat = s_groups.std(axis=0, ddof=1) / math.sqrt(opts.groups) * math.sqrt(inflate)
    w = 1.0 / np.maximum(se_stat, 1e-12 * (np.abs(s_obs) + 1e-12))
    sim = _SetSimulator(base, g.shape[0], n_sim, reset_reads, opts.seed, floor, ceiling)

    def resid(theta: np.ndarray) -> np.ndarray:
        return (sim.stats(theta) - s_obs) * w

    theta = _naive_set_start(g0, g)
    start = theta.copy()
    h = np.array([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-2])
    lam = 1e-2
    r = resid(theta)
    cost = float(r @ r)
    jac = np.zeros((r.size, theta.size))
    it = 0
    converged = False
    for it in range(1, opts.max_iter + 1):
        for p in range(theta.size):
            tp = theta.copy()
            tp[p] += h[p]
            jac[:, p] = (resid(tp) - r) / h[p]
        a = jac.T @ jac
        grad = jac.T @ r
        step = np.zeros_like(theta)
        improved = False
        while lam < 1e10:
            step = -np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), grad)
            r_new = resid(theta + step)
            c_new = float(r_new @ r_new)
            if np.isfinite(c_new) and c_new < cost:
                theta, r, improved = theta + step, r_new, True
                rel_gain = (cost - c_new) / max(cost, 1e-300)
                cost = c_new
                lam = max(lam / 3.0, 1e-7)
                break
            lam *= 4.0
        if not improved or (np.all(np.abs(step) < 1e-6) or rel_gain < 1e-9):
            converged = True
            break
    # sandwich standard errors: statistic covariance from the device groups
    try:
        a_inv = np.linalg.inv(jac.T @ jac)
        d = (s_groups - s_groups.mean(axis=0)) * w
        sigma_w = d.T @ d / (opts.groups - 1) / opts.groups * inflate
        cov = a_inv @ jac.T @ sigma_w @ jac @ a_inv
        se_theta = np.sqrt(np.maximum(np.diag(cov), 0.0))
    except np.linalg.LinAlgError:
        se_theta = np.full(theta.size, np.nan)
    alpha = math.exp(theta[6])
    se = dict(zip(SET_NAMES[:6], (float(x) for x in se_theta[:6])))
    se["alpha"] = float(alpha * se_theta[6])
    sp = sim.model(theta).set
    diag = {"set_cost": cost, "set_statistics": int(s_obs.size), "set_iterations": it,
            "set_converged": converged, "n_sim": n_sim,
            "set_start": dict(zip(SET_NAMES, [*map(float, start[:6]), math.exp(start[6])]))}
    return sp, se, diag, sim, theta


# --- 4. drift ---------------------------------------------------------------------------------
def fit_drift(data: CharacterizationData, t0_s: float, min_g_us: float,
              noise: ReadNoiseParams, groups: int = 20
              ) -> Tuple[Optional[DriftParams], Dict[str, float], Dict[str, Any]]:
    """nu per device from the slope of log G against log(t/t0); mean and spread over devices.

    Only reads at t - t_prog >= t0 are used (the model has no drift before t0), and only
    devices above `min_g_us`, where read noise is small against G. The log of a noisy read is
    biased by -(sigma/G)^2/2, which grows as G drifts down; each log read is corrected with
    the fitted read noise. The spread of the device slopes includes their estimation noise
    (from each device's residuals), which is subtracted.
    """
    if data.drift_g.shape[0] == 0 or not np.isfinite(data.drift_t_prog_s):
        return None, {}, {"drift": "no drift reads in the file"}
    dt = data.drift_t_s - data.drift_t_prog_s
    use = np.isfinite(dt) & (dt >= t0_s * (1 - 1e-6))
    if use.sum() < 3:
        return None, {}, {"drift": f"fewer than 3 drift reads at t - t_prog >= t0 = {t0_s} s"}
    x = np.log(np.maximum(dt[use], t0_s) / t0_s)
    g_ref = data.noise_g.astype(np.float64).mean(axis=0)
    y_all = data.drift_g[use].astype(np.float64)
    sel = (g_ref > min_g_us) & np.all(np.isfinite(y_all), axis=0) & np.all(y_all > 0, axis=0)
    if sel.sum() < 10:
        return None, {}, {"drift": f"fewer than 10 devices above {min_g_us} uS"}
    y = y_all[:, sel]
    ly = np.log(y) + 0.5 * (noise.rel + noise.abs_us / y) ** 2
    xc = x - x.mean()
    sxx = float(xc @ xc)
    lyc = ly - ly.mean(axis=0)
    nu_dev = -(xc @ lyc) / sxx
    res = lyc + np.outer(xc, nu_dev)
    dof = max(x.size - 2, 1)
    est_var = (res * res).sum(axis=0) / dof / sxx

    def estimate(idx: np.ndarray) -> Tuple[float, float]:
        nv = float(nu_dev[idx].var(ddof=1) - est_var[idx].mean())
        return float(nu_dev[idx].mean()), math.sqrt(max(nv, 0.0))

    nu_mean, nu_std = estimate(np.arange(nu_dev.size))
    perm = np.random.default_rng(2).permutation(nu_dev.size)
    est = np.array([estimate(gi) for gi in np.array_split(perm, groups)])
    se_a = est.std(axis=0, ddof=1) / math.sqrt(groups)
    curves = {"drift_t_s": dt[use], "drift_mean_g_us": y.mean(axis=1), "drift_nu_device": nu_dev}
    diag = {"drift_devices": int(sel.sum()), "drift_reads_used": int(use.sum())}
    return (DriftParams(nu_mean=nu_mean, nu_std=nu_std, t0_s=t0_s),
            {"nu_mean": float(se_a[0]), "nu_std": float(se_a[1])}, {**diag, **curves})


# --- the whole fit ----------------------------------------------------------------------------
def read_range(data: CharacterizationData, *reads: np.ndarray
               ) -> Tuple[Optional[float], Optional[float]]:
    """The range an ADC read can take: (floor, ceiling), None where unbounded.

    A chip's ADC cannot read below zero: when no read in the file is negative, reads are taken
    as censored at 0. The ceiling is the ADC full scale the file records, if any.
    """
    lowest = min(float(np.nanmin(r)) for r in reads)
    floor = 0.0 if lowest >= 0.0 else None
    fs = data.adc_full_scale_us
    return floor, (fs if fs and np.isfinite(fs) else None)


def fit_model(data: CharacterizationData, opts: FitOptions | None = None) -> FitResult:
    """Fit every part of the PCM model to one characterisation."""
    opts = opts or FitOptions()
    g_min = data.g_min_us if opts.g_min_us is None else opts.g_min_us
    g_max = data.g_max_us if opts.g_max_us is None else opts.g_max_us
    if not np.isfinite(g_max):
        raise ConfigError("the file does not give the chip's g_max_us; pass it explicitly",
                          key="g_max_us", source=data.path)
    if not (np.isfinite(g_min) and 0 <= g_min < g_max):
        given = "g_min_us" if opts.g_min_us is not None else "g_max_us"
        raise ConfigError(f"g_min_us {g_min:g} µS must be >= 0 and below g_max_us {g_max:g} "
                          "µS", key=given)
    # devices with any unusable read are left out of every stage
    ok = np.ones(data.devices.size, dtype=bool)
    for arr in (data.reset_g, data.set_g, data.noise_g):
        ok &= np.all(np.isfinite(arr), axis=0)
    if ok.sum() < 100:
        raise ConfigError(f"only {int(ok.sum())} devices have complete reads; need >= 100",
                          source=data.path)
    reset_g, set_g, noise_g = data.reset_g[:, ok], data.set_g[:, ok], data.noise_g[:, ok]

    floor, ceiling = read_range(data, reset_g, set_g, noise_g)
    noise, reset, se_nr, noise_curves = fit_noise_and_reset(reset_g, noise_g, g_min, floor,
                                                            opts.noise_bins, opts.groups)
    base = PcmModel(name=opts.name, g_min_us=g_min, g_max_us=g_max, reset=reset,
                    read_noise=noise)
    g0 = reset_g.astype(np.float64).mean(axis=0)
    g = set_g.astype(np.float64)
    sp, se_set, diag_set, sim, theta = fit_set(g0, g, base, reset_g.shape[0], opts, floor,
                                               ceiling)
    drift, se_drift, drift_info = fit_drift(data, opts.t0_s, opts.drift_min_g_us, noise,
                                             opts.groups)
    if drift is None:
        drift = DriftParams(nu_mean=0.0, nu_std=0.0, t0_s=opts.t0_s)
    desc = (f"fitted by pcm-hil fit-model from {os.path.basename(data.path)} "
            f"({int(ok.sum())} devices, {g.shape[0]} SET pulses)")
    model = PcmModel(name=opts.name, description=desc, g_min_us=g_min, g_max_us=g_max,
                     set=sp, reset=reset, drift=drift, read_noise=noise)
    sim_g0, sim_g = sim.trains(theta)
    curves = {
        "pulse": np.arange(1, g.shape[0] + 1),
        "meas_mean": g.mean(axis=1), "meas_std": g.std(axis=1),
        "fit_mean": sim_g.mean(axis=1), "fit_std": sim_g.std(axis=1),
        "meas_g": g, "fit_g": sim_g, **noise_curves,
    }
    diagnostics: Dict[str, Any] = {"devices": int(ok.sum()),
                                   "devices_excluded": int((~ok).sum()), **diag_set}
    for k, v in drift_info.items():
        if isinstance(v, np.ndarray):
            curves[k] = v
        else:
            diagnostics[k] = v
    diagnostics["read_floor_us"] = floor
    diagnostics["read_ceiling_us"] = ceiling
    return FitResult(model=model, se={**se_nr, **se_set, **se_drift},
                     diagnostics=diagnostics, curves=curves)


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


def write_model_yaml(result: FitResult, path: str | os.PathLike, source: str = "") -> None:
    """Write the fitted model as a YAML file PcmModel.from_yaml (and sim:// ?model=) loads."""
    m = result.model
    lines = ["# PCM device model fitted by `pcm-hil fit-model`.",
             f"# Source: {source or 'characterisation file'}; written "
             f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}.",
             "# Standard errors (device-group sandwich estimates):"]
    for name, value, se in result.table():
        lines.append(f"#   {name:<18} {value:>10.5g}" + (f"  +- {se:.2g}" if np.isfinite(se)
                                                          else ""))
    lines.append("# variability is not fitted (zeros); t0_s is the chosen drift reference.")
    body = yaml.safe_dump(_round(m.to_dict()), sort_keys=False, default_flow_style=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n" + body)


def plot_fit(data: CharacterizationData, result: FitResult, path: str | os.PathLike) -> None:
    """Measured vs fitted: SET mean/spread per pulse, G histograms, read noise, drift."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    c = result.curves
    m = result.model
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    n = c["pulse"]
    ax.errorbar(n, c["meas_mean"], yerr=c["meas_std"], fmt="o", ms=4, capsize=2,
                label="measured mean ± std")
    ax.plot(n, c["fit_mean"], "-", label="fitted model mean")
    ax.fill_between(n, c["fit_mean"] - c["fit_std"], c["fit_mean"] + c["fit_std"], alpha=0.2,
                    label="fitted model ± std")
    ax.set_xlabel("SET pulse number after RESET")
    ax.set_ylabel("read conductance (µS)")
    ax.set_title("SET pulse train")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    k = c["meas_g"].shape[0]
    bins = np.linspace(min(c["meas_g"].min(), 0.0), c["meas_g"].max(), 60)
    for j in sorted({0, min(4, k - 1), k - 1}):
        ax.hist(c["meas_g"][j], bins=bins, density=True, histtype="stepfilled", alpha=0.3,
                label=f"measured, pulse {j + 1}")
        ax.hist(c["fit_g"][j], bins=bins, density=True, histtype="step", lw=1.5,
                label=f"fitted, pulse {j + 1}")
    ax.set_xlabel("read conductance (µS)")
    ax.set_ylabel("density")
    ax.set_title("conductance distributions")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    gb = c["noise_g_us"]
    ax.plot(gb, c["noise_sigma_us"], "o", ms=4, label="measured (bins, after SET train)")
    if "noise_reset_point" in c:
        ax.plot(*c["noise_reset_point"], "s", ms=6, label="RESET level (ADC floor removed)")
    gg = np.linspace(0, max(gb.max(), 1e-3), 50)
    ax.plot(gg, m.read_noise.rel * gg + m.read_noise.abs_us, "-",
            label=f"fit: {m.read_noise.rel:.3g}·G + {m.read_noise.abs_us:.3g}")
    ax.set_xlabel("mean conductance (µS)")
    ax.set_ylabel("read-noise std (µS)")
    ax.set_title("read noise")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    if "drift_t_s" in c:
        t = c["drift_t_s"]
        gm = c["drift_mean_g_us"]
        ax.loglog(t, gm, "o", ms=4, label="measured device mean")
        t0 = m.drift.t0_s
        ref = float(np.exp(np.mean(np.log(gm) + m.drift.nu_mean * np.log(t / t0))))
        tt = np.geomspace(t.min(), t.max(), 50)
        ax.loglog(tt, ref * (tt / t0) ** (-m.drift.nu_mean), "-",
                  label=f"fit: ν = {m.drift.nu_mean:.3g} (std {m.drift.nu_std:.2g})")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("time since last SET pulse (s)")
        ax.set_ylabel("mean read conductance (µS)")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no drift reads", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("drift")
    fig.suptitle(f"PCM model fit: {os.path.basename(data.path)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
