"""Acceptance of the wire path: training through the firmware emulator, over a real TCP
socket and a real pty, with a faulty link, and across emulator crashes and restarts, equals
training on the in-process simulated chip bit for bit."""
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from drivers.fpga import FpgaChip
from firmware_interface.protocol import Opcode
from hil.backend_url import open_backend
from hil.training import run_experiment
from sim_backend import EmulatorServer, FaultConfig, Firmware

from conftest import small_config

KEYS = ("test_accuracy", "train_accuracy", "set_pulses", "reset_pulses", "refreshes",
        "program_commands", "read_commands", "examples", "state_digest")


def _cfg():
    return small_config(seed=5, data={"train_examples": 400, "test_examples": 300},
                        optimizer={"refresh": {"period_steps": 40}})


@pytest.fixture(scope="module")
def in_process(small_data):
    cfg = _cfg()
    return run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()), data=small_data)


def _emulated(small_data, faults=None, timeout_s=5.0, cfg=None, **where):
    cfg = cfg or _cfg()
    chip = cfg.sim_chip_spec().build()
    server = EmulatorServer(Firmware(chip), faults=faults, **where).start()
    try:
        with FpgaChip(server.url, timeout_s=timeout_s, retries=20) as backend:
            summary = run_experiment(cfg, backend, data=small_data)
    finally:
        server.stop()
    return summary, server


@pytest.mark.parametrize("where", [{"listen": ("127.0.0.1", 0)}, {"pty": True}],
                         ids=["tcp", "pty"])
def test_training_through_emulator_matches_in_process(small_data, in_process, where):
    summary, _ = _emulated(small_data, **where)
    for k in KEYS:
        assert summary[k] == in_process[k], k
    assert [e["test_accuracy"] for e in summary["per_epoch"]] == \
        [e["test_accuracy"] for e in in_process["per_epoch"]]


def test_on_chip_matvec_through_emulator_matches_in_process(small_data):
    """matvec: chip sends every weighted sum over the wire as MATVEC line voltages: the
    emulated run equals the in-process one, currents and all."""
    cfg = small_config(seed=5, data={"train_examples": 150, "test_examples": 100},
                       training={"matvec": "chip"})
    ref = run_experiment(cfg, open_backend("sim://", cfg.sim_chip_spec()), data=small_data)
    summary, server = _emulated(small_data, cfg=cfg, listen=("127.0.0.1", 0))
    for k in KEYS + ("matvec_commands",):
        assert summary[k] == ref[k], k
    assert summary["matvec_commands"] == server.firmware.counters["by_opcode"]["MATVEC"] > 0


def test_training_through_faulty_link_matches_in_process(small_data, in_process):
    """1 % of frames corrupted, 0.5 % dropped, random delays, a disconnect every 50 commands:
    the run completes identically and the emulator applied every pulse exactly once."""
    faults = FaultConfig(corrupt=0.01, drop=0.005, delay_ms=2.0, disconnect_every=50, seed=4)
    summary, server = _emulated(small_data, faults=faults, timeout_s=0.3,
                                listen=("127.0.0.1", 0))
    for k in KEYS:
        assert summary[k] == in_process[k], k
    stats = server.stats()
    injected = stats["faults"]
    assert injected["corrupt_request"] + injected["corrupt_reply"] > 0
    assert injected["drop_request"] + injected["drop_reply"] > 0
    assert injected["disconnect"] > 0 and injected["delay"] > 0
    # what the emulator's chip applied equals what the host logged: nothing doubled or lost
    assert stats["pulses"] == {"set": in_process["set_pulses"],
                               "reset": in_process["reset_pulses"]}
    assert stats["repeats_answered"] > 0


