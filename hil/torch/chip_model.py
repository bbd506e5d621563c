"""ChipModel: the chosen weights of an ordinary torch.nn.Module held as device pairs.

The model stays the user's: its forward and backward passes are plain torch, but the mapped
parameters are views of the conductance cache (hil.torch.layers), so every forward pass uses
the weights the chip holds, read noise and drift as the reads gave them. Updates go through
the same mixed-precision core as the MLP trainer (hil.mixed_precision) and every command
through one ChipIO, so a run log of a torch model has the same schema as the MLP's.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from drivers.backend import ChipBackend
from drivers.errors import ConfigError, HilError
from hil.chip_io import ChipIO
from hil.chip_matvec import preflight_block
from hil.config import ChiUpdate, MatvecMode, RefreshConfig
from hil.device_pairs import WeightBlock, allocate_pairs
from hil.mixed_precision import MixedPrecisionCore
from hil.recorder import Recorder
from hil.run_history import start_provenance
from hil.torch.layers import BlockBinding, map_module

F32 = np.float32
#: β when none is given: the largest initial weight of a block maps to this conductance
#: difference (about three SET pulses from RESET on the JAP model).
DEFAULT_INIT_PEAK_US = 4.0

BetaSpec = Union[None, float, Sequence[float], Mapping[str, float]]


@dataclass
class StepReport:
    """What one optimizer step sent: SET pulses of the update, pairs refreshed."""

    pulses: int
    refreshed: int


class ChipModel:
    """`model`'s mappable layers (or those named in `layers`) on `backend`.

    β per block: one number for all, one per block in order, a mapping from layer (module
    path) or block name to β, or None: the largest initial |weight| of each block maps to
    DEFAULT_INIT_PEAK_US. The other arguments mean what the experiment config's keys of the
    same names mean (docs/training.md). Call `program()` once before training.
    """

    def __init__(self, model: nn.Module, backend: ChipBackend,
                 recorder: Optional[Recorder] = None, *, layers: Sequence[str] | None = None,
                 beta: BetaSpec = None, biases_on_chip: bool = True, epsilon_us: float = 1.5,
                 max_pulses: int = 8, chi_update: ChiUpdate = ChiUpdate.MEASURED,
                 refresh: RefreshConfig = RefreshConfig(), skip_saturated: bool = True,
                 device_model: Any = "jap",
                 start_address: int = 0, bad_devices: Sequence[int] = (),
                 full_read_every_steps: int = 0, matvec: MatvecMode = MatvecMode.HOST,
                 matvec_read_v: float = 0.2) -> None:
        from sim_backend.pcm_model import PcmModel
        self.module = model
        self.io = ChipIO(backend, recorder)
        self.backend = backend
        self.chip_info = backend.info()
        self.bindings, self.host_parameter_names = map_module(model, layers, biases_on_chip)
        betas = _betas(self.bindings, beta)
        blocks = [WeightBlock(b.block_name, b.shape, be) for b, be in zip(self.bindings, betas)]
        self.pairs = allocate_pairs(blocks, self.chip_info.geometry, start_address,
                                    bad_devices, key="model")
        host_model = device_model if isinstance(device_model, PcmModel) \
            else PcmModel.load(device_model)
        self.core = MixedPrecisionCore(self.io, self.pairs, host_model, epsilon_us=epsilon_us,
                                       max_pulses=max_pulses, chi_update=chi_update,
                                       refresh=refresh, check_finite=True,
                                       skip_saturated=skip_saturated)
        self.full_read_every_steps = int(full_read_every_steps)
        self.step = 0            # optimizer steps done; commands of step s are logged under s
        self.programmed = False
        self._owned: List[Tuple[str, nn.Parameter, int, int]] = []
        self._matvec = None
        self.matvec_mode = MatvecMode(matvec)
        if self.matvec_mode is MatvecMode.CHIP:
            from hil.torch.matvec import ChipMatvecLayers
            self._matvec = ChipMatvecLayers(self, matvec_read_v)

    # --- set-up -----------------------------------------------------------------------------
    def program(self, config: Optional[Mapping[str, Any]] = None,
                provenance: Optional[Mapping[str, Any]] = None) -> None:
        """Start the log (config, provenance, layout), RESET every mapped device, program
        the model's current weights blind, read everything back; from then on the mapped
        parameters are views of the cache."""
        if self.programmed:
            raise HilError("ChipModel.program() was already called: the chip holds the "
                           "model's weights")
        prov = {"chip": self.chip_info.to_dict(), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), **start_provenance(self.backend),
                **dict(provenance or {})}
        self.io.recorder.begin(config=dict(config or {}), provenance=prov,
                               layout=self.pairs.layout())
        self.io.step = 0
        self.core.program_initial([b.block_values() for b in self.bindings])
        for b, w in zip(self.bindings, self.core.weights):
            b.alias(w)
        self._owned = [(name, p, p.data_ptr(), p._version)
                       for b in self.bindings for name, p in b.parameters]
        self.core.record_snapshot(0)
        self.programmed = True
        if self._matvec is not None:
            self._matvec.install()

    # --- training ---------------------------------------------------------------------------
    def apply_gradients(self, lr: float) -> StepReport:
        """One mixed-precision step from the parameters' gradients: χ += -lr·grad, the
        pulses χ calls for in one PROGRAM_READ, a refresh when due."""
        if not self.programmed:
            raise HilError("call ChipModel.program() before training: the chip holds no "
                           "weights yet")
        self._check_owned()
        self.step += 1
        io, core = self.io, self.core
        io.step = self.step
        scale = F32(-lr)
        pulses = core.update([b.update(scale) for b in self.bindings])
        refreshed = core.refresh() if core.refresh_due(self.step) else 0
        fr = self.full_read_every_steps
        if fr and self.step % fr == 0:
            core.full_read()
        return StepReport(pulses, refreshed)

    def _check_owned(self) -> None:
        for name, p, ptr, version in self._owned:
            if p.data_ptr() != ptr or p._version != version:
                raise HilError(f"parameter {name} was changed outside the chip's optimizer; "
                               f"it holds the chip's weights: train it with "
                               f"MixedPrecisionSGD only")

    def full_read(self) -> None:
        """Read every mapped device into the cache (drift since the last read-back)."""
        self.core.full_read()

    def snapshot(self) -> None:
        """Log the cache and χ per block (the run log's snapshot) at the current step."""
        self.core.record_snapshot(self.step)

    @contextlib.contextmanager
    def host_forward(self) -> Iterator[None]:
        """Forward passes on the host from the cache inside the block, also when training
        uses on-chip MATVEC (evaluation of a test set, say)."""
        if self._matvec is None:
            yield
            return
        self._matvec.enabled = False
        try:
            yield
        finally:
            self._matvec.enabled = True

    # --- what is where ----------------------------------------------------------------------
    def chip_parameters(self) -> List[nn.Parameter]:
        return [p for b in self.bindings for _, p in b.parameters]

    def host_parameters(self) -> List[nn.Parameter]:
        """The parameters left on the host (not mapped): train them with any optimizer."""
        params = dict(self.module.named_parameters())
        return [params[n] for n in self.host_parameter_names]

    def devices(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """The G+ and G- device addresses of parameter `name`, shaped like it."""
        for b, pb in zip(self.bindings, self.pairs.blocks):
            for i, (pname, _) in enumerate(b.parameters):
                if pname == name:
                    return b.views(pb.plus)[i], b.views(pb.minus)[i]
        raise KeyError(f"parameter {name!r} is not on the chip (on the chip: "
                       f"{', '.join(n for b in self.bindings for n, _ in b.parameters)})")

    def layout(self) -> Dict[str, np.ndarray]:
        return self.pairs.layout()

    @property
    def matvec_commands(self) -> int:
        return 0 if self._matvec is None else self._matvec.matvec.commands

    def preflight_matvec(self, guard: Any) -> None:
        """Check the on-chip MATVECs a training step sends (each block driven from its
        inputs and from its outputs) against the station's limits; none with matvec: host."""
        if self._matvec is not None:
            for b, pb in zip(self.bindings, self.pairs.blocks):
                preflight_block(guard, pb.plus, b.fan_in)

    @property
    def n_weights(self) -> int:
        return self.core.n_weights

    def state_digest(self) -> str:
        return self.core.state_digest()


def _betas(bindings: List[BlockBinding], beta: BetaSpec) -> List[float]:
    if beta is None:
        out = []
        for b in bindings:
            peak = float(np.abs(b.block_values()).max())
            if not peak > 0:
                raise ConfigError(f"layer {b.layer!r}: its initial weights are all zero, so "
                                  f"no β follows from them: give beta", key="beta")
            out.append(peak / DEFAULT_INIT_PEAK_US)
        return out
    if isinstance(beta, (int, float)):
        return [float(beta)] * len(bindings)
    if isinstance(beta, Mapping):
        out = []
        for b in bindings:
            key = b.block_name if b.block_name in beta else b.layer
            if key not in beta:
                raise ConfigError(f"no β for layer {b.layer!r} (block {b.block_name!r})",
                                  key="beta")
            out.append(float(beta[key]))
        return out
    values = [float(v) for v in beta]
    if len(values) != len(bindings):
        raise ConfigError(f"{len(values)} values for {len(bindings)} weight blocks "
                          f"({', '.join(b.block_name for b in bindings)})", key="beta")
    return values
