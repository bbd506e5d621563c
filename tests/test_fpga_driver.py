"""The production FPGA driver against the firmware emulator, over a real TCP socket and a pty.

Every result is compared with an in-process SimulatedChip of the same seed: read values bit for
bit, true conductances after the same program commands.
"""
from __future__ import annotations

import logging
import struct
import time

import numpy as np
import pytest
import serial

from drivers.errors import (AddressError, ChipError, ChipFaultError, LinkError,
                            NotSupportedError, ProtocolError, SafetyLimitError)
from drivers.fpga import FpgaChip, NACK_ERRORS, open_fpga
from drivers.geometry import Geometry
from drivers.pulse import PulseSpec
from firmware_interface.addresses import encode_address_set
from firmware_interface.frame import Frame, encode_frame
from firmware_interface.messages import (AdvanceClockRequest, MatvecRequest, Nack, ProgramRequest, ReadRequest,
                                         StatusReply, decode_message)
from firmware_interface.protocol import PROTOCOL_VERSION, NackCode, Opcode, PulseCode
from sim_backend.emulator import EmulatorServer, FaultConfig
from sim_backend.firmware import Firmware
from sim_backend.pcm_model import PcmModel
from sim_backend.sim_chip import SimulatedChip

GEO = Geometry(1, 64, 64)
SEED = 11


def make_chip(seed: int = SEED, geometry: Geometry = GEO) -> SimulatedChip:
    return SimulatedChip(PcmModel.preset("jap"), geometry, seed=seed)


def serve(transport: str = "tcp", faults: FaultConfig | None = None,
          busy_poll_s: float = 0.0, **fw) -> EmulatorServer:
    geometry = fw.pop("geometry", GEO)
    firmware = Firmware(make_chip(geometry=geometry), **fw)
    kw = {"pty": True} if transport == "pty" else {"listen": ("127.0.0.1", 0)}
    kw["busy_poll_s"] = busy_poll_s
    return EmulatorServer(firmware, faults=faults, **kw).start()


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


@pytest.fixture(params=["tcp", "pty"])
def transport(request):
    return request.param


@pytest.fixture
def emu(transport):
    server = serve(transport)
    yield server
    server.stop()


@pytest.fixture
def chip(emu):
    c = FpgaChip(emu.url, timeout_s=0.5, retries=4, reconnect_timeout_s=3.0)
    yield c
    c.close()


def workload(backend, steps: int = 6, seed: int = 0):
    """A training-like mix of commands; returns everything the backend answered."""
    rng = np.random.default_rng(seed)
    out = []
    n_dev = GEO.n_devices
    for step in range(steps):
        addr = rng.choice(n_dev, 400, replace=False)
        pulses = rng.integers(0, 6, addr.size)
        backend.program(addr, pulses, PulseSpec.reset() if step == 2 else PulseSpec.set())
        out.append(backend.read(addr[:300]))
        # program then read back, as a training step does: unsorted, some devices unpulsed
        more = rng.choice(n_dev, 50, replace=False)
        out.append(backend.program_read(more, rng.integers(0, 3, more.size), PulseSpec.set()))
        block = np.arange(8 * 64).reshape(8, 64) + 64 * step
        out.append(backend.matvec(block, rng.uniform(-0.5, 0.5, 64)))   # line voltages
        out.append(backend.matvec(block[:, ::2],
                                  rng.uniform(-0.5, 0.5, (32, 3)).astype(np.float32)))
    out.append(backend.read_exact(np.arange(n_dev)))
    return out


def assert_same(a_list, b_list):
    assert len(a_list) == len(b_list)
    for a, b in zip(a_list, b_list):
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        assert np.array_equal(bits(a), bits(b))


# --- equality with the in-process chip ----------------------------------------------------------
def test_bit_identical_to_in_process(emu, chip):
    ref = make_chip()
    assert_same(workload(ref), workload(chip))
    fw_chip = emu.firmware.chip
    assert np.array_equal(fw_chip.true_conductance(np.arange(GEO.n_devices)),
                          ref.true_conductance(np.arange(GEO.n_devices)))
    assert fw_chip.counters == ref.counters
    assert fw_chip.clock_s == ref.clock_s


def test_busy_polling_on_both_ends_changes_nothing(transport):
    """The emulator polling without sleeping after each request, and the driver before each
    read: same answers, same chip."""
    server = serve(transport, busy_poll_s=0.002)
    try:
        ref = make_chip()
        with FpgaChip(server.url, timeout_s=0.5, busy_poll_s=0.002) as chip:
            assert_same(workload(ref, steps=3), workload(chip, steps=3))
        assert server.firmware.chip.counters == ref.counters
    finally:
        server.stop()


