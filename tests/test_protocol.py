"""The wire protocol codec: golden vectors, the streaming decoder, address sets, ADC codes."""
from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_interface import adc
from firmware_interface.addresses import (AddressMode, address_set_sizes, decode_address_set,
                                          encode_address_set, varint_decode, varint_encode)
from firmware_interface.frame import (HEADER_LEN, OVERHEAD, SYNC, Frame, FrameDecoder,
                                      FrameError, crc16, crc32, encode_frame)
from firmware_interface.messages import (MESSAGE_TYPES, Hello, MatvecReply, MatvecRequest, Nack,
                                         ProgramRequest, ReadReply, ReadRequest, StatusRequest,
                                         decode_message)
from firmware_interface.protocol import (PROTOCOL_VERSION, REMEMBERED_OPCODES, Capability,
                                         NackCode, Opcode, PayloadError, PulseCode)
from firmware_interface.vectors import (check_vectors, golden_vectors, parse_hex, read_vector,
                                        render_hex)

VECTORS = golden_vectors()


# --- golden vectors ---------------------------------------------------------------------------
@pytest.mark.parametrize("vec", VECTORS, ids=[v.name for v in VECTORS])
def test_golden_vector_bytes(vec):
    """The shipped .hex file equals what the codec builds, byte for byte."""
    assert read_vector(vec.name) == vec.data
    assert parse_hex(render_hex(vec)) == vec.data


@pytest.mark.parametrize("vec", [v for v in VECTORS if v.message is not None],
                         ids=[v.name for v in VECTORS if v.message is not None])
def test_golden_vector_decodes_to_its_message(vec):
    items = FrameDecoder().feed(read_vector(vec.name))
    assert len(items) == 1 and isinstance(items[0], Frame)
    frame = items[0]
    assert frame.seq == vec.seq and frame.opcode == vec.message.OPCODE
    msg = decode_message(frame)
    assert msg == vec.message
    assert msg.frame(vec.seq) == vec.data


def test_every_opcode_and_nack_code_has_a_vector():
    names = {v.name for v in VECTORS}
    assert {f"nack_{c.name.lower()}" for c in NackCode} <= names
    covered = {v.message.OPCODE for v in VECTORS if v.message is not None}
    assert covered == set(Opcode)


def test_vector_files_match_codec():
    assert check_vectors() == []


def test_stream_resync_vector():
    items = FrameDecoder().feed(read_vector("stream_resync"))
    assert isinstance(items[0], FrameError) and items[0].code is NackCode.BAD_CRC
    assert items[0].seq == 0x30
    assert isinstance(items[1], Frame) and items[1].seq == 0x31
    assert decode_message(items[1]) == Hello()
    assert len(items) == 2


def test_crc_check_values():
    assert crc16(b"123456789") == 0x29B1
    assert crc32(b"123456789") == 0xCBF43926


def test_header_layout():
    f = encode_frame(0x01020304, Opcode.READ, b"\x01\x02\x03")
    assert f[:2] == SYNC and f[2:4] == bytes(PROTOCOL_VERSION)
    assert f[4:8] == b"\x04\x03\x02\x01" and f[8] == 0x10 and f[9] == 0
    assert struct.unpack_from("<I", f, 10)[0] == 3
    assert struct.unpack_from("<H", f, 14)[0] == crc16(f[:14])
    assert struct.unpack_from("<I", f, len(f) - 4)[0] == crc32(f[:-4])
    assert len(f) == OVERHEAD + 3


# --- decoder ----------------------------------------------------------------------------------
def _frames(n: int = 5):
    rng = np.random.default_rng(0)
    return [encode_frame(i + 100, Opcode.READ, rng.integers(0, 256, i * 7).astype(np.uint8)
                         .tobytes()) for i in range(n)]


def test_decoder_split_at_every_byte():
    stream = b"".join(_frames())
    dec = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += dec.feed(stream[i:i + 1])
    assert [f.seq for f in out] == [100, 101, 102, 103, 104]
    assert dec.buffered == 0 and dec.garbage_bytes == 0


