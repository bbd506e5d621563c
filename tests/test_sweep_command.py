"""`pcm-hil sweep`: its help, its dry run, and one clear error for a bad sweep or argument,
before any cluster starts."""
from __future__ import annotations

import pytest

from hil.cli import main
from hil.sweep.points import expand
from hil.sweep.spec import load_sweep
from hil.sweep.store import SweepStore
from sweep_files import write_sweep


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--resume", "--retry-failed", "--address", "--cpus", "--cpus-per-point",
                "--max-parallel", "--max-retries", "--dry-run", "--report", "--output",
                "--no-progress", "docs/sweeps.md"):
        assert opt in out


def test_a_dry_run_lists_the_points_and_runs_nothing(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"optimizer.refresh.high_us": [8.0, 9.0]},
                       seeds=[0, 1, 2])
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "grid search, 6 points, 2 settings" in out
    assert out.count("high_us=9, seed ") == 3
    assert not (tmp_path / "out").exists()


def test_a_bad_sweep_file_is_one_error_naming_the_key(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"optimizer.lerning_rate": [0.1]})
    assert main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pcm-hil sweep: error: ")
    assert "grid.optimizer.lerning_rate: not a key of the experiment config" in err


@pytest.mark.parametrize("args, expected", [
    (["--retry-failed"], "--retry-failed: only with --resume"),
    (["--address", "127.0.0.1:6379", "--cpus", "2"], "--cpus: sizes only the cluster"),
    (["--report"], "--report: "),
    (["--dry-run", "--report"], "--dry-run: cannot be combined with --report"),
])
def test_a_bad_combination_of_options_is_named(tmp_path, capsys, args, expected):
    path = write_sweep(tmp_path, grid={"optimizer.epsilon_us": [1.0]})
    assert main(["sweep", str(path), *args]) == 1
    assert expected in capsys.readouterr().err


def test_an_existing_sweep_is_not_started_again_without_resume(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"optimizer.epsilon_us": [1.0]})
    sweep = load_sweep(path)
    SweepStore(sweep.output).prepare(sweep, expand(sweep), resume=False)
    assert main(["sweep", str(path)]) == 1
    assert "already holds a sweep; continue it with --resume" in capsys.readouterr().err
