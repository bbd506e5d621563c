"""`scripts/lstm_gan_runs` (hil.lstm_gan_study): per seed, the chip run and its fp32
counterpart on short slices, with their summaries, generated text and sample grids."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="the LSTM and GAN need the torch extra")

from hil import lstm_gan_study  # noqa: E402


def test_lstm_runs_write_the_summary_and_both_models_text(tmp_path, capsys):
    import torch
    threads = torch.get_num_threads()
    assert lstm_gan_study.main(["lstm", "--seeds", "0", "--holdout", "validation",
                                "--out", str(tmp_path), "--set", "training.epochs=1",
                                "--set", "data.train_chars=6400",
                                "--set", "data.holdout_chars=3200",
                                "--threads", str(3 - min(threads, 2))]) == 0
    # torch's thread count changes its float32 sums: the study puts back the caller's
    assert torch.get_num_threads() == threads
    s = json.loads((tmp_path / "lstm0.json").read_text())
    assert s["holdout"] == "validation" and s["config"]["data"]["train_chars"] == 6400
    assert s["holdout_bpc"] > 0 and s["baseline_holdout_bpc"] > 0 and s["set_pulses"] > 0
    text = (tmp_path / "lstm0-samples.txt").read_text()
    assert text.startswith("chip:\n") and "\n\nfp32:\n" in text
    assert "seed 0: chip" in capsys.readouterr().out


def test_gan_runs_over_two_seeds_write_grids_and_the_mean(tmp_path, capsys):
    assert lstm_gan_study.main(["gan", "--seeds", "0", "1", "--out", str(tmp_path),
                                "--set", "training.epochs=1",
                                "--set", "data.train_examples=128",
                                "--set", "data.holdout_examples=100",
                                "--set", "gan.eval_samples=100"]) == 0
    for seed in (0, 1):
        s = json.loads((tmp_path / f"gan{seed}.json").read_text())
        assert s["fid"] > 0 and s["baseline_fid"] > 0 and s["config"]["seed"] == seed
        for player in ("chip", "fp32"):
            assert (tmp_path / f"gan{seed}-{player}.png").read_bytes()[:4] == b"\x89PNG"
    assert "2 seeds: chip" in capsys.readouterr().out
