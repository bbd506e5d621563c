"""hil.torch: the weights of an ordinary PyTorch model held as device pairs on a chip.

    chip = ChipModel(net, backend, recorder)     # map Linear/Conv/RNN weights onto pairs
    chip.program()                               # RESET, blind SET to net's weights, read
    opt = MixedPrecisionSGD(chip, lr=0.05)
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()                               # χ, pulses, refresh: the MLP's core

See docs/torch.md. Needs the optional extra: pip install 'pcm-hil[torch]'.
"""
try:
    import torch  # noqa: F401
except ImportError as e:   # pragma: no cover - depends on the environment
    raise ImportError("hil.torch needs PyTorch: pip install 'pcm-hil[torch]'") from e

from hil.torch.chip_model import ChipModel, StepReport
from hil.torch.layers import BlockBinding, map_module
from hil.torch.optimizer import MixedPrecisionSGD

__all__ = ["BlockBinding", "ChipModel", "MixedPrecisionSGD", "StepReport", "map_module"]
