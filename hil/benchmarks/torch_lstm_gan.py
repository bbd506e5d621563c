"""The seed's LSTM and GAN: training throughput on the in-process simulated chip against the
same network in plain torch fp32, in the same run.

Each side trains one epoch of the shipped config (configs/shakespeare_lstm.yaml,
configs/mnist_gan.yaml) cut to its first characters or digits, from the same initial weights,
on the same windows or digits and latents, with the same plain SGD: the chip through the
mixed-precision core (hil.char_lstm_experiment, hil.gan_experiment), fp32 through their fp32
counterparts. Both sides' epochs end with the same small scoring (3,200 holdout characters;
500 generated digits), so that is inside both times; the chip's one-off initial programming
is not. One torch thread on both sides (hil.benchmarks.torch_cnn explains why).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List

from hil.benchmarks.torch_cnn import TORCH_THREADS
from hil.lstm_gan_study import CONFIGS, with_settings

#: The checkout the shipped configs are read from.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(kind: str, settings: List[str]) -> Any:
    """The shipped config of `kind` ("lstm", "gan"), one epoch, no fp32 run of its own."""
    return with_settings(os.path.join(REPO, CONFIGS[kind]),
                         ["training.epochs=1", "training.baseline=false", *settings], "test", 0)


def _timed(train_epoch: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    train_epoch(*args)
    return time.perf_counter() - t0


def lstm_figures(chars: int) -> Dict[str, Any]:
    """Characters per second of the character-level LSTM over its first `chars` training
    characters, chip and fp32."""
    from hil.char_lstm_experiment import ChipLstmTrainer, LstmBaseline, TextData
    cfg = _config("lstm", [f"data.train_chars={chars}", "data.holdout_chars=3200"])
    data = TextData.load(cfg.data.holdout)
    chip = ChipLstmTrainer(cfg, cfg.sim_chip_spec().build())
    chip.initialize()
    chip_s = _timed(chip.train_epoch, data, 0)
    n = chip.examples
    fp32_s = _timed(LstmBaseline(cfg).train_epoch, data, 0)
    return {"characters": n, "chip_chars_per_s": n / chip_s, "fp32_chars_per_s": n / fp32_s,
            "ratio_fp32": fp32_s / chip_s,
            "set_pulses_per_step": chip.io.counters.set_pulses / max(chip.step, 1)}


def gan_figures(digits: int) -> Dict[str, Any]:
    """Real digits per second of the MLP GAN (a discriminator and a generator step per batch)
    over its first `digits` training digits, chip and fp32."""
    from hil.gan_experiment import GanBaseline, gan_trainers
    cfg = _config("gan", [f"data.train_examples={digits}", "data.holdout_examples=500",
                          "gan.eval_samples=500"])
    chip, _, data = gan_trainers(cfg, cfg.sim_chip_spec().build(), None, None)
    chip.initialize()
    chip_s = _timed(chip.train_epoch, data, 0)
    n = chip.examples
    fp32_s = _timed(GanBaseline(cfg).train_epoch, data, 0)
    return {"digits": n, "chip_digits_per_s": n / chip_s, "fp32_digits_per_s": n / fp32_s,
            "ratio_fp32": fp32_s / chip_s,
            "set_pulses_per_step": chip.io.counters.set_pulses / max(chip.step, 1)}


def lstm_gan_figures(chars: int, digits: int, threads: int = TORCH_THREADS) -> Dict[str, Any]:
    """Both, at `threads` torch threads (restored afterwards)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {"lstm": lstm_figures(chars), "gan": gan_figures(digits),
                "torch_threads": threads}
    finally:
        torch.set_num_threads(before)