def test_decoder_concatenated_in_one_feed():
    out = FrameDecoder().feed(b"".join(_frames()))
    assert [f.seq for f in out] == [100, 101, 102, 103, 104]


def test_decoder_resyncs_after_garbage_and_bad_header():
    frames = _frames(3)
    bad_header = bytearray(frames[1])
    bad_header[10] ^= 0x40  # corrupt the length: header CRC catches it
    stream = b"junk\xA5\x5Amore junk" + frames[0] + bytes(bad_header) + b"\xA5" + frames[2]
    dec = FrameDecoder()
    out = dec.feed(stream)
    assert [f.seq for f in out] == [100, 102]
    assert dec.bad_headers >= 2 and dec.garbage_bytes > 0


def test_decoder_reports_bad_crc_with_header_fields():
    f = bytearray(_frames(2)[1])
    f[HEADER_LEN + 2] ^= 1
    out = FrameDecoder().feed(bytes(f) + _frames(1)[0])
    assert isinstance(out[0], FrameError) and out[0].code is NackCode.BAD_CRC
    assert out[0].seq == 101 and out[0].opcode == Opcode.READ
    assert isinstance(out[1], Frame) and out[1].seq == 100


def test_decoder_caps_length_without_buffering():
    dec = FrameDecoder(max_payload=1024)
    big = encode_frame(7, Opcode.READ, bytes(5000))
    nxt = encode_frame(8, Opcode.STATUS)
    out = dec.feed(big[:HEADER_LEN])
    assert len(out) == 1 and out[0].code is NackCode.TOO_LARGE and out[0].seq == 7
    assert out[0].length == 5000
    for i in range(HEADER_LEN, len(big), 512):
        assert dec.feed(big[i:i + 512]) == []
        assert dec.buffered <= HEADER_LEN
    assert [f.seq for f in dec.feed(nxt)] == [8]


def test_decoder_wanted_is_bounded_read_size():
    f = encode_frame(1, Opcode.READ, bytes(100))
    dec = FrameDecoder()
    assert dec.wanted() == HEADER_LEN
    dec.feed(f[:5])
    assert dec.wanted() == HEADER_LEN - 5
    dec.feed(f[5:HEADER_LEN])
    assert dec.wanted() == len(f) - HEADER_LEN
    assert len(dec.feed(f[HEADER_LEN:])) == 1


_no_sync_byte = st.binary(max_size=40).map(lambda b: b.replace(b"\xA5", b"\x00"))


@settings(max_examples=150, deadline=None)
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
       garbage=st.lists(_no_sync_byte, min_size=7, max_size=7),
       cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_decoder_property_garbage_and_any_split(payloads, garbage, cuts):
    """Frames separated by garbage, cut anywhere, come out complete and in order."""
    frames = [encode_frame(i, Opcode.READ, p) for i, p in enumerate(payloads)]
    stream = garbage[0] + b"".join(f + g for f, g in zip(frames, garbage[1:]))
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    dec = FrameDecoder()
    out = []
    for a, b in zip(points, points[1:]):
        out += dec.feed(stream[a:b])
    assert [(f.seq, f.payload) for f in out] == list(enumerate(payloads))


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=3000), cap=st.integers(0, 512))
def test_decoder_property_never_raises_and_stays_bounded(data, cap):
    dec = FrameDecoder(max_payload=cap)
    for i in range(0, len(data), 97):
        dec.feed(data[i:i + 97])
        assert dec.buffered <= HEADER_LEN + cap + 4


# --- address sets -----------------------------------------------------------------------------
@st.composite
def _address_sets(draw):
    n = draw(st.integers(0, 200))
    hi = draw(st.sampled_from([300, 4096, 1 << 20, 1 << 32]))
    vals = draw(st.lists(st.integers(0, hi - 1), min_size=n, max_size=n, unique=True))
    return np.array(sorted(vals), dtype=np.uint64)


