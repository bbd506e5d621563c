"""The energy estimate (hil.energy): the table and its sources, the estimate of a tiny real
run against a count made by hand, example by example, and `pcm-hil replay --energy`."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml

from drivers.errors import ConfigError
from hil.cli import main as cli_main
from hil.energy import REQUIRED_UNITS, EnergyTable, counts_from_log, estimate
from hil.run_log import RunLog

TINY = """\
name: energy-tiny
seed: 2
data: {train_examples: 20, validation_examples: 0, test_examples: 50}
network: {layers: [784, 4, 10]}
training: {epochs: 1, baseline: false}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("energy")
    (d / "tiny.yaml").write_text(TINY)
    run, summary = str(d / "tiny.h5"), d / "tiny.json"
    assert cli_main(["train", "--config", str(d / "tiny.yaml"), "--run", run, "--no-progress",
                     "--summary-json", str(summary)]) == 0
    return run, json.loads(summary.read_text())


def _table_doc():
    from importlib import resources
    return yaml.safe_load((resources.files("hil") / "energy_table.yaml").read_text())


def test_the_packaged_table_names_a_source_for_every_entry():
    t = EnergyTable.load()
    assert set(REQUIRED_UNITS) <= set(t.entries)
    for e in t.entries.values():
        assert len(e.source) > 20, e.name
    assert "Horowitz" in t.entries["fp32_mult"].source and t["fp32_mult"] == 3.7
    assert t["sram_read_64b_1mb"] == 100 and t["fp32_add"] == 0.9


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["entries"]["fp32_mult"].pop("source"), r"entries\.fp32_mult: has no source"),
    (lambda d: d["entries"]["fp32_add"].update(source=""), r"entries\.fp32_add: has no source"),
    (lambda d: d["entries"].pop("adc_bits"), r"entries\.adc_bits: missing"),
    (lambda d: d["entries"]["pcm_read_time"].update(unit="us"),
     r"entries\.pcm_read_time: unit 'us', expected 'ns'"),
    (lambda d: d["entries"]["fp32_add"].update(value="cheap"), r"entries\.fp32_add: value"),
    (lambda d: d.update(format="other"), r"format: not an energy table"),
])
def test_a_bad_table_is_refused_naming_the_entry(tmp_path, edit, match):
    doc = copy.deepcopy(_table_doc())
    edit(doc)
    p = tmp_path / "lab.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=match) as e:
        EnergyTable.load(p)
    assert str(p) in str(e.value)


def _hand_count(mnist, summary, t):
    """The estimate, counted example by example for the 784-4-10 network (docs/energy.md)."""
    pj = 1e-12
    add, mult = t["fp32_add"] * pj, t["fp32_mult"] * pj
    mac = add + mult
    exp, div = 10 * mac, 4 * mac
    word_w = 20 * 0.5 * pj       # 3,190 weights x 4 B: the 32 KB SRAM, half a 64-bit read
    word_a = 10 * 0.5 * pj       # the activations (790 words): the 8 KB SRAM
    adc = 2.2e-15 * 2 ** 8
    v, g, t_read = 0.2, summary["mean_conductance_us"] * 1e-6, 100e-9
    cell = v * v * g * t_read
    m = dict.fromkeys(["array", "dac", "adc", "outer", "chi", "shared", "act"], 0.0)
    dig = dict.fromkeys(["reads", "macs", "outer", "rmw"], 0.0)
    for x in mnist.train_x[:20]:
        a = int(np.count_nonzero(x))
        fwd = (a + 1) * 4 + 5 * 10       # layer 1 on its non-zero inputs and the bias
        bwd = 10 * 4                     # the error back through layer 2 (no bias row)
        m["array"] += 2 * (fwd + bwd) * cell
        m["dac"] += ((a + 1) + 5 + 10) * adc
        m["adc"] += (4 + 10 + 4) * adc
        m["outer"] += fwd * mult
        m["chi"] += fwd * (2 * word_w + 2 * add)
        m["shared"] += 14 * (exp + add + div) + 4 * (2 * mult + add) + 10 * add + 14 * mult
        m["act"] += 2 * word_a * ((a + 1) + 5)
        dig["reads"] += (fwd + bwd) * word_w
        dig["macs"] += (fwd + bwd) * mac
        dig["outer"] += fwd * mult
        dig["rmw"] += fwd * (2 * word_w + add)
    p = summary["pulses"]
    n_set = p["init_set"] + p["update_set"] + p["refresh_set"]
    n_reset = p["init_reset"] + p["refresh_reset"]
    m["set"] = n_set * 1.0 * 100e-6 * 50e-9          # 1 V, 100 µA, 50 ns
    m["reset"] = n_reset * 2.5 * 400e-6 * 50e-9      # 2.5 V, 400 µA, 50 ns
    m["reads"] = summary["devices_read"] * (cell + adc)
    return m, dig