def test_bit_identical_under_link_faults(transport):
    """Corrupted and dropped frames in both directions, random delays and disconnects change
    nothing: every pulse batch is applied exactly once, every read draws its noise once."""
    faults = FaultConfig(corrupt=0.15, drop=0.15, delay_ms=5, disconnect_every=7, seed=4,
                         outage_s=0.05)
    server = serve(transport, faults)
    try:
        ref = make_chip()
        with FpgaChip(server.url, timeout_s=0.15, retries=10) as chip:
            assert_same(workload(ref, steps=4), workload(chip, steps=4))
        st = server.stats()
        assert sum(st["faults"].values()) > 10
        assert st["faults"]["disconnect"] >= 1
        assert st["repeats_answered"] >= 1
        assert st["pulses"] == {"set": ref.counters["set_pulses"],
                                "reset": ref.counters["reset_pulses"]}
        assert server.firmware.chip.counters == ref.counters
    finally:
        server.stop()


def test_info_from_hello(chip, emu):
    info = chip.info()
    assert info.geometry == GEO
    assert info.protocol_version == "%d.%d" % PROTOCOL_VERSION and info.adc_bits == 16
    assert info.supports("matvec") and info.supports("exact_read")
    assert info.hard_limits == emu.firmware.chip.limits.as_dict()
    assert chip.adc_full_scale_us == pytest.approx(25.0)


def test_status_and_safe_state(chip, emu):
    chip.program(np.array([1, 2]), np.array([1, 2]), PulseSpec.set())
    s = chip.status()
    assert isinstance(s, StatusReply)
    assert s.last_seq_valid and s.last_seq == chip.last_seq - 1
    assert s.set_pulses == 3 and not s.idle
    chip.safe_state()
    assert chip.status().idle


def test_close_idles_the_chip_and_refuses_further_commands(emu):
    chip = FpgaChip(emu.url, timeout_s=0.5)
    chip.program(np.array([3]), np.array([1]), PulseSpec.set())
    assert not emu.firmware.idle
    chip.close()
    assert emu.firmware.idle
    chip.close()  # idempotent
    with pytest.raises(ChipError, match="closed"):
        chip.read(np.array([1]))


def test_duplicate_read_addresses_get_identical_values(chip):
    v = chip.read(np.array([5, 9, 5, 5]))
    assert v[0] == v[2] == v[3]


def test_empty_batches_still_reach_the_chip(chip, emu):
    ref = make_chip()
    for b in (ref, chip):
        b.read(np.zeros(0, np.uint32))
        b.program(np.zeros(0, np.uint32), np.zeros(0, np.int64), PulseSpec.set())
        b.program(np.array([4]), np.array([0]), PulseSpec.set())
    assert emu.firmware.chip.clock_s == ref.clock_s


# --- simulated time (capability SIM_CLOCK) ----------------------------------------------------
def test_sim_clock_over_the_wire(chip, emu):
    ref = make_chip()
    assert chip.info().supports("sim_clock")
    for b in (ref, chip):
        b.program(np.arange(10), np.full(10, 3), PulseSpec.set())
        b.advance_clock(38.6)
        b.read(np.arange(10))
    assert chip.clock_s == ref.clock_s == emu.firmware.chip.clock_s
    assert chip.advance_clock(0.0) == ref.clock_s  # a zero wait is fine
    assert chip.stats["CLOCK"]["round_trips"] == 1  # a query, answered afresh
    with pytest.raises(ValueError):
        chip.advance_clock(-1.0)
    with pytest.raises(ValueError):
        chip.advance_clock(float("inf"))
    assert emu.firmware.chip.clock_s == ref.clock_s


@pytest.mark.parametrize("fault", ["drop_reply", "disconnect"])
def test_retried_advance_clock_moves_the_clock_once(fault):
    server = serve(faults=FaultConfig(script={2: fault}, outage_s=0.2))
    try:
        with FpgaChip(server.url, timeout_s=0.25, retries=4) as chip:
            assert chip.advance_clock(100.0) == 100.0
            assert chip.stats["ADVANCE_CLOCK"]["round_trips"] >= 2
            assert chip.clock_s == 100.0
        assert server.firmware.counters["repeats_answered"] == 1
    finally:
        server.stop()


def test_sim_clock_needs_the_capability():
    server = serve(capabilities=frozenset({"matvec"}))
    try:
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            assert not chip.info().supports("sim_clock")
            with pytest.raises(NotSupportedError) as e:
                chip.advance_clock(1.0)
            assert e.value.command == "ADVANCE_CLOCK"
            with pytest.raises(NotSupportedError):
                chip.clock_s
            with pytest.raises(NotSupportedError) as e:  # past the driver's own check
                chip.transaction(AdvanceClockRequest(1.0))
            assert e.value.nack_code is NackCode.UNSUPPORTED
        assert server.firmware.chip.clock_s == 0.0
    finally:
        server.stop()