@settings(max_examples=200, deadline=None)
@given(addr=_address_sets(), mode=st.sampled_from([None, *AddressMode]))
def test_address_set_roundtrip(addr, mode):
    span = int(addr[-1] - addr[0]) + 1 if addr.size else 0
    if mode is AddressMode.BITMAP and span > (1 << 28):
        with pytest.raises(ValueError):
            encode_address_set(addr, mode)  # the encoder refuses absurd bitmaps
        return
    if mode is AddressMode.BITMAP and span > (1 << 22):
        return  # legal but slow to build in a property test
    buf = encode_address_set(addr, mode)
    out, end = decode_address_set(buf)
    assert end == len(buf)
    assert np.array_equal(out, addr.astype(np.uint32))
    if mode is None:
        assert len(buf) - 9 == min(address_set_sizes(addr).values())


@settings(max_examples=100, deadline=None)
@given(addr=_address_sets())
def test_delta_costs_at_most_3_bytes_per_address_below_2_21(addr):
    addr = addr[addr < (1 << 21)]
    body = len(encode_address_set(addr)) - 9
    assert body <= 3 * addr.size


@settings(max_examples=300, deadline=None)
@given(addr=_address_sets(), body=st.binary(max_size=60), count=st.integers(0, 50))
def test_small_set_fast_paths_equal_the_vectorised_code(addr, body, count):
    """Sets of up to SMALL_SET addresses are coded in plain Python: same bytes, same values,
    same NACK codes as the vectorised path (SMALL_SET = 0 forces that one)."""
    import firmware_interface.addresses as A

    def both(fn, *args):
        out, saved = [], A.SMALL_SET
        try:
            for small in (saved, 0):
                A.SMALL_SET = small
                try:
                    out.append(fn(*args))
                except PayloadError as e:
                    out.append(e.code)
        finally:
            A.SMALL_SET = saved
        return out

    enc = both(encode_address_set, addr)
    assert enc[0] == enc[1]
    for delta in (struct.pack("<BII", 1, count, len(body)) + body,
                  encode_address_set(addr, AddressMode.DELTA)):
        fast, slow = both(decode_address_set, delta)
        if isinstance(slow, NackCode):
            assert fast == slow
        else:
            assert np.array_equal(fast[0], slow[0]) and fast[0].dtype == slow[0].dtype
            assert fast[1] == slow[1]


def test_address_set_errors():
    dup = struct.pack("<BII", 0, 3, 12) + np.array([1, 5, 5], "<u4").tobytes()
    with pytest.raises(PayloadError) as e:
        decode_address_set(dup)
    assert e.value.code is NackCode.DUPLICATE_ADDRESS and list(e.value.devices) == [5]
    desc = struct.pack("<BII", 0, 2, 8) + np.array([5, 1], "<u4").tobytes()
    assert _code(decode_address_set, desc) is NackCode.BAD_PAYLOAD
    delta_dup = struct.pack("<BII", 1, 2, 2) + bytes([3, 0])
    assert _code(decode_address_set, delta_dup) is NackCode.DUPLICATE_ADDRESS
    assert _code(decode_address_set, struct.pack("<BII", 9, 0, 0)) is NackCode.BAD_PAYLOAD
    assert _code(decode_address_set, struct.pack("<BII", 0, 2, 8)) is NackCode.BAD_LENGTH
    bitmap_count = struct.pack("<BII", 2, 3, 9) + struct.pack("<II", 0, 8) + b"\x03"
    assert _code(decode_address_set, bitmap_count) is NackCode.BAD_LENGTH
    bitmap_pad = struct.pack("<BII", 2, 1, 9) + struct.pack("<II", 0, 4) + b"\x11"
    assert _code(decode_address_set, bitmap_pad) is NackCode.BAD_PAYLOAD


def _code(fn, *args):
    with pytest.raises(PayloadError) as e:
        fn(*args)
    return e.value.code


