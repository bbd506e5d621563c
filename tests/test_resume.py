"""`pcm-hil train --resume`: an aborted or killed run, resumed from its log, ends exactly where
an uninterrupted run ends - same run-log digest, same summary, same chip - with no pulse
batch applied twice or missing from the log (invariants 1 and 2)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hil.backend_url import open_backend
from hil.config import load_config, with_overrides
from hil.replay.resume import resume_source
from hil.run_log import RunLog, RunLogWriter
from hil.training import run_experiment

KEYS = ("test_accuracy", "train_accuracy", "epochs", "examples", "steps", "set_pulses",
        "reset_pulses", "update_set_pulses", "refreshes", "program_commands", "read_commands",
        "devices_read", "state_digest")


#: A small network on a small chip, for tests of how runs end rather than what they compute;
#: its emulator takes SMALL_CHIP as options.
SMALL = ("network: {layers: [784, 16, 10], init_range: [0.2, 0.3]}\n"
         "chip: {rows: 128, cols: 256}\n")
SMALL_CHIP = ("--rows", "128", "--cols", "256")
#: Blind initial programming: one RESET and one SET command, so the requests of a run are
#: numbered as the tests below expect, and its first commit stays small.
BLIND = "network: {init_programming: blind}\n"
SMALL_BLIND = SMALL.replace("init_range: [0.2, 0.3]}", "init_range: [0.2, 0.3], "
                            "init_programming: blind}")


def _config(tmp_path, train=1500, epochs=1, flush=50, name="c.yaml", extra=""):
    path = tmp_path / name
    path.write_text(f"""name: rs
seed: 7
data: {{train_examples: {train}, validation_examples: 200, test_examples: 300}}
training: {{epochs: {epochs}, baseline: false}}
optimizer: {{refresh: {{period_steps: 40}}}}
log: {{flush_every_steps: {flush}, snapshot_every_steps: 400}}
""" + extra)
    return str(path)


def _reference(cfg_path, log_path, small_data, backend=None):
    """The uninterrupted run, in process (its config names `backend` like the CLI run's)."""
    cfg = with_overrides(load_config(cfg_path), backend=backend)
    summary = run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()),
                             RunLogWriter(log_path, cfg), data=small_data)
    return summary


