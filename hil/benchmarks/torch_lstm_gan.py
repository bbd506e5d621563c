"""The seed's LSTM and GAN: training throughput on the in-process simulated chip against the
same network in plain torch fp32, in the same run.

Each side trains one epoch of the shipped config (configs/shakespeare_lstm.yaml,
configs/mnist_gan.yaml) cut to its first characters or digits, from the same initial weights,
on the same windows or digits and latents, with the same plain SGD: the chip through the
mixed-precision core (hil.char_lstm_experiment, hil.gan_experiment), fp32 through their fp32
counterparts. Both sides' epochs end with the same small scoring (3,200 holdout characters;
500 generated digits), so that is inside both times; the chip's one-off initial programming
is not. One torch thread on both sides: the two sides run the same torch code, and on a
shared machine a second thread spins against the other load (hil.benchmarks.torch_cnn).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List

from hil.lstm_gan_study import CONFIGS, with_settings

#: torch intra-op threads of both sides.
TORCH_THREADS = 1

#: The checkout the shipped configs are read from.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(kind: str, settings: List[str]) -> Any:
    """The shipped config of `kind` ("lstm", "gan"), one epoch, with its fp32 counterpart."""
    return with_settings(os.path.join(REPO, CONFIGS[kind]),
                         ["training.epochs=1", "training.baseline=true", *settings], "test", 0)


def _chip_against_fp32(make: Any, cfg: Any, unit: str) -> Dict[str, Any]:
    """Time one epoch of the chip trainer and one of its fp32 counterpart, as `make` (the
    experiment's `lstm_trainers` or `gan_trainers`) builds them for `cfg`."""
    chip, fp32, data = make(cfg, cfg.sim_chip_spec().build(), None, None)
    chip.initialize()
    t0 = time.perf_counter()
    chip.train_epoch(data, 0)
    t1 = time.perf_counter()
    fp32.train_epoch(data, 0)
    t2 = time.perf_counter()
    n = chip.examples
    return {unit: n, f"chip_{unit}_per_s": n / (t1 - t0), f"fp32_{unit}_per_s": n / (t2 - t1),
            "ratio_fp32": (t2 - t1) / (t1 - t0),
            "set_pulses_per_step": chip.io.counters.set_pulses / max(chip.step, 1)}


def lstm_figures(chars: int) -> Dict[str, Any]:
    """Characters per second of the character-level LSTM over its first `chars` training
    characters, chip and fp32."""
    from hil.char_lstm_experiment import lstm_trainers
    cfg = _config("lstm", [f"data.train_chars={chars}", "data.holdout_chars=3200"])
    return _chip_against_fp32(lstm_trainers, cfg, "chars")


def gan_figures(digits: int) -> Dict[str, Any]:
    """Real digits per second of the MLP GAN (a discriminator and a generator step per batch)
    over its first `digits` training digits, chip and fp32."""
    from hil.gan_experiment import gan_trainers
    cfg = _config("gan", [f"data.train_examples={digits}", "data.holdout_examples=500",
                          "gan.eval_samples=500"])
    return _chip_against_fp32(gan_trainers, cfg, "digits")


def lstm_gan_figures(chars: int, digits: int, threads: int = TORCH_THREADS) -> Dict[str, Any]:
    """Both, at `threads` torch threads (restored afterwards)."""
    from hil.torch.threads import torch_threads
    with torch_threads(threads):
        return {"lstm": lstm_figures(chars), "gan": gan_figures(digits),
                "torch_threads": threads}
