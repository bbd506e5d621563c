"""On-chip MATVEC for a ChipModel's Linear and Conv layers (`matvec: chip`).

Each such layer's forward pass becomes one weighted sum over its device block: a Linear
layer's inputs are the block's input lines directly; a convolution's are its im2col
columns (torch's unfold: one column per example and output position), so a whole batch of
a layer is one MATVEC per device of the pair, W·x = β(I+ - I-), with the bias row driven by
a constant input as on the MLP's crossbar. The backward pass drives the same block from its
outputs (hil.chip_matvec); the weight gradients are the host's, from the inputs and the
output errors, as in the MLP trainer. Training passes only: `ChipModel.host_forward()` (and
evaluation in the experiment) computes on the host from the conductance cache.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drivers.backend import Capability
from drivers.errors import ConfigError
from hil.chip_matvec import ChipMatvec
from hil.torch.layers import BlockBinding

F32 = np.float32


class ChipMatvecLayers:
    """Installs on-chip forward passes on the ChipModel's Linear/Conv1d/Conv2d layers."""

    def __init__(self, chip: Any, read_v: float) -> None:
        if not chip.chip_info.supports(Capability.MATVEC):
            raise ConfigError("the backend has no on-chip matvec", key="training.matvec")
        self.chip = chip
        self.matvec = ChipMatvec(chip.io, chip.chip_info, read_v)
        self.enabled = True
        self._saved: List[Tuple[nn.Module, Any]] = []
        modules: Dict[str, nn.Module] = dict(chip.module.named_modules())
        self._layers = []
        for i, b in enumerate(chip.bindings):
            m = modules[b.layer]
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise ConfigError(f"layer {b.layer!r}: on-chip MATVEC takes convolutions "
                                      f"with groups=1, numeric zero padding; use matvec: "
                                      f"host", key="training.matvec")
            elif not isinstance(m, nn.Linear):
                raise ConfigError(f"layer {b.layer!r} ({type(m).__name__}): on-chip MATVEC "
                                  f"covers Linear, Conv1d and Conv2d layers; use matvec: host",
                                  key="training.matvec")
            self._layers.append((m, b, i))

    def install(self) -> None:
        for m, b, i in self._layers:
            self._saved.append((m, m.forward))
            m.forward = functools.partial(self._forward, m, b, i, m.forward)

    def _forward(self, m: nn.Module, b: BlockBinding, i: int, host: Callable,
                 x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return host(x)
        if isinstance(m, nn.Linear):
            lead = x.shape[:-1]
            y = self._columns(m, b, i, x.reshape(-1, x.shape[-1], 1))
            return y.reshape(*lead, b.out)
        conv2d = isinstance(m, nn.Conv2d)
        x4 = x if conv2d else x.unsqueeze(-2)
        k, st, pad, dil = ((m.kernel_size, m.stride, m.padding, m.dilation) if conv2d else
                           ((1, *m.kernel_size), (1, *m.stride), (0, *m.padding),
                            (1, *m.dilation)))
        cols = F.unfold(x4, k, dilation=dil, padding=pad, stride=st)   # (N, fan_in, L)
        y = self._columns(m, b, i, cols)
        h, w = (_out_size(x4.shape[d], k[j], st[j], pad[j], dil[j])
                for j, d in enumerate((-2, -1)))
        y = y.reshape(x4.shape[0], b.out, h, w)
        return y if conv2d else y.squeeze(-2)

    def _columns(self, m: nn.Module, b: BlockBinding, i: int,
                 cols: torch.Tensor) -> torch.Tensor:
        y = _ChipColumns.apply(cols, b.weight, b.bias, (self, i))
        if m.bias is not None and b.bias is None:   # the bias stayed on the host
            y = y + m.bias.reshape(1, -1, 1)
        return y

    def sums(self, i: int, x: np.ndarray, forward: bool) -> np.ndarray:
        """Block i driven from its inputs (x (fan_in [+1], n) → (out, n)) or from its outputs
        (x (out, n) → (fan_in, n)), logged under the step in flight."""
        chip = self.chip
        chip.io.step = chip.step + 1
        pb = chip.pairs.blocks[i]
        beta = chip.core.cache.blocks[i].beta
        fan_in = chip.bindings[i].fan_in
        if forward:
            return self.matvec.weighted_sums(pb.plus.T, pb.minus.T, x, beta)
        return self.matvec.weighted_sums(pb.plus[:fan_in], pb.minus[:fan_in], x, beta)


def _out_size(n: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (n + 2 * pad - dil * (k - 1) - 1) // stride + 1


class _ChipColumns(torch.autograd.Function):
    """cols (B, fan_in, L) → (B, out, L) on the chip; the weights enter as inputs so that
    autograd gives them their (host-computed) gradients."""

    @staticmethod
    def forward(ctx, cols, weight, bias, where):  # noqa: ARG004 - weight: for its gradient
        layers, i = where
        bsz, fan_in, n_pos = cols.shape
        x = cols.detach().permute(1, 0, 2).reshape(fan_in, bsz * n_pos).numpy()
        if bias is not None:   # the bias row of the block, driven by a constant 1
            x = np.concatenate([x, np.ones((1, x.shape[1]), F32)])
        y = torch.from_numpy(layers.sums(i, x, True))            # (out, B·L)
        ctx.save_for_backward(torch.from_numpy(x))
        ctx.where, ctx.shape, ctx.has_bias = where, (bsz, fan_in, n_pos), bias is not None
        return y.reshape(-1, bsz, n_pos).permute(1, 0, 2)

    @staticmethod
    def backward(ctx, grad):
        layers, i = ctx.where
        (x,) = ctx.saved_tensors
        bsz, fan_in, n_pos = ctx.shape
        g = grad.permute(1, 0, 2).reshape(-1, bsz * n_pos).contiguous()   # (out, B·L)
        grad_cols = None
        if ctx.needs_input_grad[0]:
            back = layers.sums(i, g.numpy(), False)                     # (fan_in, B·L)
            grad_cols = torch.from_numpy(back).reshape(fan_in, bsz, n_pos).permute(1, 0, 2)
        gw_block = x @ g.T                                               # (fan_in [+1], out)
        binding = layers.chip.bindings[i]
        grad_w = gw_block[:fan_in].T.reshape(binding.weight.shape)
        grad_b = gw_block[fan_in] if ctx.has_bias else None
        return grad_cols, grad_w, grad_b, None
