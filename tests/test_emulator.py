"""The firmware emulator: sequence-number memory, state file across restarts, link model,
counters, and the `pcm-hil emulate` command run as a real subprocess (TCP and pty)."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from drivers.fpga import FpgaChip
from drivers.geometry import Geometry
from drivers.pulse import PulseSpec
from firmware_interface.frame import FrameDecoder, encode_frame
from firmware_interface.messages import (Hello, InfoReply, Nack, ProgramAck, ProgramReadReply,
                                         ProgramReadRequest, ProgramRequest, ReadRequest,
                                         StatusRequest, decode_message)
from firmware_interface.protocol import Capability, NackCode, PulseCode
from sim_backend.emulator import EmulatorServer, FaultConfig, LinkModel, parse_listen
from sim_backend.firmware import Firmware
from sim_backend.pcm_model import PcmModel
from sim_backend.sim_chip import SimulatedChip

GEO = Geometry(1, 32, 32)
SEED = 5


def make_chip(seed: int = SEED) -> SimulatedChip:
    return SimulatedChip(PcmModel.preset("jap"), GEO, seed=seed)


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def test_program_read_is_program_then_read_and_remembered():
    """PROGRAM_READ = PROGRAM then READ of the same devices on the chip (same pulses, values,
    clock); a repeat is answered from memory; a firmware without the capability refuses it
    and touches nothing."""
    addr, n = np.array([3, 17, 900], np.uint32), np.array([2, 0, 1], np.uint8)
    req = ProgramReadRequest(PulseCode.SET, 1_000_000, 50_000, addr, n)
    fw, ref = Firmware(make_chip()), make_chip()
    first = fw.handle(frame_of(req, 41))
    reply = reply_of(first)
    assert isinstance(reply, ProgramReadReply) and (reply.devices, reply.pulses) == (3, 3)
    ref.program(addr, n, PulseSpec.set())
    want = ref.read(addr)
    assert np.array_equal(bits(decode_codes(fw, reply.codes)), bits(want))
    assert fw.chip.counters == ref.counters and fw.chip.clock_s == ref.clock_s
    assert fw.handle(frame_of(req, 41)) == first and fw.chip.counters == ref.counters
    old = Firmware(make_chip(), capabilities=frozenset(make_chip().info().capabilities))
    before = dict(old.chip.counters)
    nack = reply_of(old.handle(frame_of(req, 42)))
    assert isinstance(nack, Nack) and nack.code is NackCode.UNSUPPORTED
    assert old.chip.counters == before


def decode_codes(fw: Firmware, codes: np.ndarray) -> np.ndarray:
    from firmware_interface.adc import adc_dequantise
    return adc_dequantise(codes, fw.full_scale_us)


def frame_of(msg, seq: int):
    (frame,) = FrameDecoder().feed(msg.frame(seq))
    return frame


def reply_of(data: bytes):
    (frame,) = FrameDecoder().feed(data)
    return decode_message(frame)


PROGRAM = ProgramRequest(PulseCode.SET, 1_000_000, 50_000, np.arange(0, 1024, 3),
                         np.full(342, 2))


# --- the firmware engine ----------------------------------------------------------------------
def test_repeated_sequence_number_is_answered_from_memory():
    fw = Firmware(make_chip())
    first = fw.handle(frame_of(PROGRAM, 41))
    assert isinstance(reply_of(first), ProgramAck)
    pulses = fw.chip.counters["set_pulses"]
    again = fw.handle(frame_of(PROGRAM, 41))
    assert again == first and fw.executed_fresh is False
    assert fw.chip.counters["set_pulses"] == pulses == 684
    assert fw.counters["repeats_answered"] == 1 and fw.counters["commands_executed"] == 1
    # The same number with a different request is a new command (a new host session).
    other = ProgramRequest(PulseCode.SET, 1_000_000, 50_000, np.array([1]), np.array([1]))
    fw.handle(frame_of(other, 41))
    assert fw.chip.counters["set_pulses"] == pulses + 1


def test_repeated_read_returns_the_same_values_without_a_new_draw():
    fw = Firmware(make_chip())
    req = frame_of(ReadRequest(np.arange(100)), 7)
    a = fw.handle(req)
    clock = fw.chip.clock_s
    assert fw.handle(req) == a and fw.chip.clock_s == clock
    ref = make_chip()
    assert np.array_equal(reply_of(a).codes,
                          np.rint(ref.read(np.arange(100)) / (25.0 / 65535)).astype(np.uint16))


def test_queries_are_not_remembered_and_memory_is_bounded():
    fw = Firmware(make_chip(), memory_depth=2)
    fw.handle(frame_of(Hello(), 1))
    fw.handle(frame_of(StatusRequest(), 2))
    assert not fw.memory
    for seq in (10, 11, 12):
        fw.handle(frame_of(ReadRequest(np.arange(4)), seq))
    assert list(fw.memory) == [11, 12]
    fw.handle(frame_of(ReadRequest(np.arange(4)), 10))  # forgotten: executed again
    assert fw.counters["by_opcode"]["READ"] == 4


def test_nacks_are_not_remembered_and_change_nothing():
    fw = Firmware(make_chip())
    bad = ProgramRequest(PulseCode.SET, 2_500_000, 50_000, np.array([1]), np.array([1]))
    for _ in range(2):
        n = reply_of(fw.handle(frame_of(bad, 3)))
        assert isinstance(n, Nack) and n.code is NackCode.SAFETY_LIMIT
    assert fw.counters["nacks"] == {"SAFETY_LIMIT": 2} and not fw.memory
    assert fw.chip.counters["commands"] == 0


def test_hello_describes_the_chip():
    fw = Firmware(make_chip(), memory_depth=8, max_payload=4096)
    info = reply_of(fw.handle(frame_of(Hello(), 1)))
    assert isinstance(info, InfoReply)
    assert (info.arrays, info.rows, info.cols) == (1, 32, 32)
    assert info.seq_memory == 8 and info.max_payload == 4096 and info.adc_bits == 16
    assert dict(info.hard_limits)["max_pulses_per_device"] == 255


# --- one client at a time; the boot and its history (protocol 1.3) ---------------------------
def test_one_session_at_a_time_and_its_own_host_takes_it_over():
    """While link a's session is active, link b is refused IN_USE (a HELLO as much as a
    PROGRAM, which touches nothing) - unless its HELLO names a's session: the same host,
    reconnecting, takes its session over. A session ends with its link."""
    fw = Firmware(make_chip())
    info = reply_of(fw.handle(frame_of(Hello(), 1), link="10.0.0.1:5000"))
    assert isinstance(info, InfoReply) and info.session and info.boot_id == fw.boot_id
    for msg in (Hello(), PROGRAM, Hello(info.session ^ 1)):
        nack = reply_of(fw.handle(frame_of(msg, 2), link="10.0.0.2:6000"))
        assert isinstance(nack, Nack) and nack.code is NackCode.IN_USE
        assert "in use by another client since" in nack.message
        assert "10.0.0.1:5000" in nack.message and f"{info.session:x}" not in nack.message
    assert fw.chip.counters["commands"] == 0 and fw.refused_client
    again = reply_of(fw.handle(frame_of(Hello(info.session), 3), link="10.0.0.1:5001"))
    assert isinstance(again, InfoReply) and again.session == info.session
    assert isinstance(reply_of(fw.handle(frame_of(PROGRAM, 4), link="10.0.0.1:5001")), ProgramAck)
    assert reply_of(fw.handle(frame_of(PROGRAM, 5), link="10.0.0.1:5000")).code is NackCode.IN_USE
    fw.link_closed("10.0.0.1:5001")
    other = reply_of(fw.handle(frame_of(Hello(), 6), link="10.0.0.2:6000"))
    assert isinstance(other, InfoReply) and other.session != info.session


def history_of(fw: Firmware):
    from firmware_interface.messages import HistoryReply, HistoryRequest
    reply = reply_of(fw.handle(frame_of(HistoryRequest(), 0xFFFF)))
    assert isinstance(reply, HistoryReply)
    return reply


def test_history_counts_each_state_changing_command_once():
    """READ, PROGRAM, PROGRAM_READ, MATVEC and ADVANCE_CLOCK count; repeats answered from
    memory, NACKs and queries do not. The boot is INFO's."""
    from firmware_interface.messages import AdvanceClockRequest, MatvecRequest, SafeStateRequest
    fw = Firmware(make_chip())
    pr = ProgramReadRequest(PulseCode.SET, 1_000_000, 50_000, np.array([3, 9]), np.array([1, 2]))
    bad = ProgramRequest(PulseCode.SET, 2_500_000, 50_000, np.array([1]), np.array([1]))
    for seq, msg in enumerate([Hello(), PROGRAM, PROGRAM, ReadRequest(np.arange(8)), pr, bad,
                               MatvecRequest(np.arange(64).reshape(2, 32), np.ones(32) * 0.1),
                               AdvanceClockRequest(2.0), SafeStateRequest(), StatusRequest()],
                              start=10):
        fw.handle(frame_of(msg, seq if seq != 12 else 11))   # seq 11 twice: a retry
    h = history_of(fw)
    assert (h.reads, h.programs, h.program_reads, h.matvecs, h.clock_advances) == (1, 1, 1, 1, 1)
    assert h.commands == 5 and (h.last_seq, h.last_opcode) == (17, 0x50)
    assert h.boot_id == reply_of(fw.handle(frame_of(Hello(), 30))).boot_id == fw.boot_id
    assert Firmware(make_chip()).boot_id != fw.boot_id   # another power-up