def test_advance_clock_bad_payload_is_refused_by_the_firmware(chip, emu):
    nan = encode_frame(910, Opcode.ADVANCE_CLOCK, struct.pack("<d", float("nan")))
    assert raw_exchange(chip, nan, 910).code is NackCode.BAD_PAYLOAD
    neg = encode_frame(911, Opcode.ADVANCE_CLOCK, struct.pack("<d", -5.0))
    assert raw_exchange(chip, neg, 911).code is NackCode.BAD_PAYLOAD
    short = encode_frame(912, Opcode.ADVANCE_CLOCK, b"\x00" * 4)
    assert raw_exchange(chip, short, 912).code is NackCode.BAD_LENGTH
    assert emu.firmware.chip.clock_s == 0.0


# --- checks before anything is sent -----------------------------------------------------------
BAD_CALLS = [
    ("read", (np.array([GEO.n_devices]),), AddressError),
    ("read", (np.array([-1]),), AddressError),
    ("program", (np.array([1, 1]), np.array([1, 1]), PulseSpec.set()), AddressError),
    ("program", (np.array([1]), np.array([256]), PulseSpec.set()), SafetyLimitError),
    ("program", (np.array([1]), np.array([-1]), PulseSpec.set()), SafetyLimitError),
    ("program", (np.array([1]), np.array([1]), PulseSpec.set(amplitude_v=2.5)),
     SafetyLimitError),
    ("program", (np.array([1]), np.array([1]), PulseSpec.reset(amplitude_v=4.5)),
     SafetyLimitError),
    ("program", (np.array([1]), np.array([1]), PulseSpec.set(width_ns=20_000)),
     SafetyLimitError),
    ("program", (np.array([1, 2]), np.array([1]), PulseSpec.set()), ChipError),
    ("matvec", (np.arange(4), np.ones(4)), ChipError),
    ("matvec", (np.arange(4).reshape(2, 2), np.ones(3)), ChipError),
    ("matvec", (np.arange(4).reshape(2, 2), np.array([0.1, -0.7])), SafetyLimitError),
    ("matvec", (np.arange(4).reshape(2, 2), np.array([[0.1], [np.nan]])), ChipError),
    ("read_exact", (np.array([GEO.n_devices + 5]),), AddressError),
]


def test_bad_calls_raise_like_in_process_and_send_nothing(chip, emu):
    ref = make_chip()
    before = emu.counters["requests"]
    for method, args, error in BAD_CALLS:
        with pytest.raises(error) as e_ref:
            getattr(ref, method)(*args)
        with pytest.raises(error) as e_drv:
            getattr(chip, method)(*args)
        assert e_drv.value.command == e_ref.value.command, (method, args)
        if e_ref.value.devices is not None:
            assert np.array_equal(e_drv.value.devices, e_ref.value.devices)
    assert emu.counters["requests"] == before


def test_batch_above_max_payload_is_refused_before_sending():
    server = serve(max_payload=256)
    try:
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            with pytest.raises(ProtocolError, match="max_payload"):
                chip.read(np.arange(0, 4096, 7))
            chip.read(np.arange(100))  # dense sets fit easily
    finally:
        server.stop()


# --- every NACK code, through the real link ---------------------------------------------------
def raw_exchange(chip: FpgaChip, data: bytes, seq: int, timeout: float = 1.0) -> Nack:
    """Send raw bytes through the driver's public wire methods; return the NACK for seq."""
    chip.send_frame(data)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in chip.receive(deadline - time.monotonic()):
            if isinstance(item, Frame) and item.seq == seq:
                msg = decode_message(item)
                assert isinstance(msg, Nack), msg
                return msg
    raise AssertionError("no reply")


def test_nack_bad_crc(chip):
    f = bytearray(ReadRequest(np.array([1, 2])).frame(900))
    f[20] ^= 0xFF
    assert raw_exchange(chip, bytes(f), 900).code is NackCode.BAD_CRC


def test_nack_unknown_opcode(chip):
    assert raw_exchange(chip, encode_frame(901, 0x55), 901).code is NackCode.UNKNOWN_OPCODE
    reply_as_request = encode_frame(902, Opcode.INFO)
    assert raw_exchange(chip, reply_as_request, 902).code is NackCode.UNKNOWN_OPCODE


def test_nack_bad_length(chip):
    n = raw_exchange(chip, encode_frame(903, Opcode.STATUS, b"xyz"), 903)
    assert n.code is NackCode.BAD_LENGTH and n.request_opcode == Opcode.STATUS


