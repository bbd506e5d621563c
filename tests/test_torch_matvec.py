"""hil.torch.matvec: Linear and Conv layers of a ChipModel computed by on-chip MATVEC."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="hil.torch needs the torch extra "
                                            "(pip install 'pcm-hil[torch]')")
from torch import nn  # noqa: E402

from drivers.errors import ConfigError  # noqa: E402
from drivers.geometry import Geometry  # noqa: E402
from hil.config import MatvecMode  # noqa: E402
from hil.recorder import Recorder  # noqa: E402
from hil.torch import ChipModel  # noqa: E402
from sim_backend import PcmModel, SimulatedChip  # noqa: E402


class Matvecs(Recorder):
    def __init__(self):
        self.blocks = []

    def on_matvec(self, step, block, x, values):
        self.blocks.append((step, block.shape, np.shape(x)))


def _model(net, rec=None, **kw):
    chip = SimulatedChip(PcmModel.preset("ideal"), Geometry(1, 64, 64), seed=0)
    cm = ChipModel(net, chip, rec, matvec=MatvecMode.CHIP, device_model="ideal", **kw)
    cm.program()
    return cm


@pytest.mark.parametrize("biases_on_chip", [True, False])
def test_chip_sums_and_gradients_equal_the_hosts_from_the_same_conductances(biases_on_chip):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.Tanh(),
                        nn.Flatten(), nn.Linear(27, 4))
    rec = Matvecs()
    cm = _model(net, rec, biases_on_chip=biases_on_chip)
    x = torch.randn(5, 2, 5, 5, requires_grad=True)
    y = net(x)
    y.square().sum().backward()
    chip_grads = [p.grad.clone() for p in net.parameters()] + [x.grad.clone()]
    net.zero_grad()
    x.grad = None
    with cm.host_forward():
        y_host = net(x)
        y_host.square().sum().backward()
    host_grads = [p.grad for p in net.parameters()] + [x.grad]
    # within float32 current resolution (differences of ~100 µA currents, scaled back) of the
    # largest value; a wrong scale, sign or layout would be off by far more
    for a, b in zip([y] + chip_grads, [y_host] + host_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3 * float(b.detach().abs().max()))
    # one MATVEC per device of each layer's pair, forward and backward: the conv's im2col
    # columns (one per example and output position) in one command, the bias row included
    fan = 2 * 3 * 3 + biases_on_chip
    assert rec.blocks == [(1, (3, fan), (fan, 5 * 9))] * 2 + [(1, (4, 27 + biases_on_chip),
                                                               (27 + biases_on_chip, 5))] * 2 \
        + [(1, (27, 4), (4, 5))] * 2 + [(1, (18, 3), (3, 5 * 9))] * 2
    assert cm.matvec_commands == 8


def test_conv1d_through_the_chip():
    torch.manual_seed(1)
    net = nn.Conv1d(2, 3, 3, padding=1)
    cm = _model(net)
    x = torch.randn(4, 2, 7)
    y = net(x)
    with cm.host_forward():
        want = net(x).detach()
    torch.testing.assert_close(y.detach(), want, rtol=0, atol=1e-3 * float(want.abs().max()))


def test_layers_the_chip_cannot_sum_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"layer 'lstm' \(LSTM\): on-chip MATVEC covers "
                                          r"Linear, Conv1d and Conv2d"):
        _model(nn.ModuleDict({"lstm": nn.LSTM(2, 2)}))
    with pytest.raises(ConfigError, match="layer '0': on-chip MATVEC takes convolutions with "
                                          "groups=1"):
        _model(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)))