def test_boot_and_history_survive_a_restart_with_the_state_file(tmp_path):
    """The state file keeps the boot (its memory survives) and the history, through a crash,
    a compaction and a crash between snapshot and journal restart; without it, a restart is a
    power cycle: another boot, history from 0."""
    path = str(tmp_path / "chip.npz")
    fw = Firmware(make_chip(), state_path=path, compact_records=3)
    for seq in range(1, 6):
        fw.handle(frame_of(ReadRequest(np.arange(seq)), seq))
    fw.handle(frame_of(PROGRAM, 6))
    want, boot = history_of(fw), fw.boot_id
    del fw   # crash
    fw2 = Firmware(make_chip(), state_path=path)
    assert fw2.boot_id == boot and history_of(fw2) == want
    fw2.handle(frame_of(PROGRAM, 7))
    old_journal = open(path + ".journal", "rb").read()
    fw2.compact()
    with open(path + ".journal", "wb") as f:   # "the journal restart never happened"
        f.write(old_journal)
    del fw2
    fw3 = Firmware(make_chip(), state_path=path)
    h = history_of(fw3)
    assert fw3.boot_id == boot and (h.commands, h.programs, h.last_seq) == (7, 2, 7)
    assert Firmware(make_chip()).boot_id != boot
    assert history_of(Firmware(make_chip())).commands == 0


