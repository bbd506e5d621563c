"""The MLP's arithmetic, shared by the mixed-precision trainer and the fp32 baseline.

Sigmoid hidden layers, softmax output, cross-entropy loss. Each layer's weights are an
(n_in + 1, n_out) float32 matrix whose last row is the bias. Inputs are mostly zero (MNIST
is ~19 % ink), so the first layer works on the rows of the active inputs only: the same
numbers as the dense product, a fifth of the work.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from hil.mixed_precision import BlockUpdate

F32 = np.float32


def add_bias(x: np.ndarray) -> np.ndarray:
    """Append the constant bias input (1.0) to each example."""
    out = np.ones((x.shape[0], x.shape[1] + 1), dtype=F32)
    out[:, :-1] = x
    return out


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def softmax(a: np.ndarray) -> np.ndarray:
    # ufunc reductions called directly: the same sums as .max()/.sum(), without the wrappers.
    e = a - np.maximum.reduce(a, axis=1, keepdims=True)
    np.exp(e, out=e)
    e /= np.add.reduce(e, axis=1, keepdims=True)
    return e


#: Scaled update -lr·∂L/∂W for the rows `rows` of one layer (rows=None: all rows): the
#: mixed-precision core's BlockUpdate, which the trainer hands it as is.
Gradient = BlockUpdate


def active_rows(xb: np.ndarray) -> np.ndarray:
    """Indices of the inputs that are non-zero in any example of the batch."""
    # nonzero() of a bool array is cheaper than of the float row (same indices).
    return ((xb[0] != 0) if xb.shape[0] == 1 else xb.any(axis=0)).nonzero()[0]


class HostMatmul:
    """Weighted sums on the host from weight matrices (the conductance cache)."""

    def __init__(self, weights: Sequence[np.ndarray]) -> None:
        self.weights = weights

    def forward(self, layer: int, a_in: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """a_in @ W[rows] (all rows when rows is None)."""
        w = self.weights[layer]
        return a_in @ (w if rows is None else w.take(rows, axis=0))  # take: no copy checks

    def backward(self, layer: int, delta: np.ndarray) -> np.ndarray:
        """delta @ W[:-1].T: the error sent back through the layer (bias row excluded)."""
        return delta @ self.weights[layer][:-1].T


def train_step(weights: Sequence[np.ndarray], xb: np.ndarray, yb: np.ndarray,
               lr: float, matmul: HostMatmul | None = None
               ) -> Tuple[float, int, List[Gradient]]:
    """Forward and backward pass on a batch `xb` (with bias column).

    Returns the summed loss, the number of correct predictions and the per-layer updates
    (already scaled by -lr). The weights are not modified. `matmul` computes the weighted
    sums (default: on the host from `weights`; the trainer passes the chip's in chip mode).

    Batch 1 is the training loop's case and a step is a few dozen small numpy calls, so
    the code avoids calls that do no arithmetic (concatenations, fancy indexing of one
    element); every number is computed by the same operations as the textbook formulas.
    """
    mm = matmul or HostMatmul(weights)
    n = xb.shape[0]
    rows0 = active_rows(xb)
    acts = [xb.take(rows0, axis=1)]
    a = mm.forward(0, acts[0], rows0)
    for layer in range(1, len(weights)):
        h = np.empty((n, a.shape[1] + 1), F32)   # the activations and the bias input 1.0
        _sigmoid(a, out=h[:, :-1])
        h[:, -1] = 1.0
        acts.append(h)
        a = mm.forward(layer, h, None)
    p = softmax(a)
    scale = F32(-lr)
    if n == 1:
        y = int(yb[0])
        loss = -float(np.log(np.maximum(p[0, y:y + 1], 1e-30))[0])   # a sum of one term
        correct = int(int(p[0].argmax()) == y)
        delta = p
        delta[0, y] -= 1.0
    else:
        idx = np.arange(n)
        loss = float(-np.log(np.maximum(p[idx, yb], 1e-30)).sum())
        correct = int((p.argmax(axis=1) == yb).sum())
        delta = p
        delta[idx, yb] -= 1.0
    grads: List[Gradient] = []
    for layer in range(len(weights) - 1, -1, -1):
        a, d = acts[layer], delta * scale
        # One example: an outer product, which np.dot hands to BLAS (sgemm, inner dimension
        # 1) in half the time of broadcasting; matmul takes a slow non-BLAS path there. Each
        # entry is the one product a_i·d_j rounded once, as broadcasting gives, except that a
        # -0.0 product comes out +0.0. No sum the update enters can tell: χ and the weights
        # never hold -0.0 (they start at +0.0 or away from zero; x + y is -0.0 only when x
        # and y are), and x + 0.0 == x + (-0.0) for every other x.
        grads.append(Gradient(rows0 if layer == 0 else None,
                              np.dot(a.T, d) if n == 1 else a.T @ d))
        if layer:
            h = acts[layer][:, :-1]
            delta = mm.backward(layer, delta) * h * (1.0 - h)
    grads.reverse()
    return loss, correct, grads


def _sigmoid(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """sigmoid(a) written into `out`: the same operations as `sigmoid`, no temporaries."""
    t = np.negative(a)
    np.exp(t, out=t)
    t += 1.0
    return np.divide(1.0, t, out=out)


def predict(weights: Sequence[np.ndarray], x: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """Class predictions for inputs `x` (with bias column), in chunks to bound memory."""
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], chunk):
        a = x[s:s + chunk] @ weights[0]
        for w in weights[1:]:
            h = sigmoid(a)
            a = np.concatenate([h, np.ones((h.shape[0], 1), F32)], axis=1) @ w
        out[s:s + chunk] = a.argmax(axis=1)
    return out


def accuracy(weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(weights, x) == y).mean())


def init_weights(sizes: Sequence[int], init_range: Sequence[float],
                 rng: np.random.Generator) -> List[np.ndarray]:
    """Uniform ±a initial weights (biases included), the same for chip and baseline."""
    return [rng.uniform(-a, a, size=(n_in + 1, n_out)).astype(F32)
            for n_in, n_out, a in zip(sizes[:-1], sizes[1:], init_range)]


def apply_gradient(w: np.ndarray, g: Gradient) -> None:
    """w += update, in place, on the gradient's rows."""
    if g.rows is None:
        w += g.update
    else:
        w[g.rows] += g.update
