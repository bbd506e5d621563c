"""Classifier-FID and inception-style score on real digits, noise and degenerate samples."""
import numpy as np
import pytest

from hil.metrics.gan_quality import MnistGanScorer, inception_score


@pytest.fixture(scope="module")
def scorer(mnist):
    return MnistGanScorer(mnist.test_x)


@pytest.fixture(scope="module")
def validation_fid(scorer, mnist):
    """The 10,000 validation digits (last of the training set) against the test digits."""
    return scorer.score(mnist.train_x[-10_000:]).fid


def test_inception_score_bounds_on_synthetic_probabilities():
    assert inception_score(np.eye(10)[np.arange(1000) % 10]) == pytest.approx(10.0)
    assert inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)
    assert inception_score(np.eye(10)[np.zeros(40, int)]) == pytest.approx(1.0)
    two = np.eye(10)[np.arange(100) % 2]             # confident, two classes only
    assert inception_score(two) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="samples >= 1"):
        inception_score(np.zeros((0, 10)))


def test_real_test_digits_against_themselves_score_zero_and_near_ten(scorer, mnist):
    q = scorer.score(mnist.test_x)
    assert q.fid == pytest.approx(0.0, abs=1e-6 * np.trace(scorer.real.cov))
    assert q.samples == 10_000
    assert 9.0 < q.inception_score <= 10.0


def test_disjoint_real_digits_are_close_and_noise_is_far(scorer, validation_fid):
    rng = np.random.default_rng(0)
    noise = scorer.score(rng.random((2000, 784), dtype=np.float32)).fid
    blank = scorer.score(0.01 * rng.random((2000, 784), dtype=np.float32))
    assert 0 < validation_fid < 0.01 * noise
    assert validation_fid < 0.01 * blank.fid
    assert blank.inception_score == pytest.approx(1.0, abs=1e-3)


def test_one_image_repeated_scores_one(scorer, mnist):
    constant = np.repeat(mnist.test_x[:1], 500, axis=0)
    assert scorer.score(constant).inception_score == pytest.approx(1.0, abs=1e-6)


def test_one_class_of_real_digits_scores_low_and_far(scorer, mnist, validation_fid):
    q = scorer.score(mnist.test_x[mnist.test_y == 1])
    assert q.inception_score < 1.5
    assert q.fid > 100 * validation_fid


def test_nan_samples_are_refused(scorer):
    x = np.zeros((10, 784), np.float32)
    x[3, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        scorer.score(x)
