"""scripts/mlp_study on a tiny network: real `pcm-hil train` processes side by side, scored
on the validation split, their summaries gathered into one JSON and one table; an
interrupted or repeated study reuses the runs it has."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mlp_study"


def _script():
    loader = SourceFileLoader("mlp_study", str(SCRIPT))
    mod = module_from_spec(spec_from_loader("mlp_study", loader))
    loader.exec_module(mod)
    return mod


def _tune(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "tune", "--train", "120", "--epochs", "1",
         "--set", "network.layers=[784,8,10]", "--set", "optimizer.learning_rate=0.05,0.2",
         "--baseline", "--jobs", "2", "--nice", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tune-lr.json"
    r = _tune(out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout


def test_tune_runs_every_setting_on_the_validation_split(tuned):
    out, stdout = tuned
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["swept"]["optimizer.learning_rate"] for r in runs) == [0.05, 0.2]
    for r in runs:
        cfg = yaml.safe_load((out.with_suffix("") / r["id"] / "config.yaml").read_text())
        assert cfg["data"]["train_examples"] == 120 and cfg["data"]["validation_examples"] \
            == 10000
        assert cfg["optimizer"]["learning_rate"] == r["swept"]["optimizer.learning_rate"]
        assert cfg["network"]["layers"] == [784, 8, 10] and cfg["training"]["epochs"] == 1
        s = r["summary"]
        assert s["examples"] == 120 and 0 <= s["validation_accuracy"] <= 1
        assert s["baseline_validation_accuracy"] is not None
        # the table's row for this setting shows the run's validation accuracy
        row = next(line for line in stdout.splitlines()
                   if f"learning_rate={r['swept']['optimizer.learning_rate']}`" in line)
        assert f"| {100 * s['validation_accuracy']:.2f} |" in row
    # the two runs differ in what they were given
    assert runs[0]["summary"]["state_digest"] != runs[1]["summary"]["state_digest"]


def test_a_repeated_study_reuses_its_runs_and_table_prints_it_again(tuned):
    out, stdout = tuned
    again = _tune(out)
    assert again.returncode == 0, again.stderr
    runs = json.loads(out.read_text())["runs"]
    assert all(r.get("reused") for r in runs) and "done " not in again.stdout
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    printed = subprocess.run([sys.executable, str(SCRIPT), "table", str(out)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert printed.stdout.splitlines() == table


def test_the_final_table_reads_real_summaries(tuned):
    out, _ = tuned
    study = _script()
    runs = [dict(r, variant="main") for r in json.loads(out.read_text())["runs"]]
    lines = study.final_table(runs).splitlines()
    assert lines[0] == "| figure | main (2 seeds) |"
    acc = [100 * r["summary"]["test_accuracy"] for r in runs]
    mean, std = np.mean(acc), np.std(acc, ddof=1)
    assert lines[2] == f"| test accuracy, mixed precision (%) | {mean:,.2f} ± {std:,.2f} |"
    assert len(lines) == 2 + len(study.ROWS)
    assert study.fmt([]) == "–" and study.fmt([0.5], 100) == "50.00"
