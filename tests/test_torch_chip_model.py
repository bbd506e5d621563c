"""hil.torch.ChipModel: a torch model's weights held as device pairs on a real SimulatedChip,
its forward and backward passes from what the chip holds, its updates through the core."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="hil.torch needs the torch extra "
                                            "(pip install 'pcm-hil[torch]')")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from drivers.errors import ConfigError, HilError  # noqa: E402
from drivers.geometry import Geometry  # noqa: E402
from hil.config import ChiUpdate, RefreshConfig  # noqa: E402
from hil.mixed_precision import TrainingDiverged  # noqa: E402
from hil.recorder import Recorder  # noqa: E402
from hil.torch import ChipModel, MixedPrecisionSGD  # noqa: E402
from sim_backend import PcmModel, SimulatedChip  # noqa: E402

F32 = np.float32


class Commands(Recorder):
    def __init__(self):
        self.seen = []

    def on_program(self, step, addresses, n_pulses, pulse, purpose):
        self.seen.append((step, purpose, addresses.copy(), np.asarray(n_pulses).copy()))

    def on_read(self, step, addresses, values, purpose):
        self.seen.append((step, purpose, addresses.copy(), values.copy()))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.tanh(F.max_pool2d(self.conv(x), 2)).flatten(1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.out = nn.Linear(4, 5)

    def forward(self, x):
        return self.out(self.lstm(x)[0][:, -1])


def _chip(net, rec=None, geometry=Geometry(1, 32, 64), **kw):
    torch.manual_seed(0)
    chip = SimulatedChip(PcmModel.preset("jap"), geometry, seed=2)
    return chip, ChipModel(net, chip, rec, **kw)


def _weights_from_reads(cm, values):
    """Every on-chip parameter from read conductances, computed here by hand."""
    g = dict(zip(cm.pairs.addresses.tolist(), values.tolist()))
    out = {}
    for b, pb in zip(cm.bindings, cm.pairs.blocks):
        gp = np.vectorize(g.get)(pb.plus).astype(F32)
        gm = np.vectorize(g.get)(pb.minus).astype(F32)
        w = F32(pb.beta) * (gp - gm)
        out[b.weight_name] = torch.from_numpy(np.ascontiguousarray(
            w[:b.fan_in].T.reshape(tuple(b.weight.shape))))
        if b.bias is not None:
            out[b.bias_name] = torch.from_numpy(w[b.fan_in].copy())
    return out


@pytest.mark.parametrize("make,x", [
    (ConvNet, lambda: torch.randn(6, 2, 8, 8)),
    (Recurrent, lambda: torch.randn(6, 7, 3)),
], ids=["conv+linear", "lstm+linear"])
def test_gradients_through_chip_held_layers_equal_torchs_for_the_weights_read_back(make, x):
    """A plain torch twin given the weights computed by hand from the full read: the same
    parameters exactly, the same gradients up to float32 summation order (the chip model's
    parameters are strided views of the cache, so torch may sum in another order)."""
    torch.manual_seed(1)
    net = make()
    twin = copy.deepcopy(net)
    rec = Commands()
    _, cm = _chip(net, rec)
    cm.program()
    purposes = [c[1] for c in rec.seen]
    assert purposes == ["init_reset", "init_set", "full_read"]
    full = rec.seen[-1]
    assert np.array_equal(full[2], cm.pairs.addresses)
    twin.load_state_dict(_weights_from_reads(cm, full[3]))
    xb, y = x(), torch.tensor([0, 1, 2, 3, 4, 0])
    for model in (net, twin):
        F.cross_entropy(model(xb), y).backward()
    for (name, p), (_, q) in zip(net.named_parameters(), twin.named_parameters()):
        assert torch.equal(p.detach(), q.detach()), name   # the forward used the chip's
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8, msg=name)


def test_a_conv_layers_device_map_round_trips():
    net = ConvNet()
    chip, cm = _chip(net)
    cm.program()
    plus, minus = cm.devices("conv.weight")
    assert plus.shape == minus.shape == (3, 2, 3, 3)
    block, sign, flat = cm.pairs.locate(plus.ravel())
    assert (block == 0).all() and (sign == 1).all()
    row, col = np.unravel_index(flat, cm.pairs.blocks[0].shape)   # (fan-in + bias, out)
    o, c, i, j = np.indices((3, 2, 3, 3)).reshape(4, -1)
    assert np.array_equal(col, o) and np.array_equal(row, (c * 3 + i) * 3 + j)
    assert (cm.pairs.locate(minus.ravel())[1] == -1).all()
    # each weight is β(G+ - G-) of exactly its two devices, as the cache read them
    g = dict(zip(cm.pairs.addresses.tolist(), cm.core.cache_vector().tolist()))
    gp, gm = (np.vectorize(g.get)(a).astype(F32) for a in (plus, minus))
    assert np.array_equal(net.conv.weight.detach().numpy(),
                          F32(cm.pairs.blocks[0].beta) * (gp - gm))
    bp, _ = cm.devices("conv.bias")
    assert np.array_equal(bp, cm.pairs.blocks[0].plus[-1])
    with pytest.raises(KeyError, match="'fc.nope' is not on the chip"):
        cm.devices("fc.nope")


def test_a_step_hands_minus_lr_times_the_gradient_to_chi_and_sends_one_command():
    net = ConvNet()
    rec = Commands()
    _, cm = _chip(net, rec, chi_update=ChiUpdate.NOMINAL, refresh=RefreshConfig(period_steps=0))
    cm.program()
    opt = MixedPrecisionSGD(cm, lr=0.5)
    rec.seen.clear()
    F.cross_entropy(net(torch.randn(4, 2, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    grads = [b.update(F32(-0.5)).update for b in cm.bindings]
    opt.step()
    total = 0
    for g, chi, eps in zip(grads, cm.core.chi.chi, cm.core.chi.eps_w):
        p = np.minimum(np.floor(np.abs(g) / eps), F32(8))
        assert np.array_equal(chi, g - np.sign(g) * p * eps)
        total += int(p.sum())
    assert opt.last.pulses == total > 0 and cm.step == 1
    assert [(s, purpose) for s, purpose, *_ in rec.seen] == [(1, "update"), (1, "readback")]


def test_networks_trained_in_turns_pulse_only_the_part_whose_loss_was_backpropagated():
    """A GAN's pattern (docs/torch.md): two nets in one ChipModel, one part stepped at a
    time; the other part's blocks, their gradients None, send nothing and keep their χ."""
    nets = nn.ModuleDict({"g": nn.Linear(6, 8), "d": nn.Linear(8, 1)})
    rec = Commands()
    _, cm = _chip(nets, rec, refresh=RefreshConfig(period_steps=0))
    cm.program()
    opt = MixedPrecisionSGD(cm, lr=2.0)
    d_devices = {int(a) for name in ("d.weight", "d.bias") for half in cm.devices(name)
                 for a in half.ravel()}
    for _ in range(3):   # the generator's turn: the discriminator is only a fixed function
        rec.seen.clear()
        opt.zero_grad(set_to_none=True)
        fake = nets["g"](torch.randn(16, 6))
        out = F.linear(fake, nets["d"].weight.detach(), nets["d"].bias.detach())
        (-out.mean()).backward()
        assert nets["d"].weight.grad is None
        opt.step()
        pulsed = {int(a) for _, purpose, addresses, _ in rec.seen if purpose == "update"
                  for a in addresses}
        assert pulsed and not pulsed & d_devices
    assert not cm.core.chi.chi[1].any()   # the discriminator's χ never moved
    assert opt.last.pulses > 0


