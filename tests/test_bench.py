"""scripts/bench (hil.benchmarks) in its tiny mode: every figure the README table and --json
promise is there.

Timings are not checked (the machine may be loaded); only that each figure was measured.
"""
from __future__ import annotations

import json
import math
import os

import pytest

from hil.benchmarks import report, suite
from hil.config import TorchExperimentConfig

# Keys that are null only when an optional part is skipped.
OPTIONAL = {"aihwkit_examples_per_s", "ratio_aihwkit"}


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_bench_tiny_writes_every_figure_and_leaves_the_readme(tmp_path, capsys):
    """A tiny run measures every figure; the README it is pointed at stays byte for byte
    (only a full run may rewrite the table, whose caption says "full mode")."""
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Performance\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    before = readme.read_text()
    out = tmp_path / "b.json"
    assert suite.main(["--tiny", "--readme", str(readme), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in suite.REQUIRED_KEYS:
        assert key in r, key
    for key in set(suite.REQUIRED_KEYS) - OPTIONAL - {"scaling_devices", "scaling_networks"}:
        assert _number(r[key]), (key, r[key])
    if r["aihwkit_examples_per_s"] is None:
        assert r["ratio_aihwkit"] is None and "aihwkit" in r["aihwkit_skip_reason"]
    else:
        assert _number(r["aihwkit_examples_per_s"]) and _number(r["ratio_aihwkit"])
    # the ratios to the loops that time training steps alone take the chip's steps alone
    assert r["ratio_aihwkit_reference"] == r["mp_steps_examples_per_s"] / 37.0
    assert r["ratio_fp32"] == r["mp_steps_examples_per_s"] / r["fp32_examples_per_s"]
    assert r["ratio_fp32_opt"] == r["mp_examples_per_s"] / r["fp32_opt_examples_per_s"]
    assert r["state_bytes_per_device"] <= 16
    assert r["emulator_identical"] and r["emulator_12mbaud_identical"]
    for table in ("scaling_devices", "scaling_networks"):
        assert r[table], table
        for row in r[table]:
            for key in ("devices", "mapped_devices", "step_us", "chip_state_bytes",
                        "traced_bytes"):
                assert _number(row[key]) and row[key] > 0, (table, key)
    try:
        import torch  # noqa: F401
    except ImportError:   # the hil.torch figures are skipped, saying why
        assert r["cnn"] is None and "pip install 'pcm-hil[torch]'" in r["torch_skip_reason"]
    else:
        assert sorted(r["cnn"]) == ["b1", "b32"]
        for row in r["cnn"].values():
            for key in ("examples_per_s", "fp32_examples_per_s", "ratio_fp32"):
                assert _number(row[key]) and row[key] > 0, key
            # every tool at every thread count the machine has cores for, each at its best
            counts = row["thread_counts"]
            assert counts == [t for t in (1, 2) if t <= (os.cpu_count() or 1)]
            assert sorted(row["by_threads"]) == [str(t) for t in counts]
            assert row["examples_per_s"] == max(
                m["examples_per_s"] for m in row["by_threads"].values())
            assert row["examples_per_s"] == \
                row["by_threads"][str(row["torch_threads"])]["examples_per_s"]
            assert row["fp32_examples_per_s"] == max(
                m["fp32_examples_per_s"] for m in row["by_threads"].values())
            # the shipped config's step per example at every batch size
            shipped = TorchExperimentConfig().optimizer
            assert row["learning_rate"] == pytest.approx(
                shipped.learning_rate * row["batch"] / shipped.batch_size)
        m = r["mlp_torch"]
        assert m["identical_steps"] == m["steps"] and m["first_different_step"] is None
        assert m["numpy_set_pulses"] == m["torch_set_pulses"] > 0
        _check_lstm_gan(r["lstm_gan"])
    captured = capsys.readouterr()
    assert "| figure | value | target | command |" in captured.out
    assert readme.read_text() == before
    assert "only a full run rewrites its table" in captured.err


def test_bench_only_torch_measures_the_hil_torch_figures_alone(tmp_path, capsys):
    """--only torch: the CNN against plain torch (and aihwkit, or why not) and the MLP
    through hil.torch, nothing else, and no README rewritten."""
    pytest.importorskip("torch", reason="the hil.torch figures need the torch extra")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Performance\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    before = readme.read_text()
    out = tmp_path / "t.json"
    assert suite.main(["--tiny", "--only", "torch", "--readme", str(readme),
                       "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert not set(suite.REQUIRED_KEYS) & set(r)   # the MLP suite did not run
    assert sorted(r["cnn"]) == ["b1", "b32"] and r["mlp_torch"]["steps"] == 100
    for row in r["cnn"].values():
        assert _number(row["examples_per_s"]) and _number(row["fp32_examples_per_s"])
        assert _number(row["aihwkit_examples_per_s"]) or row["aihwkit_skip_reason"]
    _check_lstm_gan(r["lstm_gan"])
    captured = capsys.readouterr()
    assert "batch 32 at lr 0.2, best of " in captured.out
    assert "character-level LSTM (configs/shakespeare_lstm.yaml)" in captured.out
    assert "`scripts/bench --only torch`" in captured.out
    assert readme.read_text() == before


def _check_lstm_gan(lg) -> None:
    """The tiny plan's LSTM epoch is its first 6,400 characters (32 streams of 200: 6,368
    predicted), the GAN's 128 digits (two batches); both sides timed, the chip pulsing."""
    assert lg["torch_threads"] == 1
    lstm, gan = lg["lstm"], lg["gan"]
    assert lstm["chars"] == 32 * 199 and gan["digits"] == 128
    for row, unit in ((lstm, "chars"), (gan, "digits")):
        for key in (f"chip_{unit}_per_s", f"fp32_{unit}_per_s", "ratio_fp32",
                    "set_pulses_per_step"):
            assert _number(row[key]) and row[key] > 0, key


def test_write_readme_markers(tmp_path):
    """First write replaces the table right under the heading; later writes only the
    marked region; everything else stays byte for byte."""
    p = tmp_path / "README.md"
    p.write_text("# x\n\n## Performance\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Next\n\ntext\n")
    report.write_readme(str(p), ["| figure | value |", "|---|---|", "| f | 1 |"])
    first = p.read_text()
    assert "| 1 | 2 |" not in first and "| f | 1 |" in first
    assert first.startswith("# x\n\n## Performance\n\n" + report.MARK_START)
    assert first.endswith(report.MARK_END + "\n\n## Next\n\ntext\n")
    report.write_readme(str(p), ["| figure | value |", "|---|---|", "| f | 2 |"])
    assert p.read_text() == first.replace("| f | 1 |", "| f | 2 |")


def test_median_interval_is_the_sign_tests_order_statistics():
    from hil.benchmarks.common import median_interval
    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) is None          # 5 values: none at 95 %
    # 6 values: min and max cover the median with 1 - 2/64 = 96.9 %
    assert median_interval([6.0, 1.0, 5.0, 2.0, 4.0, 3.0]) == (1.0, 6.0)
    # 10: the 2nd smallest and largest (97.9 %; the 3rd would be 89 %)
    assert median_interval([float(i) for i in range(10)]) == (1.0, 8.0)
    # 20: the 6th (95.9 %), as the sign-test tables give
    assert median_interval([float(i) for i in range(20)]) == (5.0, 14.0)
    assert median_interval([float(i) for i in range(10)], level=0.8) == (2.0, 7.0)