def test_nack_bad_payload(chip):
    assert raw_exchange(chip, encode_frame(904, Opcode.READ, struct.pack("<BII", 9, 0, 0)),
                        904).code is NackCode.BAD_PAYLOAD
    bad_kind = struct.pack("<BxII", 7, 1, 1) + encode_address_set(np.array([1])) + b"\x01"
    assert raw_exchange(chip, encode_frame(905, Opcode.PROGRAM, bad_kind),
                        905).code is NackCode.BAD_PAYLOAD
    zero_amp = ProgramRequest(PulseCode.SET, 0, 50_000, np.array([1]), np.array([1]))
    assert raw_exchange(chip, zero_amp.frame(906), 906).code is NackCode.BAD_PAYLOAD


def test_nack_duplicate_address(chip):
    payload = struct.pack("<BII", 0, 3, 12) + np.array([1, 7, 7], "<u4").tobytes()
    n = raw_exchange(chip, encode_frame(907, Opcode.READ, payload), 907)
    assert n.code is NackCode.DUPLICATE_ADDRESS and list(n.devices) == [7]


def test_nack_version_mismatch(chip):
    f = encode_frame(908, Opcode.STATUS, version=(2, 0))
    assert raw_exchange(chip, f, 908).code is NackCode.VERSION_MISMATCH


def test_nack_too_large_then_link_keeps_working():
    server = serve(max_payload=1024)
    try:
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            big = encode_frame(909, Opcode.READ, bytes(5000))
            assert raw_exchange(chip, big, 909).code is NackCode.TOO_LARGE
            assert chip.read(np.arange(10)).shape == (10,)
    finally:
        server.stop()


def test_nack_address_out_of_range_maps_to_address_error(chip):
    """Bypassing the driver's own checks, the firmware's NACK becomes the same typed error."""
    with pytest.raises(AddressError) as e:
        chip.transaction(ReadRequest(np.array([5, GEO.n_devices, GEO.n_devices + 3])),
                         command="READ")
    assert e.value.nack_code is NackCode.ADDRESS_OUT_OF_RANGE
    assert list(e.value.devices) == [GEO.n_devices, GEO.n_devices + 3]
    assert e.value.command == "READ"


def test_nack_safety_limit_maps_to_safety_limit_error(chip, emu):
    req = ProgramRequest.from_units(PulseCode.SET, 3.0, 50.0, np.array([1]), np.array([1]))
    with pytest.raises(SafetyLimitError) as e:
        chip.transaction(req, command="PROGRAM_SET")
    assert e.value.nack_code is NackCode.SAFETY_LIMIT
    assert emu.firmware.chip.counters["set_pulses"] == 0


def test_matvec_voltage_limits_are_the_firmwares_too(chip, emu):
    """Bypassing the driver's checks, the firmware itself refuses a MATVEC input above its
    read_v_max (SAFETY_LIMIT) and a NaN or infinite one (BAD_PAYLOAD), reading nothing."""
    assert chip.info().hard_limits["read_v_max"] == 0.5
    block = np.arange(6).reshape(2, 3)
    commands = emu.firmware.chip.counters["commands"]
    with pytest.raises(SafetyLimitError,
                       match=r"x\[1\] = -0.75 V exceeds the chip's read_v_max") as e:
        chip.transaction(MatvecRequest(block, np.array([0.5, -0.75, 0.0])), command="MATVEC")
    assert e.value.nack_code is NackCode.SAFETY_LIMIT
    for seq, bad in ((910, np.inf), (911, np.nan)):
        req = MatvecRequest(block, np.array([0.1, bad, 0.2]))
        assert raw_exchange(chip, req.frame(seq), seq).code is NackCode.BAD_PAYLOAD
    assert emu.firmware.chip.counters["commands"] == commands
    assert chip.matvec(block, np.array([0.5, -0.5, 0.0])).shape == (2,)   # at the limit: fine


def test_nack_unsupported():
    server = serve(capabilities=frozenset())
    try:
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            assert not chip.info().supports("matvec")
            with pytest.raises(NotSupportedError):
                chip.matvec(np.arange(4).reshape(2, 2), np.ones(2))
            with pytest.raises(NotSupportedError):
                chip.read_exact(np.arange(4))
            with pytest.raises(NotSupportedError) as e:  # past the driver's own check
                chip.transaction(MatvecRequest(np.arange(4).reshape(2, 2), np.ones(2)))
            assert e.value.nack_code is NackCode.UNSUPPORTED
    finally:
        server.stop()


def test_nack_busy_is_retried_with_the_same_frame():
    server = serve(faults=FaultConfig(script={2: "busy", 3: "busy"}))
    try:
        with FpgaChip(server.url, timeout_s=0.5, busy_backoff_s=0.01) as chip:
            chip.program(np.array([1, 2]), np.array([2, 2]), PulseSpec.set())
            assert server.firmware.counters["set_pulses"] == 4
            assert server.stats()["faults"]["busy"] == 2
            assert chip.stats["PROGRAM_SET"]["round_trips"] == 3
    finally:
        server.stop()