def test_varint_rejects_bad_forms():
    assert varint_encode(np.array([0, 127, 128, 2**32 - 1], np.uint64)) == bytes(
        [0, 127, 0x80, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
    assert _code(varint_decode, bytes([0x80, 0x00]), 1) is NackCode.BAD_PAYLOAD  # overlong
    assert _code(varint_decode, bytes([0xFF] * 5 + [1]), 1) is NackCode.BAD_PAYLOAD
    assert _code(varint_decode, bytes([0x80]), 1) is NackCode.BAD_LENGTH  # unterminated
    assert _code(varint_decode, bytes([1, 2]), 1) is NackCode.BAD_LENGTH
    assert _code(varint_decode, bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x1F]), 1) \
        is NackCode.ADDRESS_OUT_OF_RANGE


# --- messages ---------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(addr=_address_sets(), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(list(PulseCode)))
def test_program_roundtrip(addr, seed, kind):
    n = np.random.default_rng(seed).integers(0, 256, addr.size)
    msg = ProgramRequest(kind, seed % 4_000_000, seed % 10_000_000, addr, n)
    back = ProgramRequest.decode(msg.encode())
    assert back == msg
    assert np.array_equal(back.n_pulses, n) and back.kind is kind


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 6), n=st.integers(1, 6), k=st.integers(0, 3),
       seed=st.integers(0, 1000), affine=st.booleans())
def test_matvec_roundtrip(m, n, k, seed, affine):
    rng = np.random.default_rng(seed)
    block = (np.arange(m)[:, None] * 2048 + np.arange(n)[None, :] + 7 if affine
             else rng.integers(0, 1 << 20, (m, n)))
    x = rng.standard_normal(n) if k == 0 else rng.standard_normal((n, k))
    msg = MatvecRequest(block, x)
    back = MatvecRequest.decode(msg.encode())
    assert np.array_equal(back.block, block) and np.array_equal(back.x, x)
    assert back.x.shape == x.shape
    out = rng.standard_normal((m,) if k == 0 else (m, k)).astype(np.float32)
    assert np.array_equal(MatvecReply.decode(MatvecReply(out).encode()).values, out)


def test_matvec_sends_float32_only_when_lossless():
    assert MatvecRequest(np.zeros((1, 2)), np.array([1.0, 0.5])).x_dtype == 4
    assert MatvecRequest(np.zeros((1, 2)), np.array([0.1, 0.5])).x_dtype == 8
    affine = MatvecRequest(np.arange(6).reshape(2, 3), np.ones(3)).encode()
    assert len(affine) == 16 + 12 + 12


def test_message_decode_errors():
    assert _code(StatusRequest.decode, b"abc") is NackCode.BAD_LENGTH
    assert _code(ReadReply.decode, struct.pack("<I", 3) + b"\0\0") is NackCode.BAD_LENGTH
    bad_kind = struct.pack("<BxII", 7, 1, 1) + encode_address_set(np.array([1]))
    assert _code(ProgramRequest.decode, bad_kind + b"\x01") is NackCode.BAD_PAYLOAD
    short = struct.pack("<BxII", 1, 1, 1) + encode_address_set(np.array([1, 2]))
    assert _code(ProgramRequest.decode, short + b"\x01") is NackCode.BAD_LENGTH
    assert _code(decode_message, Frame(1, 0x55, b"")) is NackCode.UNKNOWN_OPCODE
    mv = MatvecRequest(np.zeros((2, 2)), np.ones(2)).encode()
    assert _code(MatvecRequest.decode, mv[:-1]) is NackCode.BAD_LENGTH


def test_every_opcode_has_a_type():
    assert set(MESSAGE_TYPES) == set(Opcode)


def test_nack_lists_at_most_16_devices():
    n = Nack(NackCode.ADDRESS_OUT_OF_RANGE, Opcode.READ, "x", np.arange(100))
    back = Nack.decode(n.encode())
    assert back.n_devices == 100 and back.devices.size == 16


def test_read_request_rejects_unsorted_input():
    with pytest.raises(ValueError):
        ReadRequest(np.array([3, 1])).encode()