# --- the emulator dies mid-run and comes back on the same port ---------------------------------
class EmulatorSupervisor:
    """`pcm-hil emulate --state FILE` as a subprocess; restarted on the same port whenever it
    exits, as an operator (or systemd) would restart crashed firmware.

    The first process binds port 0 and the port it got is reused by every restart (its
    listener sets SO_REUSEADDR, so connections of the dead process left in TIME_WAIT do not
    block the bind; a failed start is retried anyway)."""

    def __init__(self, tmp_path, cfg, first_extra=()) -> None:
        self.tmp_path = tmp_path
        self.state = str(tmp_path / "chip.npz")
        self.stats = str(tmp_path / "stats.json")
        self.args = ["--state", self.state, "--stats-json", self.stats,
                     "--seed", str(cfg.chip_seed), "--model", cfg.chip.model,
                     "--arrays", str(cfg.chip.arrays), "--rows", str(cfg.chip.rows),
                     "--cols", str(cfg.chip.cols)]
        self.exit_codes: list = []
        self._stop = threading.Event()
        self.proc, self.url = self._spawn("127.0.0.1:0", first_extra)
        assert self.proc is not None, self.log()
        self.port = int(self.url.rsplit(":", 1)[1])
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _spawn(self, listen: str, extra=()):
        err = open(self.tmp_path / "emulator.log", "a")
        proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "emulate", "--listen", listen,
                                 *self.args, *extra],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        err.close()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        url = proc.stdout.readline().strip() if ready else ""
        if not url:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            return None, ""
        return proc, url

    def _watch(self) -> None:
        while True:
            rc = self.proc.wait()
            if self._stop.is_set():
                return
            self.exit_codes.append(rc)
            self.proc.stdout.close()
            for _ in range(50):
                proc, _ = self._spawn(f"127.0.0.1:{self.port}")
                if proc is not None:
                    break
                time.sleep(0.2)
            else:
                return
            self.proc = proc

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return (self.tmp_path / "emulator.log").read_text()

    def stop(self) -> int:
        """SIGTERM the emulator (and one the watcher may be starting meanwhile)."""
        self._stop.set()
        while True:
            proc = self.proc
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            self._thread.join(timeout=15)
            if self.proc is proc:
                proc.stdout.close()
                return rc


class KillingLink(FpgaChip):
    """The production driver, plus a hook that signals the emulator right after the host has
    sent its first pulsing frame (PROGRAM or PROGRAM_READ) at or after frame number `at`
    (counting every frame sent)."""

    def __init__(self, url: str, supervisor: EmulatorSupervisor, at: int, sig=None,
                 **kw) -> None:
        self.supervisor, self.at, self.sig = supervisor, at, sig
        self.sent: list = []
        super().__init__(url, **kw)

    def send_frame(self, data: bytes) -> None:
        super().send_frame(data)
        self.sent.append(data[8])
        if self.sig is not None and len(self.sent) >= self.at and \
                data[8] in (Opcode.PROGRAM, Opcode.PROGRAM_READ):
            self.supervisor.signal(self.sig)
            self.sig = None


# Request 201 of this run (HELLO is 1) is a training step's PROGRAM_READ: the test checks it
# still is.
CRASH_AT = 201


@pytest.mark.parametrize("how", ["crash-after-execute", "sigkill", "sigterm"])
def test_emulator_restart_mid_run_matches_in_process(small_data, in_process, tmp_path, how):
    """The emulator dies partway through training and is restarted on the same port with the
    same --state; the driver reconnects and resends, and the run ends bit-identical to the
    in-process one: no pulse batch applied twice, none lost, no read noise drawn twice.

    crash-after-execute: the emulator SIGKILLs itself after executing and journaling a
    PROGRAM_READ, before its reply leaves (the retry must be answered from the restored memory,
    read values included).
    sigkill: the host SIGKILLs the emulator right after sending a PROGRAM_READ (the batch may or
    may not have been executed). sigterm: an orderly stop in the middle of the run."""
    cfg = _cfg()
    sup = EmulatorSupervisor(tmp_path, cfg,
                             ["--crash-at", str(CRASH_AT)] if how == "crash-after-execute"
                             else ())
    sig = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}.get(how)
    try:
        with KillingLink(sup.url, sup, CRASH_AT, sig, timeout_s=5.0, retries=5,
                         reconnect_timeout_s=60.0) as chip:
            summary = run_experiment(cfg, chip, data=small_data)
            reconnects = chip.link_counters["reconnects"]
            sent = chip.sent
    finally:
        final_rc = sup.stop()
    assert final_rc == 0, sup.log()
    expected_rc = {"crash-after-execute": -signal.SIGKILL, "sigkill": -signal.SIGKILL,
                   "sigterm": 0}[how]
    assert sup.exit_codes == [expected_rc], sup.log()
    assert reconnects >= 1
    assert sent[CRASH_AT - 1] == Opcode.PROGRAM_READ
    for k in KEYS:
        assert summary[k] == in_process[k], k
    assert [e["test_accuracy"] for e in summary["per_epoch"]] == \
        [e["test_accuracy"] for e in in_process["per_epoch"]]
    stats = json.loads(open(sup.stats).read())  # of the restarted emulator
    if how == "crash-after-execute":
        assert stats["repeats_answered"] == 1  # the lost ACK, resent from the journal