def _train(cwd, *args):
    return subprocess.Popen([sys.executable, "-m", "hil.cli", "train", "--no-progress", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_started(proc, log_path, timeout_s=120.0):
    """Wait until the run log has begun (its journal exists): the chip is being used."""
    end = time.monotonic() + timeout_s
    while not os.path.exists(log_path + ".journal"):
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"train exited early ({proc.returncode}): {out}\n{err}")
        assert time.monotonic() < end, "the run never started"
        time.sleep(0.02)


def _wait_step(proc, log_path, step, timeout_s=120.0):
    """Wait until the run log has committed `step` (the run is live past it)."""
    _wait_started(proc, log_path, timeout_s)
    end = time.monotonic() + timeout_s
    while True:
        with RunLog(log_path) as lg:
            if lg.complete_step >= step:
                return
        assert proc.poll() is None, "the run ended first"
        assert time.monotonic() < end, f"step {step} never committed"
        time.sleep(0.05)


def _same_run(log_a, log_b):
    with RunLog(log_a) as a, RunLog(log_b) as b:
        assert a.status.status == b.status.status == "completed"
        assert a.digest() == b.digest()


def test_sigint_then_resume_equals_uninterrupted(tmp_path, small_data):
    cfg = _config(tmp_path)
    ref = _reference(cfg, str(tmp_path / "ref.h5"), small_data)
    run = str(tmp_path / "run.h5")
    p = _train(tmp_path, "--config", cfg, "--run", run, "--chip-state", str(tmp_path / "chip"))
    _wait_started(p, run)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    with RunLog(run) as old:
        assert old.status.status == "aborted"
        stopped = old.complete_step
    assert 0 < stopped < ref["steps"]
    p = _train(tmp_path, "--resume", run, "--summary-json", str(tmp_path / "s.json"))
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    assert "run.h5" in out and f"complete through step {stopped}" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    for k in KEYS:
        assert summary[k] == ref[k], k
    _same_run(str(tmp_path / "run-2.h5"), str(tmp_path / "ref.h5"))
    with RunLog(str(tmp_path / "run-2.h5")) as new:
        seg = new.provenance["resume"]["segments"]
        assert [s["status"] for s in seg] == ["aborted"]


def test_sigkill_on_sim_with_chip_state_resumes_exactly(tmp_path, small_data):
    """The in-process chip dies with the trainer; its state file, kept at the log's commits,
    brings chip and log back to the same command. Every resume names the run's first log:
    the newest segment is the one continued; a continued segment is never resumed again,
    and once the run has completed there is nothing to resume."""
    from hil.backend_url import open_backend
    from hil.replay.resume import ResumeError, plan_resume
    cfg = _config(tmp_path, train=1200)
    ref = _reference(cfg, str(tmp_path / "ref.h5"), small_data)
    chip = str(tmp_path / "chip")
    run = current = str(tmp_path / "run.h5")
    p = _train(tmp_path, "--config", cfg, "--run", run, "--chip-state", chip)
    for i, (target, wait) in enumerate(((300, 0.03), (700, 0.11))):
        _wait_step(p, current, target)
        time.sleep(wait)
        assert p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.communicate()
        p = _train(tmp_path, "--resume", run, "--summary-json", str(tmp_path / "s.json"))
        current = str(tmp_path / f"run-{i + 2}.h5")
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    assert "chip restored from" in out and f"{run} was continued by {tmp_path}/run-2.h5" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    for k in KEYS:
        assert summary[k] == ref[k], k
    _same_run(current, str(tmp_path / "ref.h5"))
    for given in (run, str(tmp_path / "run-2.h5")):
        p = _train(tmp_path, "--resume", given)
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and f"nothing to resume: the run completed in {current}" \
            in out, err
    with RunLog(run) as old, open_backend("sim://", load_config(cfg).sim_chip_spec()) as live:
        with pytest.raises(ResumeError, match=f"{run} was continued by {current}, the newest "
                                              "segment of the run"):
            plan_resume(old, live, chip)


def test_a_run_killed_before_it_began_starts_again_from_step_0(tmp_path, small_data):
    """Killed after its log was created, while its data was still loading: nothing reached
    the chip, so --resume starts the run again from step 0 - with the chip-state file and
    everything else its log's header names - into the next segment."""
    from hil.run_log import read_header
    cfg = _config(tmp_path, train=200)
    _reference(cfg, str(tmp_path / "ref.h5"), small_data)
    run = str(tmp_path / "run.h5")
    p = _train(tmp_path, "--config", cfg, "--run", run, "--chip-state", str(tmp_path / "c"))
    assert p.stdout.readline().startswith("run log:")   # the header is there
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert not read_header(run).began
    p = _train(tmp_path, "--resume", run)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    assert "holds nothing of its run (it was killed before its first command); starting the " \
           "run again from step 0" in out
    _same_run(str(tmp_path / "run-2.h5"), str(tmp_path / "ref.h5"))
    with RunLog(str(tmp_path / "run-2.h5")) as lg:
        assert lg.provenance["chip_state"] == str(tmp_path / "c")
        assert [s["status"] for s in lg.provenance["resume"]["segments"]] == \
            ["killed before it began"]


def test_journal_holds_reads_and_wire_seqs(tmp_path):
    """Every command after the last commit is journaled before it is sent, with its wire
    sequence number; its result rides on the next write."""
    from drivers.pulse import DEFAULT_SET
    from hil.run_log import read_journal
    from conftest import small_config
    w = RunLogWriter(str(tmp_path / "j.h5"), small_config(log={"flush_every_steps": 1000}))
    w.begin(config={}, provenance={}, layout={"layer0.plus": np.arange(4, dtype=np.uint32)})
    a = np.arange(3, dtype=np.uint32)
    w.before_program(1, a, np.full(3, 2), DEFAULT_SET, "update", wire_seq=41)
    w.on_program(1, a, np.full(3, 2), DEFAULT_SET, "update")
    w.before_read(1, a, "readback", wire_seq=42)
    w.on_read(1, a, np.array([1.5, 2.5, 3.5], np.float32), "readback")
    w.before_read(2, a[:2], "readback", wire_seq=43)      # killed here: no result
    cmds = read_journal(w.journal_path, committed_commands=0).commands
    assert [(c.kind, c.seq, c.wire_seq, c.done) for c in cmds] == \
        [("program", 0, 41, True), ("read", 1, 42, True), ("read", 2, 43, False)]
    assert np.array_equal(cmds[1].values, [1.5, 2.5, 3.5])
    assert read_journal(w.journal_path, committed_commands=2).commands[0].seq == 2
    w.finish("aborted")


def test_journal_of_a_combined_command(tmp_path, monkeypatch):
    """A PROGRAM_READ journals both halves under one wire seq before it is sent; its ack and
    values ride together on the next write. Killed in flight, the two records are recognised
    as one uncertain command (to be re-sent whole), not as a damaged journal."""
    from drivers.pulse import DEFAULT_SET
    from hil.replay.resume import _halves
    from hil.run_log import read_journal
    from conftest import small_config
    w = RunLogWriter(str(tmp_path / "j.h5"), small_config(log={"flush_every_steps": 1000}))
    w.begin(config={}, provenance={}, layout={"layer0.plus": np.arange(4, dtype=np.uint32)})
    a, n, v = np.arange(3, dtype=np.uint32), np.full(3, 2), np.array([1., 2., 3.], np.float32)
    w.before_program_read(1, a, n, DEFAULT_SET, "update", "readback", wire_seq=70)
    w.on_program(1, a, n, DEFAULT_SET, "update")
    w.on_read(1, a, v, "readback")
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(data) or real_write(fd, data))
    w.before_program_read(2, a[:2], n[:2], DEFAULT_SET, "update", "readback", wire_seq=71)
    assert len(writes) == 1   # both halves, and the previous command's results, in one write
    monkeypatch.undo()
    # killed here: sent, no result
    cmds = read_journal(w.journal_path, committed_commands=0).commands
    assert [(c.kind, c.seq, c.wire_seq, c.done) for c in cmds] == \
        [("program", 0, 70, True), ("read", 1, 70, True), ("program", 2, 71, False),
         ("read", 3, 71, False)]
    assert np.array_equal(cmds[1].values, v)
    assert _halves(cmds[2], cmds[3]) and not _halves(cmds[1], cmds[2])
    w.finish("aborted")