def test_a_model_larger_than_the_chip_is_refused_naming_the_layer():
    with pytest.raises(ConfigError, match=r"model: 2 weight block\(s\) need 604 devices, the "
                                          r"chip has 512 usable .*block 'fc' \(49, 5\) is "
                                          r"the first that does not fit"):
        _chip(ConvNet(), geometry=Geometry(1, 8, 64))


def test_a_non_finite_gradient_is_refused_naming_the_layer_before_the_chip_sees_it():
    net = ConvNet()
    chip, cm = _chip(net)
    cm.program()
    opt = MixedPrecisionSGD(cm, lr=0.1)
    F.cross_entropy(net(torch.randn(2, 2, 8, 8)), torch.tensor([0, 1])).backward()
    net.fc.weight.grad[1, 3] = float("inf")
    before = chip.counters["commands"]
    with pytest.raises(TrainingDiverged, match="block 'fc': its update is NaN or infinite"):
        opt.step()
    assert chip.counters["commands"] == before


def test_the_chips_weights_are_not_writable_from_outside():
    net = ConvNet()
    _, cm = _chip(net)
    with pytest.raises(HilError, match=r"call ChipModel.program\(\) before training"):
        cm.apply_gradients(0.1)
    cm.program()
    with pytest.raises(HilError, match="already called"):
        cm.program()
    with torch.no_grad():
        net.fc.weight.add_(1.0)      # what another optimizer would do
    with pytest.raises(HilError, match="parameter fc.weight was changed outside"):
        cm.apply_gradients(0.1)


def test_beta_per_block_by_name_or_from_the_initial_weights():
    net = ConvNet()
    _, cm = _chip(net, beta={"conv": 0.01, "fc": 0.02})
    assert [b.beta for b in cm.pairs.blocks] == [0.01, 0.02]
    _, cm = _chip(ConvNet())   # default: the largest initial |w| maps to 4 µS
    for b, pb in zip(cm.bindings, cm.pairs.blocks):
        assert pb.beta == pytest.approx(float(np.abs(b.block_values()).max()) / 4.0)
    with pytest.raises(ConfigError, match="beta: no β for layer 'fc'"):
        _chip(ConvNet(), beta={"conv": 0.01})
    with pytest.raises(ConfigError, match=r"beta: 3 values for 2 weight blocks \(conv, fc\)"):
        _chip(ConvNet(), beta=[0.1, 0.1, 0.1])
