"""scripts/bench in its tiny mode: every figure the README table and --json promise is there.

Timings are not checked (the machine may be loaded); only that each figure was measured.
"""
from __future__ import annotations

import json
import math
import os

from hil import bench

# Keys that are null only when an optional part is skipped.
OPTIONAL = {"aihwkit_examples_per_s", "ratio_aihwkit"}


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_bench_tiny_writes_every_figure(tmp_path, capsys):
    readme = os.path.join(bench.ROOT, "README.md")
    before = open(readme, encoding="utf-8").read() if os.path.exists(readme) else None
    out = tmp_path / "b.json"
    assert bench.main(["--tiny", "--no-readme", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in bench.REQUIRED_KEYS:
        assert key in r, key
    for key in set(bench.REQUIRED_KEYS) - OPTIONAL - {"scaling_devices", "scaling_networks"}:
        assert _number(r[key]), (key, r[key])
    if r["aihwkit_examples_per_s"] is None:
        assert r["ratio_aihwkit"] is None and "aihwkit" in r["aihwkit_skip_reason"]
    else:
        assert _number(r["aihwkit_examples_per_s"]) and _number(r["ratio_aihwkit"])
    assert r["ratio_aihwkit_reference"] == r["mp_examples_per_s"] / 37.0
    assert r["state_bytes_per_device"] <= 16
    assert r["emulator_identical"] and r["emulator_12mbaud_identical"]
    for table in ("scaling_devices", "scaling_networks"):
        assert r[table], table
        for row in r[table]:
            for key in ("devices", "mapped_devices", "step_us", "chip_state_bytes",
                        "traced_bytes"):
                assert _number(row[key]) and row[key] > 0, (table, key)
    assert "| figure | value | target | command |" in capsys.readouterr().out
    if before is not None:
        assert open(readme, encoding="utf-8").read() == before   # --no-readme


def test_write_readme_markers(tmp_path):
    """First write replaces the table right under the heading; later writes only the
    marked region; everything else stays byte for byte."""
    p = tmp_path / "README.md"
    p.write_text("# x\n\n## Performance\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Next\n\ntext\n")
    bench.write_readme(str(p), ["| figure | value |", "|---|---|", "| f | 1 |"])
    first = p.read_text()
    assert "| 1 | 2 |" not in first and "| f | 1 |" in first
    assert first.startswith("# x\n\n## Performance\n\n" + bench.MARK_START)
    assert first.endswith(bench.MARK_END + "\n\n## Next\n\ntext\n")
    bench.write_readme(str(p), ["| figure | value |", "|---|---|", "| f | 2 |"])
    assert p.read_text() == first.replace("| f | 1 |", "| f | 2 |")