def _abort_at_step_30(cfg, run: str, data) -> None:
    """A run on sim:// (no chip state kept) stopped by its control after step 30."""
    from hil.run_control import RunAborted, RunControl

    class StopAt(RunControl):
        def check(self, step):
            if step >= 30:
                raise RunAborted(f"test stop at step {step}")

    with pytest.raises(RunAborted):
        run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()), RunLogWriter(run, cfg),
                       data=data, control=StopAt())


def test_resume_on_sim_without_chip_state_refuses(tmp_path, small_data, capsys):
    from hil.cli import main
    cfg_path = _config(tmp_path, train=200)
    cfg = load_config(cfg_path)
    run = str(tmp_path / "run.h5")
    _abort_at_step_30(cfg, run, small_data)
    assert main(["train", "--resume", run, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cannot resume" in err[0] and "--chip-state" in err[0] and "run.h5" in err[0]
    assert not os.path.exists(str(tmp_path / "run-2.h5"))   # nothing left behind
    # Options that would change the logged run are refused, naming the option.
    assert main(["train", "--resume", run, "--epochs", "3"]) == 1
    assert "--epochs" in capsys.readouterr().err


def test_a_log_of_another_arithmetic_is_not_resumed(tmp_path, small_data, capsys):
    """A resume re-runs the logged steps and must compute what the log holds: a log written
    before run logs recorded their arithmetic (machine-dependent rounding) is refused, with
    one error saying why, before a chip or a new log is touched."""
    from hil.cli import main
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run_log_fakes import set_arithmetic
    cfg = load_config(_config(tmp_path, train=200))
    run = str(tmp_path / "run.h5")
    _abort_at_step_30(cfg, run, small_data)
    set_arithmetic(run, None)
    assert main(["train", "--resume", run, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "run.h5" in err[0] and "before pcm-hil's arithmetic became portable" in err[0]
    assert "cannot be resumed" in err[0]
    assert not os.path.exists(str(tmp_path / "run-2.h5"))


def _emulator(tmp_path, *more):
    state, stats = str(tmp_path / "emu.state"), str(tmp_path / "emu.json")
    err = tmp_path / "emu.err"
    with open(err, "a") as log_file:   # a file, not a pipe: nobody reads it while serving
        p = subprocess.Popen([sys.executable, "-m", "hil.cli", "emulate", "--listen",
                              "127.0.0.1:0", "--seed", "7", "--state", state, "--stats-json",
                              stats, *more], stdout=subprocess.PIPE, stderr=log_file,
                             text=True)
    url = p.stdout.readline().strip()
    assert url.startswith("socket://"), err.read_text()
    return p, url, state, stats


def _stop(emu: subprocess.Popen) -> None:
    """SIGTERM (writes stats and state), SIGKILL if it does not go."""
    emu.send_signal(signal.SIGTERM)
    try:
        emu.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        emu.kill()
        emu.communicate()


def _kill_and_resume(tmp_path, small_data, n_kills, train, seed):
    """Train through the emulator, SIGKILL the trainer at random moments, resume each time;
    returns the number of kills that hit a running trainer."""
    rng = np.random.default_rng(seed)
    cfg = _config(tmp_path, train=train, flush=25)
    emu, url, state, stats = _emulator(tmp_path)
    p = None
    try:
        ref = _reference(cfg, str(tmp_path / "ref.h5"), small_data, backend=url)
        run = str(tmp_path / "run.h5")
        p = _train(tmp_path, "--config", cfg, "--backend", url, "--run", run)
        current, kills, resumes, notes = run, 0, 0, []
        reached = -1
        while True:
            _wait_started(p, current)
            if kills < n_kills:
                if kills % 3 != 2:
                    # Live: past where the last segment stopped, then anywhere in a step.
                    reached += int(rng.integers(5, 40))
                    _wait_step(p, current, reached)
                    time.sleep(float(rng.uniform(0.0, 0.05)))
                else:
                    # Anywhere, the fast-forward included.
                    time.sleep(float(rng.uniform(0.05, 1.2)))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    out, _ = p.communicate()
                    kills += 1
                    notes.append(out)
                    with RunLog(resume_source(current)) as lg:
                        reached = max(reached, lg.complete_step)
                    nxt = str(tmp_path / f"run-{resumes + 2}.h5")
                    p = _train(tmp_path, "--resume", current, "--backend", url,
                               "--run", nxt, "--summary-json", str(tmp_path / "s.json"))
                    current, resumes = nxt, resumes + 1
                    continue
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            notes.append(out)
            break
    finally:
        if p is not None and p.poll() is None:   # a failed assertion: leave no trainer behind
            p.kill()
            p.communicate()
        _stop(emu)
    print("".join(line for o in notes for line in o.splitlines(True)
                  if line.startswith(("resuming", "resumed:")) or "was killed" in line))
    summary = json.loads((tmp_path / "s.json").read_text())
    for k in KEYS:
        assert summary[k] == ref[k], k
    _same_run(current, str(tmp_path / "ref.h5"))
    # Pulses: the final log against what the emulator applied, by kind and device by device.
    emu_stats = json.loads(open(stats).read())
    print(f"kills {kills}, resumes {resumes}, repeats answered from the firmware's memory "
          f"{emu_stats['repeats_answered']}")
    with RunLog(current) as lg:
        ev = lg.pulse_events(columns=("address", "n_pulses", "kind"))
    n = ev["n_pulses"].astype(np.int64)
    assert int(n[ev["kind"] == 1].sum()) == emu_stats["pulses"]["set"]
    assert int(n[ev["kind"] == 2].sum()) == emu_stats["pulses"]["reset"]
    chip = np.load(state)
    per_device = np.bincount(ev["address"].astype(np.int64), n, minlength=chip["pulse_ev"].size)
    assert np.array_equal(per_device, chip["pulse_ev"].astype(np.int64))   # none doubled/lost
    return kills, resumes


def test_sigkill_through_emulator_resumes_exactly(tmp_path, small_data):
    kills, _ = _kill_and_resume(tmp_path, small_data, n_kills=3, train=500, seed=11)
    assert kills == 3


@pytest.mark.parametrize("crash_at", [3, 42, 43])
def test_run_failed_inside_a_command_resumes_exactly(tmp_path, small_data, crash_at):
    """The emulator executes request N, journals it, and dies before replying: the trainer's
    run fails inside that command, with its outcome unknown. After the emulator restarts on
    its state file, --resume re-sends the command under its wire sequence number and the
    firmware answers it from memory: applied once, logged once. With blind initial
    programming, request 3 is its PROGRAM; 42 and 43 are training steps (PROGRAM_READ)."""
    from drivers.errors import HilError
    from drivers.fpga import FpgaChip
    cfg_path = _config(tmp_path, train=200, flush=25, extra=BLIND)
    emu, url, state, stats = _emulator(tmp_path, "--crash-at", str(crash_at))
    cfg = with_overrides(load_config(cfg_path), backend=url)
    run = str(tmp_path / "run.h5")
    with pytest.raises(HilError):
        with FpgaChip(url, timeout_s=0.5, retries=1, reconnect_timeout_s=0.5) as chip:
            run_experiment(cfg, chip, RunLogWriter(run, cfg), data=small_data)
    emu.communicate(timeout=60)
    with RunLog(run) as lg:
        assert lg.status.status == "failed"
        last = lg.journal().last
        assert last is not None and not last.done and last.wire_seq >= 0
        # a PROGRAM_READ is journaled as a program and a read under one wire seq
        assert last.kind == ("program" if crash_at == 3 else "read")
    emu, url2, _, _ = _emulator(tmp_path)
    try:
        p = _train(tmp_path, "--resume", run, "--backend", url2,
                   "--summary-json", str(tmp_path / "s.json"))
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        assert "1 uncertain command(s) re-sent" in out
    finally:
        _stop(emu)
    assert json.loads(open(stats).read())["repeats_answered"] >= 1
    ref = _reference(cfg_path, str(tmp_path / "ref.h5"), small_data, backend=url)
    summary = json.loads((tmp_path / "s.json").read_text())
    for k in KEYS:
        assert summary[k] == ref[k], k
    _same_run(str(tmp_path / "run-2.h5"), str(tmp_path / "ref.h5"))
    with RunLog(str(tmp_path / "run-2.h5")) as lg:
        ev = lg.pulse_events(columns=("address", "n_pulses"))
    pulse_ev = np.load(state)["pulse_ev"].astype(np.int64)
    assert np.array_equal(np.bincount(ev["address"].astype(np.int64),
                                      ev["n_pulses"].astype(np.int64),
                                      minlength=pulse_ev.size), pulse_ev)
    what = "PROGRAM" if last.kind == "program" else "PROGRAM_READ"
    print(f"crash at request {crash_at}: uncertain {what} re-sent")


def test_a_command_cut_off_in_parts_resumes_only_under_the_batch_limit_it_went_out_under(
        tmp_path, small_data):
    """The station splits the RESET of every device into commands of at most
    safety.max_batch_devices; the emulator dies inside the second. A resume re-sends the cut
    command in the parts it went out in, the firmware answering those it executed from its
    memory; under a batch limit that splits it otherwise it could not tell which parts it had
    executed, so that resume is refused before anything is sent or a new log exists, and the
    run resumes under the limit it had."""
    import dataclasses

    from drivers.errors import HilError
    from hil.replay import ResumeError
    from hil.run_stack import RunRequest, open_run_stack
    from hil.station import load_station
    station = load_station(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "configs", "station_sim.yaml"))

    def limited(n):
        return dataclasses.replace(station, safety=dataclasses.replace(
            station.safety, max_batch_devices=n))

    cfg = load_config(_config(tmp_path, train=60, flush=25, extra=SMALL_BLIND))
    emu, url, state, stats = _emulator(tmp_path, *SMALL_CHIP, "--crash-at", "4")
    run = str(tmp_path / "run.h5")
    with pytest.raises(HilError):
        req = RunRequest(cfg, backend_url=url + "?timeout=0.5&retries=1&reconnect=0.5",
                         station=limited(10_000), log_path=run)
        with open_run_stack(req) as stack:
            run_experiment(cfg, stack.backend, stack.recorder, data=small_data,
                           provenance=stack.provenance)
    emu.communicate(timeout=60)
    with RunLog(run) as lg:
        devices = lg.n_devices                 # 25,460: three parts of at most 10,000
        assert lg.status.status == "failed"
    emu, url2, _, _ = _emulator(tmp_path, *SMALL_CHIP)
    try:
        with pytest.raises(ResumeError, match=rf"cut off in \({devices:,} devices\) went out "
                                              r"as 3 command\(s\) \(safety\.max_batch_devices "
                                              r"10,000\); under 5,000 it would go out as 6"):
            open_run_stack(RunRequest.resume(run, backend_url=url2, station=limited(5_000)))
        assert not os.path.exists(str(tmp_path / "run-2.h5"))
        again = RunRequest.resume(run, backend_url=url2, station=limited(9_000))   # 3 parts
        with open_run_stack(again) as stack:
            s = run_experiment(cfg, stack.backend, stack.recorder, data=small_data,
                               provenance=stack.provenance)
        assert s["steps"] == 60
    finally:
        _stop(emu)
    assert json.loads(open(stats).read())["repeats_answered"] >= 2   # parts 1 and 2
    with RunLog(again.log_path) as lg:
        ev = lg.pulse_events(columns=("address", "n_pulses"))
    pulse_ev = np.load(state)["pulse_ev"].astype(np.int64)
    assert np.array_equal(np.bincount(ev["address"].astype(np.int64),
                                      ev["n_pulses"].astype(np.int64),
                                      minlength=pulse_ev.size), pulse_ev)   # none twice


@pytest.mark.slow
def test_sigkill_ten_times_through_emulator(tmp_path, small_data):
    kills, _ = _kill_and_resume(tmp_path, small_data, n_kills=10, train=2000, seed=12)
    assert kills == 10


# --- the supervisor recipe (docs/run-log.md, "Supervising a run") --------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recipe() -> str:
    """The shell loop of docs/run-log.md, exactly as documented."""
    with open(os.path.join(ROOT, "docs", "run-log.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- supervisor:start -->")[1].split("<!-- supervisor:end -->")[0]
    return block.split("```sh\n")[1].split("```")[0]


def _trainer_of(shell: subprocess.Popen):
    """The `pcm-hil train` process the supervisor's shell runs now, or None."""
    try:
        with open(f"/proc/{shell.pid}/task/{shell.pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"pcm-hil" in f.read():
                    return pid
        except OSError:
            pass
    return None


def _supervise(tmp_path, small_data, kills, seed, train):
    """Run the documented supervisor loop through the emulator and SIGKILL its trainer at
    the moments `kills` names: 'first-second' (within a second of its start: before its log
    exists, or just after), 'header' (its log created, the run not yet begun), 'begun'
    (up to 2 s after its run began: fast-forwarding or live)."""
    rng = np.random.default_rng(seed)
    cfg = _config(tmp_path, train=train, flush=25)
    emu, url, state, stats = _emulator(tmp_path)
    run = str(tmp_path / "run.h5")
    script = tmp_path / "supervise.sh"
    script.write_text(_recipe())
    env = {**os.environ, "RUN": run, "CONFIG": cfg, "CHIP": url,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    out = open(tmp_path / "supervisor.out", "w")
    shell = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=out,
                             stderr=subprocess.STDOUT)
    hit = []
    try:
        _reference(cfg, str(tmp_path / "ref.h5"), small_data, backend=url)
        last = None
        for kind in kills:
            end = time.monotonic() + 300
            pid = None
            while pid is None or pid == last:        # the next trainer the loop starts
                assert shell.poll() is None, (tmp_path / "supervisor.out").read_text()
                assert time.monotonic() < end, "the supervisor started no trainer"
                pid = _trainer_of(shell)
                time.sleep(0.01)
            started = time.monotonic()
            before = set(os.listdir(tmp_path))
            if kind == "first-second":
                time.sleep(float(rng.uniform(0.0, 1.0)))
            elif kind == "header":   # its new log's header is there; its data still loading
                while not any(n.endswith(".h5") for n in set(os.listdir(tmp_path)) - before) \
                        and time.monotonic() - started < 120:
                    time.sleep(0.005)
            else:                    # its run has begun: fast-forwarding or live
                while not any(n.endswith(".h5.journal")
                              for n in set(os.listdir(tmp_path)) - before) \
                        and time.monotonic() - started < 120:
                    time.sleep(0.005)
                time.sleep(float(rng.uniform(0.0, 2.0)))
            try:
                os.kill(pid, signal.SIGKILL)
                hit.append((kind, round(time.monotonic() - started, 2)))
            except ProcessLookupError:
                pass
            last = pid
        assert shell.wait(timeout=600) == 0, (tmp_path / "supervisor.out").read_text()
    finally:
        if shell.poll() is None:
            shell.kill()
            pid = _trainer_of(shell)
            if pid:
                os.kill(pid, signal.SIGKILL)
            shell.wait()
        out.close()
        _stop(emu)
    from hil.replay.resume import newest_segment
    final = newest_segment(run)
    _same_run(final, str(tmp_path / "ref.h5"))
    emu_stats = json.loads(open(stats).read())
    with RunLog(final) as lg:
        ev = lg.pulse_events(columns=("address", "n_pulses", "kind"))
        segments = lg.provenance["resume"]["segments"] if "resume" in lg.provenance else []
    n = ev["n_pulses"].astype(np.int64)
    assert int(n[ev["kind"] == 1].sum()) == emu_stats["pulses"]["set"]
    assert int(n[ev["kind"] == 2].sum()) == emu_stats["pulses"]["reset"]
    pulse_ev = np.load(state)["pulse_ev"].astype(np.int64)
    assert np.array_equal(np.bincount(ev["address"].astype(np.int64), n,
                                      minlength=pulse_ev.size), pulse_ev)
    print(f"kills {hit}; final log {os.path.basename(final)} after {len(segments)} earlier "
          f"segment(s); repeats answered from the firmware's memory "
          f"{emu_stats['repeats_answered']}")
    return hit


def test_the_documented_supervisor_loop_finishes_a_run_through_sigkills(tmp_path,
                                                                       small_data):
    hit = _supervise(tmp_path, small_data, ["first-second", "header", "begun", "begun"],
                     seed=21, train=400)
    assert len(hit) >= 3


@pytest.mark.slow
def test_the_documented_supervisor_loop_through_many_sigkills(tmp_path, small_data):
    kinds = ["first-second", "header"] + ["begun"] * 6 + ["first-second", "header"] + \
        ["begun"] * 4
    hit = _supervise(tmp_path, small_data, kinds, seed=22, train=1200)
    assert len(hit) >= 12


def test_resuming_a_log_the_chip_has_moved_on_from_is_refused_naming_the_newest_segment(
        tmp_path):
    """r.h5 killed, resumed to completion into a log of another name (--run done.h5);
    `--resume r.h5` again, through the same emulator, would re-send r.h5's uncertain command
    and apply the rest of the run a second time. The chip's history is further than r.h5
    knows: refused before anything is sent, with one error naming the log, the segment that
    moved the chip on and how far it got, and no new log."""
    from drivers.fpga import FpgaChip
    cfg = _config(tmp_path, train=500, flush=25, extra=SMALL)
    emu, url, _, _ = _emulator(tmp_path, *SMALL_CHIP)
    try:
        run = str(tmp_path / "r.h5")
        done = str(tmp_path / "done.h5")
        p = _train(tmp_path, "--config", cfg, "--backend", url, "--run", run)
        _wait_step(p, run, 10)
        p.send_signal(signal.SIGKILL)
        p.communicate()
        p = _train(tmp_path, "--resume", run, "--backend", url, "--run", done)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        with FpgaChip(url, timeout_s=2.0) as chip:
            before = chip.history()
        again = subprocess.run([sys.executable, "-m", "hil.cli", "train", "--no-progress",
                                "--resume", run, "--backend", url], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 1
        err = again.stderr.strip().splitlines()
        assert len(err) == 1, again.stderr
        assert err[0].startswith("pcm-hil train: error: [HISTORY] the chip's history is "
                                 "further than run log r.h5 knows"), err[0]
        with RunLog(done) as lg:
            far = f"completed, complete through step {lg.complete_step}"
        assert f"r.h5 was continued by {done} (segment 2 of the run: {far}" in err[0], err[0]
        assert err[0].endswith("the run completed there, nothing is left to resume")
        print(err[0])
        assert not os.path.exists(str(tmp_path / "r-2.h5"))
        with FpgaChip(url, timeout_s=2.0) as chip:
            assert chip.history() == before      # nothing was sent
    finally:
        _stop(emu)
    with RunLog(done) as lg:
        rec = lg.provenance["chip_history"]
        with RunLog(run) as first:
            assert rec["start"] == first.provenance["chip_history"]["start"]
        assert rec["resumed_from"] == "r.h5" and rec["boot_id"] == before.boot_id