def test_firmware_before_1_3_has_no_sessions_boot_or_history():
    """An emulated 1.2 firmware, as a host finds one in the field: INFO without boot and
    session, no HISTORY capability (HISTORY refused UNSUPPORTED), a HELLO naming a session
    refused BAD_LENGTH, and a second client simply served."""
    from firmware_interface.messages import HistoryRequest
    fw = Firmware(make_chip(), protocol_version=(1, 2))
    info = reply_of(fw.handle(frame_of(Hello(), 1), link="a"))
    assert info.boot_id is None and info.session is None
    assert not info.capability_flags & Capability.HISTORY
    assert reply_of(fw.handle(frame_of(HistoryRequest(), 2), link="a")).code is \
        NackCode.UNSUPPORTED
    assert reply_of(fw.handle(frame_of(Hello(7), 3), link="a")).code is NackCode.BAD_LENGTH
    assert isinstance(reply_of(fw.handle(frame_of(PROGRAM, 4), link="b")), ProgramAck)


def test_server_refuses_a_second_client_and_frees_the_chip_when_the_first_goes():
    """Over TCP: a second driver is refused with one clear error and its connection closed;
    the first carries on untouched; once the first closes, a new client gets the chip."""
    from drivers.errors import ChipInUseError
    server = EmulatorServer(Firmware(make_chip()), listen=("127.0.0.1", 0)).start()
    try:
        ref = make_chip()
        with FpgaChip(server.url, timeout_s=1.0) as first:
            first.program(np.arange(50), np.full(50, 2), PulseSpec.set())
            with pytest.raises(ChipInUseError) as e:
                FpgaChip(server.url, timeout_s=1.0)
            msg = str(e.value)
            assert "the chip is in use by another client since" in msg and server.url in msg
            ref.program(np.arange(50), np.full(50, 2), PulseSpec.set())
            assert np.array_equal(bits(first.read(np.arange(64))), bits(ref.read(np.arange(64))))
        with FpgaChip(server.url, timeout_s=1.0) as later:
            assert np.array_equal(bits(later.read(np.arange(64))), bits(ref.read(np.arange(64))))
        stats = server.stats()
        assert stats["firmware"]["nacks"] == {"IN_USE": 1} and stats["connections"] == 3
        assert stats["pulses"]["set"] == 100
    finally:
        server.stop()


