"""The MNIST classifier pcm-hil ships for scoring generated digits, run in numpy.

A small LeNet-like CNN (ARCHITECTURE), trained once by `scripts/train_fid_classifier` (torch,
fixed seed) and shipped as data/mnist_classifier.npz (float32 weights, ~50 k parameters). Its
64 penultimate activations are the features of the classifier-FID; its softmax gives the
inception-style score. The forward pass here is plain numpy, so scoring a GAN needs no torch,
and it is the same function the torch module computes (tests check the two agree).

Input: images as the MNIST loader gives them, float in [0, 1), shape (n, 784) or (n, 28, 28).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Dict, Mapping, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from drivers.errors import ConfigError

ARCHITECTURE = ("conv 5x5 1->16, ReLU, max-pool 2; conv 5x5 16->32, ReLU, max-pool 2; "
                "linear 512->64, ReLU (features); linear 64->10 (logits)")
FEATURES = 64
CLASSES = 10
SHAPES: Dict[str, Tuple[int, ...]] = {
    "conv1.weight": (16, 1, 5, 5), "conv1.bias": (16,),
    "conv2.weight": (32, 16, 5, 5), "conv2.bias": (32,),
    "fc1.weight": (FEATURES, 512), "fc1.bias": (FEATURES,),
    "fc2.weight": (CLASSES, FEATURES), "fc2.bias": (CLASSES,),
}
WEIGHTS_FILE = "mnist_classifier.npz"
_CHUNK = 500   # images per block: bounds the im2col buffers at ~50 MB


@dataclass(frozen=True)
class ClassifierOutput:
    """Penultimate features and logits of a batch of images."""

    features: np.ndarray
    logits: np.ndarray

    def probabilities(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def _conv_relu_pool(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Valid 2-D convolution (cross-correlation, as torch), ReLU, 2x2 max-pool; NHWC."""
    k = w.shape[-1]
    win = sliding_window_view(x, (k, k), axis=(1, 2))          # (n, h', w', c, k, k)
    n, ho, wo = win.shape[:3]
    cols = win.reshape(n * ho * wo, -1)
    y = (cols @ w.reshape(w.shape[0], -1).T + b).reshape(n, ho, wo, w.shape[0])
    np.maximum(y, 0.0, out=y)
    return y.reshape(n, ho // 2, 2, wo // 2, 2, w.shape[0]).max(axis=(2, 4))


class MnistClassifier:
    """The shipped classifier's forward pass (float32 numpy)."""

    def __init__(self, weights: Mapping[str, np.ndarray], meta: Mapping | None = None) -> None:
        missing = sorted(set(SHAPES) - set(weights))
        if missing:
            raise ConfigError(f"classifier weights lack {', '.join(missing)}")
        self.weights = {}
        for name, shape in SHAPES.items():
            a = np.asarray(weights[name], dtype=np.float32)
            if a.shape != shape:
                raise ConfigError(f"classifier weight {name} has shape {a.shape}, "
                                  f"expected {shape}")
            self.weights[name] = a
        self.meta = dict(meta or {})

    @classmethod
    def from_npz(cls, path) -> "MnistClassifier":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else {}
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read classifier weights: {e}", source=str(path)) from None
        return cls(arrays, meta)

    def save_npz(self, path) -> None:
        np.savez_compressed(path, meta=np.array(json.dumps(self.meta, sort_keys=True)),
                            **self.weights)

    def __call__(self, images: np.ndarray) -> ClassifierOutput:
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 2 and x.shape[1] == 784:
            x = x.reshape(-1, 28, 28)
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"images must be (n, 784) or (n, 28, 28), got {x.shape}")
        feats, logits = [], []
        w = self.weights
        for start in range(0, x.shape[0], _CHUNK):
            h = x[start:start + _CHUNK, :, :, None]
            h = _conv_relu_pool(h, w["conv1.weight"], w["conv1.bias"])
            h = _conv_relu_pool(h, w["conv2.weight"], w["conv2.bias"])
            h = h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)   # torch's (C, H, W) order
            f = np.maximum(h @ w["fc1.weight"].T + w["fc1.bias"], 0.0)
            feats.append(f)
            logits.append(f @ w["fc2.weight"].T + w["fc2.bias"])
        if not feats:
            return ClassifierOutput(np.zeros((0, FEATURES), np.float32),
                                    np.zeros((0, CLASSES), np.float32))
        return ClassifierOutput(np.concatenate(feats), np.concatenate(logits))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self(images).logits.argmax(axis=1)


@lru_cache(maxsize=1)
def shipped_classifier() -> MnistClassifier:
    """The classifier in the package data (trained by scripts/train_fid_classifier)."""
    ref = resources.files("hil.metrics") / "data" / WEIGHTS_FILE
    with resources.as_file(ref) as path:
        return MnistClassifier.from_npz(path)
