"""hil.torch.MixedPrecisionSGD: a torch optimizer whose step is the mixed-precision core's."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="hil.torch needs the torch extra "
                                            "(pip install 'pcm-hil[torch]')")
from torch import nn  # noqa: E402

from drivers.geometry import Geometry  # noqa: E402
from hil.config import ChiUpdate, RefreshConfig  # noqa: E402
from hil.torch import ChipModel, MixedPrecisionSGD  # noqa: E402
from sim_backend import PcmModel, SimulatedChip  # noqa: E402


def _setup(lr=0.5):
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    chip = ChipModel(net, SimulatedChip(PcmModel.preset("jap"), Geometry(1, 8, 8), seed=1),
                     chi_update=ChiUpdate.NOMINAL, refresh=RefreshConfig(period_steps=0))
    chip.program()
    return net, chip, MixedPrecisionSGD(chip, lr)


def test_the_learning_rate_of_the_param_group_and_schedulers_are_used():
    net, chip, opt = _setup(lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1)
    chi = chip.core.chi.chi[0]
    want = np.zeros_like(chi)
    for lr in (0.05, 0.005):   # updates below ε_w: everything stays in χ
        opt.zero_grad()
        net(torch.ones(1, 3)).sum().backward()
        g = np.concatenate([net.weight.grad.numpy().T, net.bias.grad.numpy()[None]])
        want += np.float32(-lr) * g
        opt.step()
        sched.step()
        assert opt.last.pulses == 0
        assert np.array_equal(chi, want)
    assert chip.step == 2


def test_step_calls_the_closure_and_refuses_a_second_param_group():
    net, chip, opt = _setup()
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = net(torch.ones(2, 3)).sum()
        loss.backward()
        return loss

    expect = net(torch.ones(2, 3)).sum().item()
    loss = opt.step(closure)
    assert calls == [1] and loss.item() == expect and chip.step == 1
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1})
    with pytest.raises(ValueError, match="one parameter group"):
        opt.step()
    with pytest.raises(ValueError, match="lr must be > 0"):
        MixedPrecisionSGD(chip, 0.0)