# --- state file ---------------------------------------------------------------------------------
def test_state_and_memory_survive_a_restart(tmp_path):
    path = str(tmp_path / "chip.npz")
    ref = make_chip()
    fw = Firmware(make_chip(), state_path=path)
    ack = fw.handle(frame_of(PROGRAM, 100))
    ref.program(PROGRAM.addresses, PROGRAM.n_pulses, PulseSpec.set())
    r1 = fw.handle(frame_of(ReadRequest(np.arange(64)), 101))
    ref.read(np.arange(64))
    del fw  # "crash": no orderly shutdown

    fw2 = Firmware(make_chip(), state_path=path)
    assert fw2.chip.clock_s == ref.clock_s
    assert np.array_equal(fw2.chip.true_conductance(np.arange(1024)),
                          ref.true_conductance(np.arange(1024)))
    # The host's retry of the last commands is answered from the restored memory.
    assert fw2.handle(frame_of(PROGRAM, 100)) == ack
    assert fw2.handle(frame_of(ReadRequest(np.arange(64)), 101)) == r1
    assert fw2.chip.counters["set_pulses"] == 0
    # And the chip continues exactly as an uninterrupted one.
    r2 = reply_of(fw2.handle(frame_of(ReadRequest(np.arange(64)), 102)))
    assert np.array_equal(r2.codes, np.rint(ref.read(np.arange(64)) / (25.0 / 65535)))


def test_torn_journal_record_is_not_applied_and_its_retry_executes(tmp_path):
    """A crash in the middle of journaling a command (before its reply could leave): the
    torn record is ignored, so the chip lacks the batch and the host's retry applies it once."""
    path = str(tmp_path / "chip.npz")
    ref = make_chip()
    fw = Firmware(make_chip(), state_path=path)
    fw.handle(frame_of(PROGRAM, 1))
    ref.program(PROGRAM.addresses, PROGRAM.n_pulses, PulseSpec.set())
    fw.handle(frame_of(PROGRAM, 2))
    del fw
    journal = path + ".journal"
    with open(journal, "r+b") as f:  # the last append was cut short by the crash
        f.truncate(os.path.getsize(journal) - 7)
    fw2 = Firmware(make_chip(), state_path=path)
    assert list(fw2.memory) == [1] and fw2.replayed == 1
    assert fw2.chip.clock_s == ref.clock_s
    fw2.handle(frame_of(PROGRAM, 2))  # the retry: executed, as the chip lacks it
    ref.program(PROGRAM.addresses, PROGRAM.n_pulses, PulseSpec.set())
    assert fw2.chip.counters["set_pulses"] == 684
    assert np.array_equal(fw2.chip.true_conductance(np.arange(1024)),
                          ref.true_conductance(np.arange(1024)))


def test_journal_records_already_in_the_snapshot_are_not_replayed(tmp_path):
    """A crash between rewriting the snapshot and restarting the journal: the old journal's
    records are recognised (by the chip clock) as contained, remembered but not re-applied."""
    path = str(tmp_path / "chip.npz")
    ref = make_chip()
    fw = Firmware(make_chip(), state_path=path)
    for seq in (1, 2):
        fw.handle(frame_of(PROGRAM, seq))
        ref.program(PROGRAM.addresses, PROGRAM.n_pulses, PulseSpec.set())
    old_journal = open(path + ".journal", "rb").read()
    fw.compact()
    with open(path + ".journal", "wb") as f:  # "the journal restart never happened"
        f.write(old_journal)
    del fw
    fw2 = Firmware(make_chip(), state_path=path)
    assert fw2.replayed == 0 and list(fw2.memory) == [1, 2]
    assert fw2.chip.clock_s == ref.clock_s
    assert np.array_equal(fw2.chip.true_conductance(np.arange(1024)),
                          ref.true_conductance(np.arange(1024)))
    fw2.handle(frame_of(PROGRAM, 2))  # the retry of the last batch: from memory
    assert fw2.chip.counters["set_pulses"] == 0


