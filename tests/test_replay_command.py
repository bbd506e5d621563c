"""`pcm-hil replay` (hil.commands.replay, hil.replay.summary, hil.replay.plots): a run log's
summary, as text and JSON, its figures, and one clear error per bad argument."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_log_fakes import fake_run, small_cfg  # noqa: E402

from hil.cli import main as cli_main  # noqa: E402
from hil.run_log import RunLog, RunLogWriter  # noqa: E402


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
        # the state digest the trainer reported when the run completed
        assert s["state_digest"] == summary["state_digest"] and len(s["state_digest"]) == 64
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


def test_a_closed_pipe_stops_replay_quietly(tiny_trained_log):
    """`pcm-hil replay RUN.h5 | head`: the reader has gone (here before replay writes
    anything); replay stops without a traceback, exit status 141 as for SIGPIPE."""
    import subprocess
    import sys
    r = subprocess.run(["bash", "-c", f"'{sys.executable}' -m hil.cli replay "
                        f"'{tiny_trained_log}' | true; echo \"rc=${{PIPESTATUS[0]}}\""],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "rc=141", r
    assert r.stderr == "", r.stderr


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_ctrl_c_during_verify_is_one_line(tiny_trained_log, inherited):
    """Also when started as a script's background job (`pcm-hil ... &`), which the shell
    starts with SIGINT ignored."""
    import signal
    import subprocess
    import sys

    def start() -> None:
        if inherited == "ignored":
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    p = subprocess.Popen([sys.executable, "-m", "hil.cli", "replay", tiny_trained_log,
                          "--verify", "--no-progress"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=start)
    while not p.stdout.readline().startswith("chip"):   # the summary's last line
        assert p.poll() is None
    p.send_signal(signal.SIGINT)                        # verifying now
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    assert err.strip() == "pcm-hil replay: interrupted (Ctrl-C)"


def test_a_ctrl_c_python_drops_in_a_weakref_callback_is_raised_at_the_next_check(
        monkeypatch, capsys):
    """Python drops an exception a signal handler raises while a weakref callback runs; the
    CI once saw a Ctrl-C during --verify lost that way (the run went on to exit 0). The
    handler remembers it, the next check raises it, and the dropped one is not printed."""
    import signal
    import threading
    import weakref

    from hil import run_control

    monkeypatch.setattr(run_control, "_interrupted", threading.Event())
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    previous = signal.getsignal(signal.SIGINT)
    run_control.install_interrupt_handler()
    try:
        class Held:
            pass

        def callback(_ref) -> None:
            os.kill(os.getpid(), signal.SIGINT)   # the handler runs inside this callback
            for _ in range(1000):
                pass

        held = Held()
        ref = weakref.ref(held, callback)
        del held                                  # the callback runs, its exception dropped
        assert ref() is None
        with pytest.raises(KeyboardInterrupt):
            run_control.raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "KeyboardInterrupt" not in capsys.readouterr().err


def test_summary_of_a_failed_run_with_events(tmp_path, capsys):
    """`pcm-hil replay --json` of a run that did not complete: its events are listed, and it
    has no state digest (only a completed run's final status record carries one)."""
    path = str(tmp_path / "failed.h5")
    w = RunLogWriter(path, small_cfg())

    def pause(step):
        if step == 7:
            w.on_event(step, "run_paused", {"monitor": "temp_c", "reading": 41.0})
            w.on_event(step, "run_resumed", {})
    fake_run(w, steps=12, per_step=pause, finish=False)
    w.finish("failed", "LinkError: timeout", {"state_digest": "not from a completed run"})
    assert cli_main(["replay", path, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["status"] == "failed" and s["state_digest"] is None
    assert s["events"] == [{"step": 7, "kind": "run_paused",
                            "detail": {"monitor": "temp_c", "reading": 41.0}},
                           {"step": 7, "kind": "run_resumed", "detail": {}}]
    assert cli_main(["replay", path]) == 0
    out = capsys.readouterr().out
    assert "events      2 (run_paused, run_resumed)" in out and "digest" not in out
