"""The Fréchet distance between two Gaussians, for FID-style comparisons of feature sets.

d² = |μa − μb|² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½). The matrix square roots are taken by
eigendecomposition of symmetric matrices (numpy.linalg.eigh), never of the non-symmetric
product Σa Σb, so the result is real, and eigenvalues that rounding pushes a little below zero
are set to zero. Everything is computed in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianFit:
    """Mean and covariance (unbiased) of a set of feature vectors."""

    mean: np.ndarray
    cov: np.ndarray
    samples: int


def fit_gaussian(features: np.ndarray) -> GaussianFit:
    """The Gaussian fit of `features`, shape (samples, dims); needs two samples or more."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (samples >= 2, dims), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return GaussianFit(x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(
        x.shape[1], x.shape[1]), x.shape[0])


def _psd_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"need a square matrix, got shape {a.shape}")
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    scale = max(float(np.abs(w).max(initial=0.0)), 1e-300)
    tol = max(a.shape[0], 1) * np.finfo(np.float64).eps * scale
    if w.min(initial=0.0) < -1e3 * tol:
        raise ValueError(f"matrix is not positive semi-definite (eigenvalue {w.min():.3g})")
    return np.clip(w, 0.0, None), v


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric PSD matrix."""
    w, v = _psd_eigh(a)
    return (v * np.sqrt(w)) @ v.T


def trace_sqrtm_psd(a: np.ndarray) -> float:
    """tr(a^½) for a symmetric PSD matrix: the sum of the roots of its eigenvalues."""
    w, _ = _psd_eigh(a)
    return float(np.sqrt(w).sum())


def frechet_distance(a: GaussianFit, b: GaussianFit) -> float:
    """Squared Fréchet (2-Wasserstein) distance between the two fits; ≥ 0."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature sizes differ: {a.mean.shape[0]} and {b.mean.shape[0]}")
    root_a = sqrtm_psd(a.cov)
    cross = trace_sqrtm_psd(root_a @ b.cov @ root_a)
    diff = a.mean - b.mean
    d2 = float(diff @ diff) + float(np.trace(a.cov)) + float(np.trace(b.cov)) - 2.0 * cross
    return max(d2, 0.0)