def test_nack_chip_fault():
    server = serve(faults=FaultConfig(script={2: "chip_fault"}))
    try:
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            with pytest.raises(ChipFaultError) as e:
                chip.read(np.arange(3))
            assert e.value.nack_code is NackCode.CHIP_FAULT and e.value.command == "READ"
    finally:
        server.stop()


def test_every_nack_code_has_a_typed_error():
    assert set(NACK_ERRORS) == set(NackCode)


# --- retries, idempotency, reconnects, resync -------------------------------------------------
@pytest.mark.parametrize("fault", ["drop_reply", "corrupt_reply", "disconnect", "delay"])
def test_retried_program_is_applied_once(transport, fault):
    """The PROGRAM executes, its ACK is lost; the retry (same sequence number) is answered
    from the firmware's memory, so the chip sees the pulses once."""
    server = serve(transport, FaultConfig(script={2: fault}, outage_s=0.4))
    try:
        ref = make_chip()
        addr, n = np.arange(0, 4096, 5), np.full(820, 3)
        with FpgaChip(server.url, timeout_s=0.25, retries=4) as chip:
            chip.program(addr, n, PulseSpec.set())
            ref.program(addr, n, PulseSpec.set())
            assert np.array_equal(bits(chip.read(addr)), bits(ref.read(addr)))
            assert chip.stats["PROGRAM_SET"]["round_trips"] >= 2
        fw = server.firmware
        assert fw.counters["set_pulses"] == int(n.sum())
        assert fw.chip.counters == ref.counters
        assert fw.counters["repeats_answered"] >= 1
        assert np.array_equal(fw.chip.true_conductance(addr), ref.true_conductance(addr))
    finally:
        server.stop()


@pytest.mark.parametrize("fault", ["drop_reply", "corrupt_reply", "disconnect"])
def test_retried_program_read_is_applied_and_read_once(fault):
    """A PROGRAM_READ whose reply is lost: the retry is answered from memory, so the pulses
    land once and the values are those of the one read (no second read-noise draw)."""
    server = serve("tcp", FaultConfig(script={2: fault}, outage_s=0.4))
    try:
        ref = make_chip()
        addr, n = np.arange(4000, 0, -7), np.resize(np.array([0, 1, 2]), 572)
        with FpgaChip(server.url, timeout_s=0.25, retries=4) as chip:
            got = chip.program_read(addr, n, PulseSpec.set())
            assert chip.stats["PROGRAM_READ"]["round_trips"] >= 2
        assert np.array_equal(bits(got), bits(ref.program_read(addr, n, PulseSpec.set())))
        fw = server.firmware
        assert fw.counters["repeats_answered"] >= 1
        assert fw.chip.counters == ref.counters and fw.chip.clock_s == ref.clock_s
    finally:
        server.stop()


def test_program_read_falls_back_on_a_firmware_without_it():
    """A protocol 1.1 firmware lacks PROGRAM_READ: the driver sends PROGRAM then READ, with
    the same result."""
    caps = frozenset(make_chip().info().capabilities)
    server = serve("tcp", capabilities=caps)
    try:
        ref = make_chip()
        addr, n = np.array([9, 3, 700]), np.array([2, 0, 1])
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            assert not chip.info().supports("program_read")
            got = chip.program_read(addr, n, PulseSpec.set())
            assert "PROGRAM_READ" not in chip.stats
            assert chip.stats["PROGRAM_SET"]["commands"] == chip.stats["READ"]["commands"] == 1
        assert np.array_equal(bits(got), bits(ref.program_read(addr, n, PulseSpec.set())))
    finally:
        server.stop()


def test_lost_request_is_simply_resent(transport):
    server = serve(transport, FaultConfig(script={2: "drop_request", 3: "corrupt_request"}))
    try:
        with FpgaChip(server.url, timeout_s=0.2) as chip:
            chip.program(np.array([7]), np.array([4]), PulseSpec.set())
        assert server.firmware.counters["set_pulses"] == 4
        assert server.firmware.counters["repeats_answered"] == 0
    finally:
        server.stop()


class GarbledLink(FpgaChip):
    """A driver whose link adds line noise in front of every frame it receives (a subclass
    replacing only the private I/O, as a different transport would)."""

    NOISE = b"\x00\xA5\xFF\xA5\x5A\x01\x00"

    def _read(self, n: int, timeout_s: float) -> bytes:
        pending = self.__dict__.setdefault("_pending", bytearray())
        if not pending:
            data = super()._read(n, timeout_s)
            pending += (self.NOISE + data) if data[:2] == b"\xA5\x5A" else data
        out = bytes(pending[:n])
        del pending[:n]
        return out

    def _discard_input(self) -> None:
        self.__dict__.get("_pending", bytearray()).clear()
        super()._discard_input()


