"""hil.torch.layers: which weights of a torch module become blocks, in crossbar layout."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="hil.torch needs the torch extra "
                                            "(pip install 'pcm-hil[torch]')")
from torch import nn  # noqa: E402

from drivers.errors import ConfigError  # noqa: E402
from hil.torch.layers import map_module  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh())
        self.rnn = nn.LSTM(4, 5, num_layers=2)
        self.head = nn.Linear(7, 6)
        self.gru = nn.GRU(3, 2, bias=False)


def test_every_mappable_layer_becomes_blocks_in_crossbar_layout():
    net = Net()
    bindings, host = map_module(net)
    assert [(b.block_name, b.shape) for b in bindings] == [
        ("features_0", (2 * 3 * 3 + 1, 3)),                 # conv (out, in, kh, kw): fan-in rows
        ("rnn_ih_l0", (4 + 1, 20)), ("rnn_hh_l0", (5 + 1, 20)),   # 4 gates × 5 hidden
        ("rnn_ih_l1", (5 + 1, 20)), ("rnn_hh_l1", (5 + 1, 20)),
        ("head", (7 + 1, 6)),
        ("gru_ih_l0", (3, 6)), ("gru_hh_l0", (2, 6))]       # no biases, no bias row
    assert host == ["features.1.weight", "features.1.bias"]   # BatchNorm stays on the host
    rnn = bindings[1]
    assert (rnn.weight_name, rnn.bias_name) == ("rnn.weight_ih_l0", "rnn.bias_ih_l0")
    # the block is the weight's transpose with the bias as its last row
    conv = bindings[0]
    block = conv.block_values()
    w = net.features[0].weight.detach().numpy()
    assert np.array_equal(block[:-1], w.reshape(3, -1).T)
    assert np.array_equal(block[-1], net.features[0].bias.detach().numpy())


def test_parameters_become_views_of_the_block_and_gradients_come_back_in_its_layout():
    net = Net()
    bindings, _ = map_module(net, layers=["features.0", "head"])
    conv, head = bindings
    w = np.arange(np.prod(conv.shape), dtype=np.float32).reshape(conv.shape)
    conv.alias(w)
    weight = net.features[0].weight
    assert weight.shape == (3, 2, 3, 3)
    assert weight[2, 1, 0, 2].item() == w[np.ravel_multi_index((1, 0, 2), (2, 3, 3)), 2]
    assert np.array_equal(net.features[0].bias.detach().numpy(), w[-1])
    w[5, 1] = -7.0   # the cache changes in place: the parameter sees it, no copy
    assert weight.reshape(3, -1)[1, 5].item() == -7.0
    assert conv.views(w)[0][1].ravel()[5] == -7.0
    # gradients: scaled into the block layout
    x = torch.randn(4, 2, 5, 5)
    net.head(torch.randn(3, 7)).sum().backward()
    u = head.update(np.float32(-0.5))
    assert u.rows is None and u.update.shape == (8, 6)
    assert np.array_equal(u.update[:7], np.float32(-0.5) * net.head.weight.grad.numpy().T)
    assert np.array_equal(u.update[7], np.float32(-0.5) * net.head.bias.grad.numpy())
    assert conv.update(np.float32(1.0)) is None   # no gradient yet: no update
    net.features[0](x).sum().backward()
    assert conv.update(np.float32(1.0)).update.shape == conv.shape


def test_biases_can_stay_on_the_host():
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    bindings, host = map_module(net, biases_on_chip=False)
    assert [b.shape for b in bindings] == [(3, 2), (2, 1)]
    assert host == ["0.bias", "2.bias"]


def test_layers_that_cannot_be_mapped_are_named():
    net = Net()
    with pytest.raises(ConfigError, match=r"layers: layer 'features.1' \(BatchNorm2d\) cannot "
                                          r"be held on the chip: hil.torch maps Linear"):
        map_module(net, layers=["head", "features.1"])
    with pytest.raises(ConfigError, match="no layer 'fc9' in the model"):
        map_module(net, layers=["fc9"])
    with pytest.raises(ConfigError, match="no layer hil.torch can map"):
        map_module(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    with pytest.raises(ConfigError, match="1.weight is the same tensor as 0.weight"):
        map_module(tied)