# --- one client at a time; a power-cycled chip (issue cases 5 and 6) ---------------------------
def _emulate(tmp_path, listen: str, *more):
    """`pcm-hil emulate` of test_resume's SMALL chip as a subprocess on `listen`; (process,
    url)."""
    from test_resume import SMALL_CHIP
    err = open(tmp_path / "emulator.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "emulate", "--listen", listen,
                             "--seed", "7", *SMALL_CHIP, *more], stdout=subprocess.PIPE,
                            stderr=err, text=True)
    err.close()
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    url = proc.stdout.readline().strip() if ready else ""
    assert url.startswith("socket://"), (tmp_path / "emulator.log").read_text()
    return proc, url


def _end(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


def test_a_second_trainer_is_refused_and_the_first_completes_exactly(tmp_path, small_data):
    """Two `pcm-hil train` on one emulator: the second is refused with one clear error while
    the first holds the chip (frozen with SIGSTOP, so its connection is open and idle),
    leaving no run log behind, and the first completes with the digest of a run that was alone on the chip."""
    from test_resume import (KEYS as RUN_KEYS, SMALL, _config, _reference, _same_run, _train,
                             _wait_step)
    cfg = _config(tmp_path, train=500, flush=25, extra=SMALL)
    stats = str(tmp_path / "stats.json")
    emu, url = _emulate(tmp_path, "127.0.0.1:0", "--stats-json", stats)
    first = None
    try:
        ref = _reference(cfg, str(tmp_path / "ref.h5"), small_data, backend=url)
        run = str(tmp_path / "a.h5")
        first = _train(tmp_path, "--config", cfg, "--backend", url, "--run", run,
                       "--summary-json", str(tmp_path / "a.json"))
        _wait_step(first, run, 5)
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run([sys.executable, "-m", "hil.cli", "train", "--no-progress",
                                     "--config", cfg, "--backend", url, "--run",
                                     str(tmp_path / "b.h5")],
                                    cwd=tmp_path, capture_output=True, text=True, timeout=300)
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 1
        err = second.stderr.strip().splitlines()
        assert len(err) == 1, second.stderr
        assert "the chip is in use by another client since" in err[0] and url in err[0]
        print(err[0])
        # Refused before its log was created: nothing left that would make the same --run
        # refuse ("file exists") once the chip is free.
        assert not [n for n in os.listdir(tmp_path) if n.startswith("b.h5")]
        out, errs = first.communicate(timeout=300)
        assert first.returncode == 0, errs
    finally:
        if first is not None and first.poll() is None:
            first.kill()
            first.communicate()
        _end(emu)
    summary = json.loads((tmp_path / "a.json").read_text())
    for k in RUN_KEYS:
        assert summary[k] == ref[k], k
    _same_run(run, str(tmp_path / "ref.h5"))
    doc = json.loads(open(stats).read())
    assert doc["firmware"]["nacks"] == {"IN_USE": 1}
    assert doc["pulses"] == {"set": ref["set_pulses"], "reset": ref["reset_pulses"]}


def test_an_emulator_power_cycled_mid_run_stops_the_run(tmp_path):
    """The emulator is killed mid-run and restarted without its state (a power-cycled chip)
    on the same port: the trainer's driver reconnects to another boot, and the run stops
    with one clear error, its log marked failed; the fresh chip gets nothing but the HELLO."""
    from hil.run_log import RunLog
    from test_resume import SMALL, _config, _train, _wait_step
    cfg = _config(tmp_path, train=1500, flush=25, extra=SMALL)
    emu, url = _emulate(tmp_path, "127.0.0.1:0")
    run = str(tmp_path / "r.h5")
    p = _train(tmp_path, "--config", cfg, "--backend", url, "--run", run)
    stats = str(tmp_path / "stats-2.json")
    fresh = None
    try:
        _wait_step(p, run, 5)
        p.send_signal(signal.SIGSTOP)   # the power cycle happens between two of its commands
        emu.kill()
        _end(emu)
        fresh, _ = _emulate(tmp_path, url.rsplit("/", 1)[1], "--stats-json", stats)
        p.send_signal(signal.SIGCONT)
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        if fresh is not None:
            _end(fresh)
    assert p.returncode == 1 and "Traceback" not in err
    print(err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("pcm-hil train: error: [HELLO] after reconnecting to " + url)
    assert "another boot" in last and "power-cycled" in last
    with RunLog(run) as lg:
        assert lg.status.status == "failed" and "another boot" in lg.status.reason
    doc = json.loads(open(stats).read())
    assert doc["firmware"]["by_opcode"] == {"HELLO": 1}
    assert doc["pulses"] == {"set": 0, "reset": 0}


# --- the run log's file system refuses to take more -------------------------------------------
def _run_until_the_disk_refuses(tmp_path, log, preexec=None):
    """Train through the emulator into `log` until its file system refuses; returns the
    trainer's result and whether the chip was left idle (its safe state), asked afterwards."""
    from drivers.fpga import FpgaChip
    from test_resume import SMALL_BLIND, SMALL_CHIP, _config, _emulator, _stop
    # blind initial programming: the first commit must fit in what the tests leave free
    cfg = _config(tmp_path, train=3000, flush=50, extra=SMALL_BLIND)
    emu, url, _, _ = _emulator(tmp_path, *SMALL_CHIP)
    try:
        r = subprocess.run([sys.executable, "-m", "hil.cli", "train", "--no-progress",
                            "--config", cfg, "--backend", url, "--run", str(log)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           preexec_fn=preexec)
        with FpgaChip(url, timeout_s=2.0) as chip:
            idle = chip.status().idle
    finally:
        _stop(emu)
    return r, idle


def test_a_full_disk_ends_the_run_safe_with_one_error_and_the_log_readable(tmp_path,
                                                                          small_disk):
    """The log's own file system (a tmpfs), nearly full: the run stops before a commit the
    disk may not hold, with one error naming the free space; the chip is left in its safe
    state, and the log reads as failed, with that reason, through its last commit."""
    import os
    from hil.run_log import RunLog
    from hil.run_log.writer import DISK_MARGIN
    st = os.statvfs(small_disk)
    free = st.f_bavail * st.f_frsize
    with open(small_disk / "ballast", "wb") as f:   # leave the margin and 2 MiB
        f.write(b"\0" * (free - DISK_MARGIN - (2 << 20)))
    log = small_disk / "r.h5"
    r, idle = _run_until_the_disk_refuses(tmp_path, log)
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "the disk holding the run log has" in err[0] and \
        "the run stops here" in err[0], r.stderr
    print(err[0])
    assert idle
    with RunLog(str(log)) as lg:
        assert lg.status.status == "failed" and "MiB free" in lg.status.reason
        assert 0 < lg.complete_step < 3000
        lg.pulse_events()                       # every committed table reads


def test_a_write_the_file_system_refuses_ends_the_run_safe_and_says_how_to_read_it(tmp_path):
    """A write refused mid-commit (a file-size limit, RLIMIT_FSIZE: the same refusal a full
    disk gives a write the free-space check did not foresee): no crash, one error that says
    how to make the log readable to its last commit, the chip safe, and - that done - the log
    opens, its journal kept for --resume."""
    import os
    import resource
    from hil.run_log import RunLog
    log = tmp_path / "r.h5"
    limit = 700 << 10

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r, idle = _run_until_the_disk_refuses(tmp_path, log, small_files)
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot write the run log (File too large)" in err[0], r.stderr
    print(err[0])
    assert "Traceback" not in r.stderr and idle
    size = int(err[0].split("truncate -s ")[1].split()[0])
    os.truncate(log, size)                      # as the message says
    with RunLog(str(log)) as lg:
        assert lg.status.status == "running"    # its last commit: the status never got in
        assert lg.complete_step > 0
    assert os.path.exists(str(log) + ".journal")