def test_driver_resyncs_after_garbage_in_replies(emu):
    ref = make_chip()
    with GarbledLink(emu.url, timeout_s=0.5) as chip:
        assert_same(workload(ref, steps=2), workload(chip, steps=2))
        assert chip._decoder.garbage_bytes > 0


def test_emulator_resyncs_after_garbage_in_requests(chip, emu):
    chip.send_frame(b"\x00\x01\xA5\x5Agarbage\xA5" * 3)
    ref = make_chip()
    assert np.array_equal(bits(chip.read(np.arange(50))), bits(ref.read(np.arange(50))))
    assert emu.stats()["decoder"]["garbage_bytes"] > 0


def test_reconnect_after_the_emulator_drops_the_link():
    server = serve(faults=FaultConfig(disconnect_every=2))
    try:
        ref = make_chip()
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            assert_same(workload(ref, steps=2), workload(chip, steps=2))
            assert chip.link_counters["reconnects"] >= 3
        assert server.stats()["connections"] >= 4
    finally:
        server.stop()


# --- the chip's boot and history; one client at a time (protocol 1.3) --------------------------
def test_chip_history_is_an_ability_of_1_3_firmware_only():
    from drivers.abilities import ChipHistory, find_ability
    from drivers.chip_history import chip_position
    from drivers.errors import ChipHistoryError
    server, old = serve(), serve(protocol_version=(1, 2))
    try:
        with FpgaChip(server.url, timeout_s=1.0) as chip:
            assert find_ability(chip, ChipHistory) is chip
            assert chip.boot_id == f"{server.firmware.boot_id:016x}"
            start = chip.history()
            chip.program_read(np.arange(9), np.ones(9, int), PulseSpec.set())
            chip.read(np.arange(4))
            h = chip.history()
            assert h.boot_id == start.boot_id == chip.boot_id
            assert (h.commands - start.commands, h.program_reads, h.reads) == (2, 1, 1)
            assert h.last_command == "READ" and h.last_seq == chip.last_seq - 1
        with FpgaChip(old.url, timeout_s=1.0) as chip:
            assert find_ability(chip, ChipHistory) is None
            with pytest.raises(NotSupportedError):
                chip.history()
            # a record of commands is never assumed to fit such a chip: refused, saying why
            with pytest.raises(ChipHistoryError, match=r"protocol 1\.2\) cannot report its "
                                                       r"boot and command history"):
                chip_position(chip, "run log r.h5")
    finally:
        server.stop()
        old.stop()


@pytest.mark.parametrize("restart", ["power-cycled", "same-state"])
def test_reconnect_checks_the_boot(tmp_path, restart):
    """The emulator stops mid-session and another starts on its port: restarted from the
    state file it is the same boot, and the session goes on exactly; a fresh one (a
    power-cycled chip) is refused with one clear error, and nothing more is sent to it - not
    the command, not SAFE_STATE on close."""
    from drivers.chip_history import HistoryMismatch
    from drivers.errors import ChipHistoryError
    state = str(tmp_path / "chip.npz")
    first = EmulatorServer(Firmware(make_chip(), state_path=state),
                           listen=("127.0.0.1", 0)).start()
    ref = make_chip()
    chip = FpgaChip(first.url, timeout_s=0.5, retries=3, reconnect_timeout_s=5.0)
    try:
        chip.history()
        for backend in (ref, chip):
            backend.program(np.arange(100), np.full(100, 3), PulseSpec.set())
        first.stop()
        second = EmulatorServer(
            Firmware(make_chip(), state_path=state if restart == "same-state" else None),
            listen=first.address).start()
        try:
            if restart == "same-state":
                assert_same([ref.read(np.arange(200))], [chip.read(np.arange(200))])
                assert chip.link_counters["reconnects"] >= 1
            else:
                with pytest.raises(ChipHistoryError) as e:
                    chip.read(np.arange(200))
                assert e.value.mismatch is HistoryMismatch.BOOT
                assert "another boot" in str(e.value) and "power-cycled" in str(e.value)
                with pytest.raises(ChipHistoryError, match="not sent"):
                    chip.read(np.arange(4))
                chip.safe_state()
                chip.close()
                assert second.firmware.counters["by_opcode"] == {"HELLO": 1}
        finally:
            second.stop()
    finally:
        chip.close()