def test_journal_of_another_chip_model_is_refused(tmp_path):
    from drivers.errors import ConfigError

    path = str(tmp_path / "chip.npz")
    fw = Firmware(make_chip(), state_path=path)
    fw.handle(frame_of(PROGRAM, 1))
    fw.handle(frame_of(ReadRequest(np.arange(64)), 2))  # its values tell the models apart
    del fw
    other = SimulatedChip(PcmModel.preset("ideal"), GEO, seed=SEED)
    with pytest.raises(ConfigError, match="journal"):
        Firmware(other, state_path=path)


def test_journal_is_compacted(tmp_path):
    path = str(tmp_path / "chip.npz")
    fw = Firmware(make_chip(), state_path=path, compact_records=3)
    for seq in range(1, 8):
        fw.handle(frame_of(ReadRequest(np.arange(seq)), seq))
    clock = fw.chip.clock_s
    del fw
    fw2 = Firmware(make_chip(), state_path=path)
    assert fw2.replayed == 1 and fw2.chip.clock_s == clock
    assert list(fw2.memory)[-1] == 7 and fw2.last_seq == 7


# --- link model and counters --------------------------------------------------------------------
def test_link_rate_and_latency_are_modelled():
    server = EmulatorServer(Firmware(make_chip()), listen=("127.0.0.1", 0),
                            link=LinkModel(baud=115_200, latency_ms=30)).start()
    try:
        with FpgaChip(server.url, timeout_s=2.0) as chip:
            t = time.monotonic()
            chip.read(np.arange(1024))  # ~2 kB reply + ~150 B request at 11.5 kB/s
            elapsed = time.monotonic() - t
        assert elapsed >= 0.03 + 2100 * 10 / 115_200 * 0.95
    finally:
        server.stop()


def test_stats_json_written_at_stop(tmp_path):
    stats = tmp_path / "stats.json"
    server = EmulatorServer(Firmware(make_chip()), listen=("127.0.0.1", 0),
                            faults=FaultConfig(script={3: "drop_reply"}),
                            stats_path=str(stats)).start()
    with FpgaChip(server.url, timeout_s=0.2) as chip:
        chip.program(np.arange(10), np.full(10, 3), PulseSpec.set())
        chip.program(np.arange(10), np.full(10, 1), PulseSpec.reset())
    server.stop()
    doc = json.loads(stats.read_text())
    assert doc["faults"]["drop_reply"] == 1
    assert doc["pulses"] == {"set": 30, "reset": 10}
    assert doc["repeats_answered"] == 1
    assert doc["firmware"]["by_opcode"] == {"HELLO": 1, "PROGRAM": 2, "SAFE_STATE": 1}


