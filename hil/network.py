"""The MLP's arithmetic, shared by the mixed-precision trainer and the fp32 baseline.

Sigmoid hidden layers, softmax output, cross-entropy loss. Each layer's weights are an
(n_in + 1, n_out) float32 matrix whose last row is the bias. Inputs are mostly zero (MNIST
is ~19 % ink), so the first layer works on the rows of the active inputs only: a fifth of
the work of the dense product.

The arithmetic is drivers.portable_math's, so a step gives the same bits on every CPU, BLAS
kernel and numpy version: weighted sums are float32 products added in a fixed pairwise order
(not BLAS, whose order depends on the kernel), activations and probabilities are computed in
float64 from portable exp and rounded once to float32, the loss is a portable log.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

from drivers import portable_math
from hil.mixed_precision import BlockUpdate

F32 = np.float32
F64 = np.float64
#: Probabilities below this count as this in the loss (log 0 is -inf).
_P_MIN = 1e-30


def add_bias(x: np.ndarray) -> np.ndarray:
    """Append the constant bias input (1.0) to each example."""
    out = np.ones((x.shape[0], x.shape[1] + 1), dtype=F32)
    out[:, :-1] = x
    return out


def sigmoid(a: np.ndarray) -> np.ndarray:
    """The logistic function of float32 `a`, float32 (in float64, rounded once)."""
    return portable_math.expit(a)


def softmax(a: np.ndarray) -> np.ndarray:
    """Softmax of each row of float32 `a`, float32 (portable_math.softmax)."""
    return portable_math.softmax(a)


#: Scaled update -lr·∂L/∂W for the rows `rows` of one layer (rows=None: all rows): the
#: mixed-precision core's BlockUpdate, which the trainer hands it as is.
Gradient = BlockUpdate


def active_rows(xb: np.ndarray) -> np.ndarray:
    """Indices of the inputs that are non-zero in any example of the batch."""
    # nonzero() of a bool array is cheaper than of the float row (same indices).
    return ((xb[0] != 0) if xb.shape[0] == 1 else xb.any(axis=0)).nonzero()[0]


class HostMatmul:
    """Weighted sums on the host from weight matrices (the conductance cache), in
    portable_math's order. Keep one per run: it holds the scratch of its sums (a few hundred
    kB), which a step of one example reuses."""

    def __init__(self, weights: Sequence[np.ndarray]) -> None:
        self.weights = weights
        self._forward = [portable_math.RowProduct(w.shape[1], w.dtype, w.shape[0])
                         for w in weights]
        self._backward = [portable_math.RowProduct(w.shape[0] - 1, w.dtype, w.shape[1])
                          for w in weights]

    def forward(self, layer: int, a_in: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """a_in @ W[rows] (all rows when rows is None)."""
        w = self.weights[layer]
        b = w if rows is None else w.take(rows, axis=0)   # take: no copy checks
        if a_in.shape[0] == 1 and a_in.dtype == w.dtype:
            return self._forward[layer](a_in, b)
        return portable_math.matmul(a_in, b)

    def backward(self, layer: int, delta: np.ndarray) -> np.ndarray:
        """delta @ W[:-1].T: the error sent back through the layer (bias row excluded)."""
        wt = self.weights[layer][:-1].T
        if delta.shape[0] == 1 and delta.dtype == wt.dtype:
            return self._backward[layer](delta, wt)
        return portable_math.matmul(delta, wt)


def forward(weights: Sequence[np.ndarray], xb: np.ndarray, matmul: HostMatmul | None = None
            ) -> Tuple[np.ndarray, List[np.ndarray], np.ndarray]:
    """The forward pass of a batch `xb` (with bias column): (active input rows, each layer's
    input activations, the output layer's weighted sums before the softmax)."""
    mm = matmul or HostMatmul(weights)
    n = xb.shape[0]
    rows0 = active_rows(xb)
    acts = [xb.take(rows0, axis=1)]
    a = mm.forward(0, acts[0], rows0)
    for layer in range(1, len(weights)):
        h = np.empty((n, a.shape[1] + 1), F32)   # the activations and the bias input 1.0
        portable_math.expit(a, out=h[:, :-1])
        h[:, -1] = 1.0
        acts.append(h)
        a = mm.forward(layer, h, None)
    return rows0, acts, a


def train_step(weights: Sequence[np.ndarray], xb: np.ndarray, yb: np.ndarray,
               lr: float, matmul: HostMatmul | None = None
               ) -> Tuple[float, int, List[Gradient]]:
    """Forward and backward pass on a batch `xb` (with bias column).

    Returns the summed loss, the number of correct predictions and the per-layer updates
    (already scaled by -lr). The weights are not modified. `matmul` computes the weighted
    sums (default: on the host from `weights`; the trainer passes the chip's in chip mode).

    Batch 1 is the training loop's case and a step is a few dozen small numpy calls, so
    the code avoids calls that do no arithmetic (concatenations, fancy indexing of one
    element). Every number comes from drivers.portable_math's rules: the same bits on
    every machine.
    """
    mm = matmul or HostMatmul(weights)
    n = xb.shape[0]
    rows0, acts, a = forward(weights, xb, mm)
    p = softmax(a)
    scale = F32(-lr)
    if n == 1:
        y = int(yb[0])
        loss = -portable_math.log_scalar(max(float(p[0, y]), _P_MIN))   # a sum of one term
        correct = int(int(p[0].argmax()) == y)
        delta = p
        delta[0, y] -= 1.0
    else:
        idx = np.arange(n)
        logs = portable_math.log(np.maximum(p[idx, yb].astype(F64), _P_MIN))
        loss = -math.fsum(logs.tolist())   # correctly rounded: no order to choose
        correct = int((p.argmax(axis=1) == yb).sum())
        delta = p
        delta[idx, yb] -= 1.0
    grads: List[Gradient] = []
    for layer in range(len(weights) - 1, -1, -1):
        a, d = acts[layer], delta * scale
        # One example: an outer product (BLAS, exact: see portable_math.outer; its zeros'
        # signs do not matter, as χ and the weights never hold -0.0 and x + 0.0 == x + -0.0
        # for every other x). A batch: a sum over its examples, in portable_math's order.
        grads.append(Gradient(rows0 if layer == 0 else None,
                              portable_math.outer(a[0], d[0]) if n == 1
                              else portable_math.matmul(a.T, d)))
        if layer:
            h = acts[layer][:, :-1]
            delta = mm.backward(layer, delta) * h * (1.0 - h)
    grads.reverse()
    return loss, correct, grads


def predict(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class predictions for inputs `x` (with bias column), one example at a time: each is
    the forward pass a training step of that example alone computes, bit for bit (a batch's
    sums would run over the union of its examples' active inputs, in another order)."""
    mm = HostMatmul(weights)
    out = np.empty(x.shape[0], dtype=np.int64)
    for i in range(x.shape[0]):
        out[i] = forward(weights, x[i:i + 1], mm)[2][0].argmax()
    return out


def accuracy(weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(weights, x) == y).mean())


def init_weights(sizes: Sequence[int], init_range: Sequence[float],
                 rng: np.random.Generator) -> List[np.ndarray]:
    """Uniform ±a initial weights (biases included), the same for chip and baseline."""
    return [_uniform(rng, -a, a, (n_in + 1, n_out)).astype(F32)
            for n_in, n_out, a in zip(sizes[:-1], sizes[1:], init_range)]


def _uniform(rng: np.random.Generator, low: float, high: float, shape: tuple) -> np.ndarray:
    """rng.uniform(low, high, shape)'s numbers, low + (high - low)·u, computed here as one
    multiplication and one addition: numpy's C code may fuse them into one multiply-add where
    the compiler targets FMA (an ARM build), which rounds differently."""
    u = rng.random(shape)
    u *= high - low
    u += low
    return u


def apply_gradient(w: np.ndarray, g: Gradient) -> None:
    """w += update, in place, on the gradient's rows."""
    if g.rows is None:
        w += g.update
    else:
        w[g.rows] += g.update