class Interloper(FpgaChip):
    """The production driver; when its link has dropped, another client uses the chip before
    it reconnects (a subclass hook on the port: the reconnect itself is the real one)."""

    def __init__(self, url: str, meanwhile, **kw) -> None:
        self.meanwhile = meanwhile
        super().__init__(url, **kw)

    def _open_port(self) -> None:
        if self._hello is not None and self.meanwhile is not None:   # reconnecting
            self.meanwhile()
            self.meanwhile = None
        super()._open_port()


def test_reconnect_refuses_a_chip_another_client_used_meanwhile():
    """The emulator drops the link after executing a PROGRAM (request 4); before the driver is
    back, another client reads: the reconnected chip is one READ further than this session's
    commands (the PROGRAM in flight allowed for), and it is refused."""
    from drivers.chip_history import HistoryMismatch
    from drivers.errors import ChipHistoryError
    server = serve(faults=FaultConfig(script={4: "disconnect"}))

    def other_client() -> None:
        with FpgaChip(server.url, timeout_s=1.0) as other:
            other.read(np.arange(3))

    try:
        chip = Interloper(server.url, other_client, timeout_s=0.5, reconnect_timeout_s=3.0)
        chip.history()
        chip.read(np.arange(10))
        with pytest.raises(ChipHistoryError) as e:
            chip.program(np.arange(10), np.full(10, 1), PulseSpec.set())
        assert e.value.mismatch is HistoryMismatch.FURTHER
        assert "+1 read operations" in str(e.value) and "another client" in str(e.value)
        chip.close()
        assert server.firmware.counters["by_opcode"]["SAFE_STATE"] == 1   # the other's only
    finally:
        server.stop()


def test_a_resent_command_answered_from_memory_keeps_the_session_exact():
    """Resume re-sends a command an earlier session had executed (use_seq): the firmware
    answers it from memory and the chip's history does not move, so the session starts again
    after it; a later reconnect then finds the chip exactly where the session left it."""
    faults = FaultConfig(script={})
    server = serve(faults=faults)
    try:
        batch = (np.arange(20), np.full(20, 2), PulseSpec.set())
        with FpgaChip(server.url, timeout_s=0.5) as earlier:
            earlier.program(*batch)
            wire_seq = earlier.last_seq
        chip = FpgaChip(server.url, timeout_s=0.5, reconnect_timeout_s=3.0)
        start = chip.history()
        chip.use_seq(wire_seq)
        chip.program(*batch)
        assert server.stats()["repeats_answered"] == 1 and chip.history() == start
        # the next request is executed and the link dropped with its reply: a reconnect
        faults.script[server.stats()["requests"] + 1] = "disconnect"
        chip.read(np.arange(5))
        assert chip.link_counters["reconnects"] == 1
        chip.close()
    finally:
        server.stop()


class BrokenPath(FpgaChip):
    """Its link fails on the host's side only, at frame `at`: the old connection is left open,
    so the firmware still holds it as the session's (as when the network path breaks)."""

    def __init__(self, url: str, at: int, **kw) -> None:
        self.at, self.frames, self.kept = at, 0, []
        super().__init__(url, **kw)

    def _write(self, data: bytes) -> int:
        self.frames += 1
        if self.frames == self.at:
            raise OSError("network path broke")
        return super()._write(data)

    def _close_port(self) -> None:
        if self.frames == self.at and self._port is not None:
            self.kept.append(self._port)   # never closed: the firmware sees it as alive
            self._port = None
            return
        super()._close_port()


def test_own_reconnect_takes_over_its_session_while_the_old_link_looks_open():
    """The driver reconnects while the firmware still holds its old connection open: its
    HELLO names its session, so it takes it over (the old connection is closed by the
    firmware) and goes on exactly; a different client is refused all the while."""
    from drivers.errors import ChipInUseError
    server = serve()
    ref = make_chip()
    chip = BrokenPath(server.url, at=4, timeout_s=0.5, reconnect_timeout_s=3.0)
    try:
        assert_same(workload(ref, steps=2), workload(chip, steps=2))
        assert chip.link_counters["reconnects"] == 1 and chip.kept
        with pytest.raises(ChipInUseError, match="in use by another client"):
            FpgaChip(server.url, timeout_s=0.5)
        with pytest.raises(serial.SerialException, match="disconnected"):
            chip.kept[0].read(1)   # the old connection: closed by the firmware at the takeover
        stats = server.stats()
        assert stats["connections"] == 3 and stats["firmware"]["nacks"] == {"IN_USE": 1}
    finally:
        chip.close()
        for port in chip.kept:
            port.close()
        server.stop()