def test_fault_config_validation():
    with pytest.raises(ValueError):
        FaultConfig(corrupt=1.5)
    with pytest.raises(ValueError):
        FaultConfig(script={1: "explode"})
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("7700") == ("127.0.0.1", 7700)
    assert parse_listen("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError):
        parse_listen("host:port")


def test_same_fault_seed_same_faults():
    def run(seed):
        server = EmulatorServer(Firmware(make_chip()), listen=("127.0.0.1", 0),
                                faults=FaultConfig(corrupt=0.3, drop=0.3, seed=seed)).start()
        with FpgaChip(server.url, timeout_s=0.2, retries=12, seq_start=1000) as chip:
            for i in range(4):
                chip.read(np.arange(i, 40))
        server.stop()
        return server.stats()["faults"]

    assert run(3) == run(3)


# --- the CLI, as a subprocess -------------------------------------------------------------------
def start_cli(*args: str) -> tuple:
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "emulate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        proc.kill()
        raise AssertionError("emulator printed no URL")
    url = proc.stdout.readline().strip()
    assert url, proc.stderr.read()
    return proc, url


def stop_cli(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    finally:
        proc.stdout.close()
        proc.stderr.close()


CHIP_ARGS = ["--rows", "32", "--cols", "32", "--seed", str(SEED), "--model", "jap"]


def workload(backend, seed: int, steps: int = 3):
    rng = np.random.default_rng(seed)
    out = []
    for step in range(steps):
        addr = rng.choice(GEO.n_devices, 200, replace=False)
        backend.program(addr, rng.integers(0, 5, 200),
                        PulseSpec.reset() if step == 1 else PulseSpec.set())
        out.append(backend.read(addr))
        out.append(backend.matvec(np.arange(256).reshape(8, 32), rng.uniform(-0.5, 0.5, 32)))
    return out


def test_cli_tcp_state_survives_restart_and_stats_on_sigterm(tmp_path):
    state, stats = str(tmp_path / "chip.npz"), str(tmp_path / "stats.json")
    ref = make_chip()
    proc, url = start_cli("--listen", "127.0.0.1:0", "--state", state, "--stats-json", stats,
                          *CHIP_ARGS)
    assert url.startswith("socket://127.0.0.1:") and not url.endswith(":0")
    try:
        with FpgaChip(url, timeout_s=2.0) as chip:
            for a, b in zip(workload(ref, 1), workload(chip, 1)):
                assert np.array_equal(bits(a), bits(b))
    finally:
        assert stop_cli(proc) == 0
    doc = json.loads(open(stats).read())
    assert doc["pulses"] == {"set": ref.counters["set_pulses"],
                             "reset": ref.counters["reset_pulses"]}
    assert doc["commands_executed"] >= 9

    proc, url = start_cli("--listen", "127.0.0.1:0", "--state", state, *CHIP_ARGS)
    try:
        with FpgaChip(url, timeout_s=2.0) as chip:
            assert np.array_equal(chip.read_exact(np.arange(1024)),
                                  ref.read_exact(np.arange(1024)))
            for a, b in zip(workload(ref, 2), workload(chip, 2)):
                assert np.array_equal(bits(a), bits(b))
    finally:
        assert stop_cli(proc) == 0


def test_cli_pty_with_faults_is_bit_identical(tmp_path):
    stats = str(tmp_path / "stats.json")
    ref = make_chip()
    proc, url = start_cli("--pty", "--corrupt", "0.2", "--drop", "0.2", "--delay-ms", "3",
                          "--disconnect-every", "4", "--fault-seed", "9", "--baud", "3000000",
                          "--latency-ms", "1", "--stats-json", stats, *CHIP_ARGS)
    assert os.path.exists(url)
    try:
        with FpgaChip(url, timeout_s=0.3, retries=10) as chip:
            for a, b in zip(workload(ref, 3, steps=4), workload(chip, 3, steps=4)):
                assert np.array_equal(bits(a), bits(b))
    finally:
        assert stop_cli(proc) == 0
    doc = json.loads(open(stats).read())
    assert sum(doc["faults"].values()) >= 5
    assert doc["pulses"] == {"set": ref.counters["set_pulses"],
                             "reset": ref.counters["reset_pulses"]}
    assert doc["chip"]["commands"] == ref.counters["commands"]


def test_cli_raw_frames_reach_a_nack(tmp_path):
    proc, url = start_cli("--listen", "0", *CHIP_ARGS)
    try:
        with FpgaChip(url, timeout_s=1.0) as chip:
            chip.send_frame(encode_frame(77, 0x66))
            deadline = time.monotonic() + 2
            got = []
            while not got and time.monotonic() < deadline:
                got = [i for i in chip.receive(0.5) if getattr(i, "seq", None) == 77]
            assert decode_message(got[0]).code is NackCode.UNKNOWN_OPCODE
            assert chip.status().nacks_sent == 1
    finally:
        stop_cli(proc)


@pytest.mark.parametrize("args,message", [
    (["--listen", "127.0.0.1:0", "--corrupt", "1.5"], "probability"),
    (["--listen", "127.0.0.1:0", "--rows", "0"], "must be >= 1"),
    (["--listen", "127.0.0.1:0", "--pty"], "not allowed"),
    ([], "one of the arguments --listen --pty is required"),
])
def test_cli_rejects_bad_arguments(args, message):
    out = subprocess.run([sys.executable, "-m", "hil.cli", "emulate", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr


def test_cli_bad_listen_address_is_one_clear_error():
    out = subprocess.run([sys.executable, "-m", "hil.cli", "emulate", "--listen", "nohost:x"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "--listen" in out.stderr and "Traceback" not in out.stderr


def test_cli_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "hil.cli", "emulate", "--help"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    for flag in ("--listen", "--pty", "--model", "--seed", "--rows", "--cols", "--arrays",
                 "--baud", "--latency-ms", "--corrupt", "--drop", "--delay-ms",
                 "--disconnect-every", "--fault-seed", "--state", "--stats-json"):
        assert flag in out
