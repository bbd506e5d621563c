"""`pcm-hil replay` (hil.commands.replay, hil.replay.summary, hil.replay.plots): a run log's
summary, as text and JSON, its figures, and one clear error per bad argument."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hil.cli import main as cli_main
from hil.run_log import RunLog


def test_summary_plots_and_bad_arguments(tiny_trained_log, tmp_path, capsys):
    trained = tiny_trained_log
    figs = str(tmp_path / "figs")
    assert cli_main(["replay", trained, "--plot", figs, "--steps", "0,mid,last",
                     "--devices", "3"]) == 0
    for name in ("accuracy", "conductance_hist", "pulses", "refreshes", "traces"):
        assert os.path.getsize(os.path.join(figs, f"{name}.png")) > 1000
    capsys.readouterr()
    assert cli_main(["replay", trained, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    with RunLog(trained) as log:
        summary = log.summary
        assert s["set_pulses"] == summary["set_pulses"]
        assert s["reset_pulses"] == summary["reset_pulses"]
        assert s["refreshes"] == summary["refreshes"]
        assert s["test_accuracy"] == summary["test_accuracy"]
        snaps = log.snapshots()["step"].tolist()
        assert snaps[0] == 0 and snaps[-1] == 300   # start and end (+ periodic, when taken)
        # the state reconstructed at the end equals the final snapshot
        assert np.array_equal(log.conductance(log.last_step), log.snapshot_g(-1))
    assert cli_main(["replay", trained, "--plot", figs, "--steps", "abc"]) == 1
    assert "--steps: 'abc' is not a step number" in capsys.readouterr().err
    assert cli_main(["replay", trained, "--plot", figs, "--steps", "99999"]) == 1
    assert "outside the logged steps" in capsys.readouterr().err
    assert cli_main(["replay", trained, "--plot", trained]) == 1
    assert "--plot: cannot create folder" in capsys.readouterr().err
    assert cli_main(["replay", str(tmp_path / "nope.h5")]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["replay", "--help"])
    assert e.value.code == 0
    assert "--verify" in capsys.readouterr().out