def test_a_serial_port_is_locked_for_one_process():
    """On a serial line (here a pty) the firmware cannot tell hosts apart; the driver holds
    the port's lock, so a second one cannot open it."""
    from drivers.errors import ChipInUseError
    server = serve("pty")
    try:
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            with pytest.raises(ChipInUseError, match="another process holds the port"):
                FpgaChip(server.url, timeout_s=0.5)
            chip.read(np.arange(3))
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            chip.read(np.arange(3))
    finally:
        server.stop()


def test_link_gone_for_good_raises_link_error():
    server = serve()
    chip = FpgaChip(server.url, timeout_s=0.2, retries=1, reconnect_timeout_s=0.3)
    server.stop()
    with pytest.raises(LinkError) as e:
        chip.read(np.arange(4))
    assert e.value.command == "READ"
    chip.close()


def test_open_fails_cleanly():
    with pytest.raises(LinkError, match="cannot open"):
        FpgaChip("socket://127.0.0.1:1", timeout_s=0.2)


def test_incompatible_major_version_is_refused():
    server = serve(protocol_version=(2, 0))
    try:
        with pytest.raises(ProtocolError, match="protocol 2.0"):
            FpgaChip(server.url, timeout_s=0.5)
    finally:
        server.stop()


def test_newer_minor_version_is_accepted():
    server = serve(protocol_version=(1, 7))
    try:
        with FpgaChip(server.url, timeout_s=0.5) as chip:
            assert chip.info().protocol_version == "1.7"
            chip.read(np.arange(3))
    finally:
        server.stop()


def test_wire_log_has_every_byte_in_hex(chip, caplog):
    with caplog.at_level(logging.DEBUG, logger="pcm_hil.wire"):
        chip.read(np.array([1, 2, 3]))
    tx = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TX")]
    rx = [r.getMessage() for r in caplog.records if r.getMessage().startswith("RX")]
    assert tx and rx and all(r.name == "pcm_hil.wire" for r in caplog.records)
    assert "a5 5a %02x %02x" % PROTOCOL_VERSION in tx[0]
    rx_bytes = sum(int(m.split()[1]) for m in rx)
    assert rx_bytes == chip.stats["READ"]["bytes_rx"]


def test_open_fpga_and_backend_url(emu):
    from hil.backend_url import open_backend

    with open_backend(emu.url) as chip:
        assert isinstance(chip, FpgaChip)
        chip.read(np.arange(3))
    with open_fpga(emu.url, timeout_s=0.5) as chip:
        assert chip.timeout_s == 0.5


def test_serial_url_options(emu):
    if not emu.url.startswith("/"):
        pytest.skip("serial:// names a device path")
    with open_fpga(f"serial://{emu.url}?baudrate=115200&timeout=0.7&reconnect=2.5"
                   "&busy_poll_us=0") as chip:
        assert chip.baudrate == 115200 and chip.timeout_s == 0.7 and chip.busy_poll_s == 0
        assert chip.reconnect_timeout_s == 2.5
        chip.read(np.arange(3))
    with pytest.raises(LinkError, match="unknown serial:// option"):
        open_fpga(f"serial://{emu.url}?speed=1")
    with pytest.raises(LinkError, match="bad value 'fast' for serial:// option busy_poll_us"):
        open_fpga(f"serial://{emu.url}?busy_poll_us=fast")


# --- what goes over the wire ------------------------------------------------------------------
def test_bytes_per_pulsed_device_and_per_read_value():
    """On a 1 Mi-device chip: ≤ 4 bytes per pulsed device (even scattered), ≤ 2 bytes per read
    value, one round trip per command."""
    geo = Geometry(1, 512, 2048)
    server = serve(geometry=geo)
    try:
        with FpgaChip(server.url, timeout_s=5.0) as chip:
            rng = np.random.default_rng(0)
            for n_dev in (2, 1000, 100_000):
                addr = rng.choice(geo.n_devices, n_dev, replace=False)
                if n_dev == 2:
                    addr = np.array([0, geo.n_devices - 1])  # the widest possible gap
                chip.stats.clear()
                chip.program(addr, rng.integers(1, 5, n_dev), PulseSpec.set())
                st = chip.stats["PROGRAM_SET"]
                assert st["round_trips"] == 1
                assert st["bytes_tx"] - 39 <= 4 * n_dev  # 20 frame + 19 PROGRAM header
                chip.read(addr)
                st = chip.stats["READ"]
                assert st["round_trips"] == 1
                assert st["bytes_rx"] - 24 == 2 * n_dev  # 20 frame + 4 count
            chip.stats.clear()
            rows = np.arange(512 * 2048).reshape(512, 2048)[:128]  # whole word lines
            chip.program(rows.ravel(), np.ones(rows.size, int), PulseSpec.set())
            assert chip.stats["PROGRAM_SET"]["bytes_tx"] < 1.13 * rows.size  # BITMAP + counts
    finally:
        server.stop()