# --- ADC model --------------------------------------------------------------------------------
@pytest.mark.parametrize("g_max", [20.0, 1.0, 37.3, 100.0])
def test_adc_roundtrip_is_idempotent_for_every_code(g_max):
    fs = adc.adc_full_scale_us(g_max)
    codes = np.arange(adc.ADC_CODE_MAX + 1)
    values = adc.adc_dequantise(codes, fs)
    assert values.dtype == np.float32
    assert np.array_equal(adc.adc_quantise(values, fs), codes)
    assert np.array_equal(adc.adc_roundtrip(values, fs), values)


def test_adc_resolution_and_clipping():
    fs = adc.adc_full_scale_us(20.0)
    assert adc.adc_lsb_us(fs) < 0.0004
    g = np.array([-1.0, 0.0, 10.0, 24.999, 30.0, np.nan])
    codes = adc.adc_quantise(g, fs)
    assert codes.dtype == np.uint16
    assert codes[0] == 0 and codes[4] == adc.ADC_CODE_MAX and codes[5] == 0
    assert abs(adc.adc_dequantise(codes, fs)[2] - 10.0) <= adc.adc_lsb_us(fs) / 2 + 1e-6


def test_simulated_chip_reads_through_the_adc_model():
    from drivers.geometry import Geometry
    from sim_backend.sim_chip import SimulatedChip

    chip = SimulatedChip(geometry=Geometry(1, 8, 8), seed=1)
    v = chip.read(np.arange(64))
    fs = adc.adc_full_scale_us(chip.model.g_max_us)
    assert np.array_equal(adc.adc_roundtrip(v, fs), v)


def test_firmware_interface_imports_numpy_and_stdlib_only():
    code = ("import sys, firmware_interface, firmware_interface.vectors, "
            "firmware_interface.make_vectors\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('drivers', 'sim_backend', 'hil', 'serial', 'yaml'))\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# --- protocol 1.1: the simulator clock; bounded MATVEC blocks -----------------------------------
def test_clock_messages_roundtrip_and_validation():
    from firmware_interface.messages import (AdvanceClockAck, AdvanceClockRequest, ClockReply,
                                             ClockRequest)
    from firmware_interface.protocol import REMEMBERED_OPCODES

    for msg in (AdvanceClockRequest(0.0), AdvanceClockRequest(3821.4), AdvanceClockAck(1.5),
                ClockReply(38.6)):
        assert len(msg.encode()) == 8 and type(msg).decode(msg.encode()) == msg
    assert ClockRequest.decode(b"") == ClockRequest()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            AdvanceClockRequest(bad)
        assert _code(AdvanceClockRequest.decode, struct.pack("<d", bad)) is NackCode.BAD_PAYLOAD
    assert _code(AdvanceClockRequest.decode, bytes(4)) is NackCode.BAD_LENGTH
    assert _code(ClockRequest.decode, bytes(1)) is NackCode.BAD_LENGTH
    assert Opcode.ADVANCE_CLOCK in REMEMBERED_OPCODES and Opcode.CLOCK not in REMEMBERED_OPCODES


def test_matvec_blocks_are_bounded():
    """A 12-byte AFFINE body must not make the receiver build billions of addresses."""
    from firmware_interface.addresses import AFFINE, MAX_BLOCK_ELEMENTS

    def affine(m, n, k):
        return (struct.pack("<IIIBBBx", m, n, k, 1, 4, 1 if k == 1 else 2)
                + AFFINE.pack(0, 0, 0) + bytes(4 * n * k))

    assert MatvecRequest.decode(affine(4096, 4096, 1)).block.shape == (4096, 4096)
    for m, n, k in ((8192, 4096, 1), (1 << 25, 1, 1), (0xFFFFFFFF, 1, 1), (1 << 13, 1, 1 << 12)):
        assert m * max(n, k) > MAX_BLOCK_ELEMENTS
        assert _code(MatvecRequest.decode, affine(m, n, k)) is NackCode.BAD_PAYLOAD


@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 6), base=st.integers(0, 2**32 - 1),
       rs=st.integers(-2**31, 2**31 - 1), cs=st.integers(-2**31, 2**31 - 1),
       small=st.booleans())