def test_the_estimate_of_a_tiny_run_equals_a_count_by_hand(tiny_run, mnist):
    run, s = tiny_run
    t = EnergyTable.load()
    m, dig = _hand_count(mnist, s, t)
    e = s["energy"]
    parts = {k: v * 20 for k, v in e["mixed_precision_parts_j_per_image"].items()}
    names = {"array": "array weighted sums (V²·G·t)", "dac": "DAC conversions",
             "adc": "ADC conversions", "outer": "outer products",
             "chi": "chi read-modify-write", "shared": "activations, softmax, errors",
             "act": "activation memory", "set": "SET pulses", "reset": "RESET pulses",
             "reads": "device reads (V²·G·t and ADC)"}
    for k, name in names.items():
        assert parts[name] == pytest.approx(m[k], rel=1e-9), name
    dparts = {k: v * 20 for k, v in e["digital_fp32_parts_j_per_image"].items()}
    for k, name in (("reads", "weight reads for weighted sums"),
                    ("macs", "multiply-accumulates"), ("outer", "outer products"),
                    ("rmw", "weight read-modify-write")):
        assert dparts[name] == pytest.approx(dig[k], rel=1e-9), name
    assert e["ratio"] == pytest.approx(sum(dparts.values()) / sum(parts.values()))
    # the log alone gives the same counts, so the same estimate
    with RunLog(run) as log:
        again = estimate(counts_from_log(log), t).summary()
    assert again["mixed_precision_j_per_image"] == pytest.approx(
        e["mixed_precision_j_per_image"], rel=1e-9)
    assert again["ratio"] == pytest.approx(e["ratio"], rel=1e-9)


def test_replay_energy_prints_the_breakdown_and_plots_it(tiny_run, tmp_path, capsys):
    run, s = tiny_run
    assert cli_main(["replay", run, "--energy"]) == 0
    out = capsys.readouterr().out
    assert "energy per training image (20 images; table hil/energy_table.yaml)" in out
    assert "chi read-modify-write" in out and "weight read-modify-write" in out
    assert f"needs {s['energy']['ratio']:,.1f}x the energy" in out
    png = run[:-3] + "-energy.png"
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # a lab's own table: every energy doubled doubles every figure, the ratio stays
    doc = _table_doc()
    for k in ("fp32_add", "fp32_mult", "int32_add", "int8_add", "sram_read_64b_8kb",
              "sram_read_64b_32kb", "sram_read_64b_1mb", "dram_read_64b", "pcm_read_time",
              "pcm_set_current", "pcm_reset_current", "adc_walden_fom"):
        doc["entries"][k]["value"] *= 2
    lab = tmp_path / "lab.yaml"
    lab.write_text(yaml.safe_dump(doc))
    figs = tmp_path / "figs"
    assert cli_main(["replay", run, "--energy-table", str(lab), "--plot", str(figs)]) == 0
    out = capsys.readouterr().out
    assert f"table {lab}" in out and f"needs {s['energy']['ratio']:,.1f}x" in out
    assert (figs / "energy.png").stat().st_size > 5000
    del doc["entries"]["fp32_add"]["source"]
    lab.write_text(yaml.safe_dump(doc))
    assert cli_main(["replay", run, "--energy-table", str(lab)]) == 1
    assert "entries.fp32_add: has no source" in capsys.readouterr().err
