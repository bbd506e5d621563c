"""Which weights of a torch.nn.Module go on the chip, and how each becomes a weight block.

Every mapped weight matrix is held in crossbar layout, as the MLP's layers are: one row per
input (the fan-in, then the bias as one more input fixed at 1 when biases are on the chip),
one column per output. A crossbar driven by its inputs computes exactly this, and the rows
of the block are then the layer's input lines. The torch parameters become views of the
conductance cache's weights W = β(G+ - G-): the forward pass reads what the chip holds with
no copy, and nothing but the mixed-precision core writes them.

Mapped: Linear (weight (out, in), bias), Conv1d/2d/3d (weight (out, in/groups, *k) as a
block (in/groups·Πk [+1], out)), RNN/LSTM/GRU (per layer and direction: weight_ih and
weight_hh with bias_ih and bias_hh, and LSTM's projection weight_hr).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from drivers.errors import ConfigError
from hil.mixed_precision import BlockUpdate

F32 = np.float32
#: The module types whose weights can be held as device pairs.
MAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase)
MAPPABLE_NAMES = "Linear, Conv1d, Conv2d, Conv3d, RNN, LSTM, GRU"


@dataclass
class BlockBinding:
    """One weight block: a module's weight matrix and (when on the chip) its bias row."""

    layer: str                  # the module's path in the model ("features.0"; "" = root)
    block_name: str             # the block's name in the run log ("features_0")
    weight_name: str            # the parameters' names in the model
    weight: nn.Parameter
    bias_name: Optional[str]
    bias: Optional[nn.Parameter]

    out: int = field(init=False)      # outputs: the block's columns
    fan_in: int = field(init=False)   # inputs per output: the block's rows before the bias
    shape: Tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.out = int(self.weight.shape[0])
        self.fan_in = int(self.weight[0].numel())
        self.shape = (self.fan_in + (self.bias is not None), self.out)

    @property
    def parameters(self) -> List[Tuple[str, nn.Parameter]]:
        out = [(self.weight_name, self.weight)]
        if self.bias is not None:
            out.append((self.bias_name, self.bias))
        return out

    def block_values(self) -> np.ndarray:
        """The parameters' current values in block layout (the initial programming target)."""
        block = np.empty(self.shape, F32)
        with torch.no_grad():
            block[:self.fan_in] = self.weight.detach().reshape(self.out, -1).T.numpy()
            if self.bias is not None:
                block[self.fan_in] = self.bias.detach().numpy()
        return block

    def alias(self, w: np.ndarray) -> None:
        """Make the parameters views of the block's weights `w` (the conductance cache's)."""
        t = torch.from_numpy(w)
        self.weight.data = t[:self.fan_in].T.reshape(self.weight.shape)
        if self.bias is not None:
            self.bias.data = t[self.fan_in]

    def views(self, a: np.ndarray) -> List[np.ndarray]:
        """A block-shaped array seen as the parameters' shapes (e.g. device addresses)."""
        out = [a[:self.fan_in].T.reshape(tuple(self.weight.shape))]
        if self.bias is not None:
            out.append(a[self.fan_in])
        return out

    def update(self, scale: F32) -> BlockUpdate | None:
        """scale·gradient in block layout, its all-zero rows left out (None when no
        parameter has a gradient)."""
        gw = self.weight.grad
        gb = self.bias.grad if self.bias is not None else None
        if gw is None and gb is None:
            return None
        fan = self.fan_in
        partial = gw is None or (self.bias is not None and gb is None)
        u = np.zeros(self.shape, F32) if partial else np.empty(self.shape, F32)
        if gw is not None:   # the gradient has the weight's strides: .T is the block layout
            np.multiply(gw.detach().numpy().reshape(self.out, fan).T, scale, out=u[:fan])
        if gb is not None:
            np.multiply(gb.detach().numpy(), scale, out=u[fan])
        # Rows whose inputs were all zero (an MLP's blank pixels) get no update and are left
        # out, as the MLP trainer leaves them: the pulse rule looks at the weights it updates.
        rows = np.flatnonzero(u.any(axis=1))
        if rows.size == u.shape[0]:
            return BlockUpdate(None, u)
        return BlockUpdate(rows, u[rows])


def _block_name(layer: str, module: nn.Module, suffix: str = "") -> str:
    base = layer or type(module).__name__.lower()
    return re.sub(r"[^A-Za-z0-9_\-]", "_", base) + suffix


def _bindings_of(layer: str, module: nn.Module, biases_on_chip: bool) -> List[BlockBinding]:
    prefix = f"{layer}." if layer else ""

    def bind(wname: str, bname: Optional[str], suffix: str = "") -> BlockBinding:
        bias = getattr(module, bname) if bname and biases_on_chip else None
        if bias is None:
            bname = None
        return BlockBinding(layer, _block_name(layer, module, suffix), prefix + wname,
                            getattr(module, wname), prefix + bname if bname else None, bias)

    if isinstance(module, nn.RNNBase):
        out = []
        for name in module._flat_weights_names:
            if name.startswith("weight_"):
                kind = name[len("weight_"):]                       # "ih_l0", "hh_l1_reverse"
                bname = f"bias_{kind}" if kind[:2] in ("ih", "hh") and module.bias else None
                out.append(bind(name, bname, "_" + kind))
        return out
    return [bind("weight", "bias" if module.bias is not None else None)]


def map_module(model: nn.Module, layers: Sequence[str] | None = None,
               biases_on_chip: bool = True) -> Tuple[List[BlockBinding], List[str]]:
    """The blocks of `model`'s mapped layers, and the names of the parameters left on the
    host. `layers` names the modules to map (default: every mappable module); naming one
    that cannot be mapped or does not exist is a ConfigError naming it."""
    modules: Dict[str, nn.Module] = dict(model.named_modules())
    if layers is None:
        chosen = [n for n, m in modules.items() if isinstance(m, MAPPABLE)
                  and any(True for _ in m.parameters(recurse=False))]
    else:
        chosen = list(layers)
        for n in chosen:
            if n not in modules:
                raise ConfigError(f"no layer {n!r} in the model (layers: "
                                  f"{', '.join(k for k in modules if k)})", key="layers")
            if not isinstance(modules[n], MAPPABLE):
                raise ConfigError(f"layer {n!r} ({type(modules[n]).__name__}) cannot be "
                                  f"held on the chip: hil.torch maps {MAPPABLE_NAMES}",
                                  key="layers")
    if not chosen:
        raise ConfigError("the model has no layer hil.torch can map "
                          f"({MAPPABLE_NAMES})", key="layers")
    bindings = [b for n in chosen for b in _bindings_of(n, modules[n], biases_on_chip)]
    on_chip = {id(p) for b in bindings for _, p in b.parameters}
    seen: Dict[int, str] = {}
    for b in bindings:
        for name, p in b.parameters:
            if id(p) in seen:
                raise ConfigError(f"parameter {name} is the same tensor as {seen[id(p)]}: a "
                                  f"weight shared between layers cannot be held twice",
                                  key="layers")
            seen[id(p)] = name
    host = [n for n, p in model.named_parameters() if id(p) not in on_chip]
    return bindings, host