def test_affine_block_matches_its_definition(m, n, base, rs, cs, small):
    from firmware_interface.addresses import AFFINE, decode_block_body

    if small:
        base, rs, cs = base % 100, rs % 41 - 20, cs % 41 - 20
    grid = base + np.arange(m)[:, None] * rs + np.arange(n)[None, :] * cs
    body = AFFINE.pack(base, rs, cs)
    if (grid >= 0).all() and (grid < 2**32).all():
        out = decode_block_body(1, m, n, body)
        assert out.dtype == np.uint32 and np.array_equal(out, grid)
    else:
        with pytest.raises(PayloadError) as e:
            decode_block_body(1, m, n, body)
        assert e.value.code is NackCode.ADDRESS_OUT_OF_RANGE and e.value.devices.size


# --- protocol 1.3: boot identity, command history, one client at a time ---------------------
def test_history_reply_bytes_are_its_documented_layout():
    from firmware_interface.messages import HistoryReply, HistoryRequest

    reply = HistoryReply(0x0123456789ABCDEF, 41, int(Opcode.PROGRAM_READ), 57, 2, 3, 50, 2, 0)
    b = reply.encode()
    assert len(b) == 64
    assert b[0:8] == bytes.fromhex("efcdab8967452301")          # u64 boot_id
    assert b[8:12] == bytes.fromhex("29000000") and b[12] == 0x21  # u32 last_seq, u8 opcode
    assert b[13:16] == bytes(3)                                    # reserved
    assert struct.unpack_from("<6Q", b, 16) == (57, 2, 3, 50, 2, 0)
    # a later minor may append fields: a host ignores them; a short reply is refused
    assert HistoryReply.decode(b + bytes(8)) == reply
    assert _code(HistoryReply.decode, b[:63]) is NackCode.BAD_LENGTH
    assert HistoryRequest().encode() == b"" and HistoryRequest.decode(b"") == HistoryRequest()
    assert Opcode.HISTORY not in REMEMBERED_OPCODES and Opcode.HISTORY_REPLY == 0x83


def test_hello_names_a_session_only_from_1_3():
    assert Hello().encode() == b""
    assert Hello(0x5E55104F00000001).encode() == bytes.fromhex("010000004f10555e")
    assert Hello.decode(bytes.fromhex("010000004f10555e")).session == 0x5E55104F00000001
    assert _code(Hello.decode, bytes(8)) is NackCode.BAD_PAYLOAD   # session 0 names none
    assert _code(Hello.decode, bytes(4)) is NackCode.BAD_LENGTH


def test_info_trailing_boot_and_session_are_optional():
    """A 1.2 INFO (no trailing fields) decodes with boot_id and session None; a 1.3 one ends
    with u64 boot_id, u64 session; bytes a later minor appends are ignored."""
    from firmware_interface.messages import InfoReply

    v13 = next(v.message for v in VECTORS if v.name == "info_reply")
    b = v13.encode()
    assert b[-16:] == struct.pack("<QQ", 0x0123456789ABCDEF, 0x5E55104F00000001)
    old = InfoReply.decode(b[:-16])
    assert old.boot_id is None and old.session is None and old.chip_id == v13.chip_id
    assert old.encode() == b[:-16]
    later = InfoReply.decode(b + b"\x07" * 12)
    assert (later.boot_id, later.session) == (v13.boot_id, v13.session)
    assert later.capability_flags & Capability.HISTORY


def test_in_use_is_a_frozen_layout_nack():
    n = Nack(NackCode.IN_USE, int(Opcode.HELLO), "the chip is in use by another client")
    b = n.encode()
    assert b[:2] == b"\x0d\x00" and b[2] == 0x01
    assert decode_message(next(iter(FrameDecoder().feed(n.frame(5))))).message == \
        "the chip is in use by another client"
    assert not NackCode.IN_USE.retryable
