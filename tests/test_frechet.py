"""The Fréchet distance between Gaussian fits, against closed forms."""
import numpy as np
import pytest

from hil.metrics.frechet import (GaussianFit, fit_gaussian, frechet_distance, sqrtm_psd,
                                 trace_sqrtm_psd)


def _random_psd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T


def _fit(mean, cov):
    return GaussianFit(np.asarray(mean, float), np.asarray(cov, float), 100)


def test_sqrtm_psd_matches_the_2x2_closed_form():
    # For a 2x2 PSD M: sqrt(M) = (M + s I) / t, s = sqrt(det M), t = sqrt(tr M + 2 s).
    m = np.array([[4.0, 1.5], [1.5, 2.0]])
    s = np.sqrt(np.linalg.det(m))
    expected = (m + s * np.eye(2)) / np.sqrt(np.trace(m) + 2 * s)
    np.testing.assert_allclose(sqrtm_psd(m), expected, rtol=1e-12)
    assert trace_sqrtm_psd(m) == pytest.approx(np.trace(expected), rel=1e-12)


def test_sqrtm_psd_squares_back_and_is_symmetric(rng):
    for rank in (12, 5):                    # full rank and singular
        m = _random_psd(rng, 12, rank)
        r = sqrtm_psd(m)
        np.testing.assert_allclose(r, r.T, atol=1e-12)
        np.testing.assert_allclose(r @ r, m, atol=1e-9 * np.abs(m).max())
        assert np.linalg.eigvalsh(r).min() > -1e-7


def test_sqrtm_psd_refuses_an_indefinite_matrix():
    with pytest.raises(ValueError, match="not positive semi-definite"):
        sqrtm_psd(np.array([[1.0, 0.0], [0.0, -0.5]]))
    with pytest.raises(ValueError, match="square"):
        sqrtm_psd(np.ones((2, 3)))


def test_distance_of_diagonal_covariances_is_the_closed_form():
    # Commuting covariances: d² = |Δμ|² + Σ (√a_i − √b_i)².
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    d2 = frechet_distance(_fit([0, 1, 2], np.diag(a)), _fit([1, 1, 0], np.diag(b)))
    assert d2 == pytest.approx(1 + 4 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-12)


def test_distance_of_non_commuting_2x2_covariances_is_the_closed_form():
    # tr (A^½ B A^½)^½ = sqrt(tr AB + 2 sqrt(det A det B)) for 2x2 PSD A, B.
    a = np.array([[2.0, 0.9], [0.9, 1.0]])
    b = np.array([[1.0, -0.4], [-0.4, 3.0]])
    assert not np.allclose(a @ b, b @ a)
    cross = np.sqrt(np.trace(a @ b) + 2 * np.sqrt(np.linalg.det(a) * np.linalg.det(b)))
    expected = 0.5 ** 2 + np.trace(a) + np.trace(b) - 2 * cross
    assert frechet_distance(_fit([0.5, 0], a), _fit([0, 0], b)) == pytest.approx(expected,
                                                                                 rel=1e-12)


def test_distance_is_zero_to_itself_symmetric_and_finite_for_singular_fits(rng):
    x = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 10))    # rank 3 of 10
    y = rng.standard_normal((400, 10))
    fx, fy = fit_gaussian(x), fit_gaussian(y)
    assert frechet_distance(fx, fx) == pytest.approx(0.0, abs=1e-9 * np.trace(fx.cov))
    # singular fits: eigenvalues at rounding level get roots of ~1e-8, hence the tolerance
    assert frechet_distance(fx, fy) == pytest.approx(frechet_distance(fy, fx), rel=1e-6)
    assert np.isfinite(frechet_distance(fx, fy)) and frechet_distance(fx, fy) > 1


def test_fit_gaussian_is_mean_and_unbiased_covariance(rng):
    x = rng.standard_normal((50, 4))
    f = fit_gaussian(x)
    np.testing.assert_allclose(f.mean, x.mean(axis=0))
    np.testing.assert_allclose(f.cov, (x - x.mean(0)).T @ (x - x.mean(0)) / 49)
    assert f.samples == 50


def test_fit_gaussian_refuses_bad_features():
    with pytest.raises(ValueError, match="samples >= 2"):
        fit_gaussian(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(_fit([0, 0], np.eye(2)), _fit([0, 0, 0], np.eye(3)))
