"""Fuzzing every receive path of the wire protocol: the streaming frame decoder, message
decoding, the driver's reply check and the firmware engine.

Inputs: arbitrary byte streams; valid frames (every golden vector, random frames) mutated by
bit flips, byte overwrites, truncation, insertion, deletion and huge length fields (with and
without a matching header CRC); valid payloads mutated and re-framed with correct CRCs (so the
message decoders and the firmware see them); all fed in pieces cut at arbitrary points.

Allowed outcomes: clean frames, FrameError items, PayloadError / ProtocolError exceptions, and
firmware replies that are well-formed frames (a NACK is fine; a NACK for an internal error is
not). Anything else (another exception, a hang, a buffer above one frame) fails.

The default run is a few hundred hypothesis examples per target (seconds). The bulk run
(`pytest -m slow tests/test_fuzz.py -s`) pushes 100,000 inputs from a seeded numpy generator
through the same harness and prints the time taken and the peak traced memory.
"""
from __future__ import annotations

import contextlib
import signal
import struct
import time
import tracemalloc
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.errors import ProtocolError
from drivers.fpga import FpgaChip
from drivers.geometry import Geometry
from firmware_interface.frame import (HEADER_LEN, OVERHEAD, SYNC, Frame, FrameDecoder,
                                      FrameError, crc16, encode_frame)
from firmware_interface.messages import Message, Nack, decode_message
from firmware_interface.protocol import NackCode, Opcode, PayloadError
from firmware_interface.vectors import golden_vectors
from sim_backend.firmware import Firmware
from sim_backend.sim_chip import SimulatedChip

VECTORS = [v for v in golden_vectors() if v.message is not None]
FRAMES = [v.data for v in VECTORS]
PAYLOADS = [(int(v.message.OPCODE), v.message.encode()) for v in VECTORS]
CAPS = (0, 20, 64, 512, 4096, 1 << 16)
GEO = Geometry(1, 16, 16)
EXTREME_U32 = (0, 1, 255, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 24, (1 << 24) + 1, 1 << 16)
EXTREME_F64 = (float("nan"), float("inf"), -float("inf"), -1.0, -0.0, 1e308, 5e-324)
WATCHDOG_S = 20.0


class Hang(Exception):
    """One input took longer than the watchdog allows."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the body runs longer than `seconds`."""
    def fire(signum, frame):
        raise Hang(f"input not handled within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- mutations ----------------------------------------------------------------------------------
MUTATIONS = ("flip", "byte", "truncate", "insert", "delete", "length", "length_raw", "u32",
             "f64", "dup")


def _set_length(b: bytearray, pos: int, length: int, fix_crc: bool) -> None:
    """Write `length` into the header of the first frame at or after pos (else the first)."""
    i = b.find(SYNC, pos)
    if i < 0:
        i = b.find(SYNC)
    if i < 0 or i + HEADER_LEN > len(b):
        return
    struct.pack_into("<I", b, i + 10, length & 0xFFFFFFFF)
    if fix_crc:
        struct.pack_into("<H", b, i + 14, crc16(bytes(b[i:i + 14])))


def mutate(data: bytes, ops: Sequence[Tuple[str, int, int]]) -> bytes:
    """Apply (kind, position, value) mutations in order; positions wrap to the data."""
    b = bytearray(data)
    for kind, pos, val in ops:
        n = len(b)
        p = pos % (n + 1)
        if kind == "flip" and n:
            b[pos % n] ^= 1 << (val % 8)
        elif kind == "byte" and n:
            b[pos % n] = val & 0xFF
        elif kind == "truncate":
            del b[p:]
        elif kind == "insert":
            b[p:p] = bytes([(val * 37 + k) & 0xFF for k in range(1 + val % 9)])
        elif kind == "delete":
            del b[p:p + 1 + val % 8]
        elif kind in ("length", "length_raw"):
            huge = (val, 1 << 31, 0xFFFFFFFF, 1 << 26, (1 << 26) + 1)[val % 5]
            _set_length(b, p, huge, fix_crc=kind == "length")
        elif kind == "u32" and n >= 4:
            q = pos % (n - 3)
            struct.pack_into("<I", b, q, EXTREME_U32[val % len(EXTREME_U32)])
        elif kind == "f64" and n >= 8:
            q = pos % (n - 7)
            struct.pack_into("<d", b, q, EXTREME_F64[val % len(EXTREME_F64)])
        elif kind == "dup" and n:
            b[p:p] = b[p:p + 1 + val % 32]
    return bytes(b)


def pieces(stream: bytes, cuts: Sequence[int]) -> List[bytes]:
    """The stream cut at the given points (wrapped into range)."""
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in zip(points, points[1:])]


# --- the harness: everything that receives bytes ---------------------------------------------
class Harness:
    """A decoder with cap `cap` feeding message decoding, the driver's reply check and a
    firmware engine on a tiny simulated chip."""

    def __init__(self, cap: int, firmware: Firmware | None = None) -> None:
        self.cap = cap
        self.decoder = FrameDecoder(cap)
        self.driver = FpgaChip("loop://", connect=False)  # only its reply check is used
        self.firmware = firmware or new_firmware(cap)
        self.counts = {"frames": 0, "frame_errors": 0, "messages": 0, "payload_errors": 0,
                       "protocol_errors": 0, "replies": 0}

    def run(self, stream: bytes, cuts: Sequence[int] = ()) -> None:
        limit = self.cap + OVERHEAD
        for piece in pieces(stream, cuts):
            items = self.decoder.feed(piece)
            assert self.decoder.buffered < limit
            assert self.decoder.high_water <= limit
            for item in items:
                self._item(item)

    def _item(self, item: object) -> None:
        if isinstance(item, FrameError):
            self.counts["frame_errors"] += 1
            assert item.code in (NackCode.BAD_CRC, NackCode.TOO_LARGE)
            if item.code is NackCode.TOO_LARGE:
                assert item.length > self.cap
            self._reply(self.firmware.handle(item))
            return
        assert isinstance(item, Frame), type(item)
        self.counts["frames"] += 1
        assert len(item.payload) <= self.cap
        try:
            msg = decode_message(item)
            assert isinstance(msg, Message)
            self.counts["messages"] += 1
        except PayloadError as e:
            assert isinstance(e.code, NackCode)
            self.counts["payload_errors"] += 1
        if item.opcode & 0x80:  # what the host does with a reply
            try:
                self.driver._decode_reply(item, "FUZZ")
            except ProtocolError:
                self.counts["protocol_errors"] += 1
        else:
            self._reply(self.firmware.handle(item))

    def _reply(self, data: bytes | None) -> None:
        """A firmware reply must be exactly one well-formed frame, never an internal error."""
        assert data is not None
        self.counts["replies"] += 1
        (frame,) = FrameDecoder().feed(data)
        assert isinstance(frame, Frame)
        msg = decode_message(frame)
        if isinstance(msg, Nack):
            assert not msg.message.startswith("internal error"), msg.message


def new_firmware(cap: int) -> Firmware:
    return Firmware(SimulatedChip(geometry=GEO, seed=0), max_payload=max(cap, 1))


def fuzz(cap: int, stream: bytes, cuts: Sequence[int] = ()) -> Harness:
    h = Harness(cap)
    with watchdog(WATCHDOG_S):
        h.run(stream, cuts)
    return h


# --- hypothesis: the default run ------------------------------------------------------------
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

caps = st.sampled_from(CAPS)
cut_points = st.lists(st.integers(0, 1 << 16), max_size=12)
mutation = st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 1 << 16), st.integers(0, 255))
random_frame = st.builds(lambda seq, op, p: encode_frame(seq, op, p),
                         st.integers(0, 0xFFFFFFFF), st.integers(0, 255),
                         st.binary(max_size=200))
frame_seed = st.one_of(st.sampled_from(FRAMES), random_frame)


@FUZZ
@given(data=st.binary(max_size=4000), cap=caps, cuts=cut_points)
def test_arbitrary_bytes(data, cap, cuts):
    fuzz(cap, data, cuts)


@FUZZ
@given(frames=st.lists(st.tuples(frame_seed, st.lists(mutation, max_size=4)), min_size=1,
                       max_size=5),
       garbage=st.lists(st.binary(max_size=24), min_size=5, max_size=5),
       cap=caps, cuts=cut_points)
def test_mutated_frames(frames, garbage, cap, cuts):
    stream = b"".join(g + mutate(f, ops) for (f, ops), g in zip(frames, garbage))
    fuzz(cap, stream, cuts)


@FUZZ
@given(seed=st.sampled_from(PAYLOADS), opcode=st.one_of(st.none(), st.integers(0, 255)),
       ops=st.lists(mutation, min_size=1, max_size=4), cuts=cut_points)
def test_mutated_payloads_with_valid_crcs(seed, opcode, ops, cuts):
    """Payload mutations re-framed with correct CRCs reach the message decoders and the
    firmware, which must answer every one with a typed NACK or a real reply."""
    op, payload = seed
    stream = encode_frame(7, op if opcode is None else opcode, mutate(payload, ops))
    h = fuzz(1 << 16, stream, cuts)
    assert h.counts["frames"] == 1


@FUZZ
@given(seed=st.sampled_from(FRAMES), ops=st.lists(mutation, min_size=1, max_size=3),
       cap=caps)
def test_decoder_recovers_after_any_mutated_frame(seed, ops, cap):
    """Whatever came before, a good frame after it (past any unfinished oversized frame or
    partial frame) is delivered: resynchronisation always works."""
    bad = mutate(seed, ops)
    good = encode_frame(0xC0FFEE, Opcode.STATUS)
    h = Harness(cap)
    with watchdog(WATCHDOG_S):
        h.run(bad)
        dec = h.decoder
        skip = dec.wanted() if dec.buffered == 0 and dec.too_large else 0
        if skip > 1 << 20:
            # Inside an oversized frame of up to 4 GiB: its bytes pass unbuffered and are
            # counted down exactly (feeding all of them would only take time).
            dec.feed(b"\x00" * (1 << 20))
            assert dec.buffered == 0 and dec.wanted() == skip - (1 << 20)
            return
        # Bytes an oversized or partial frame still waits for: feed filler that contains no
        # sync pattern, then the good frame, which must come out.
        dec.feed(b"\x00" * (skip + cap + OVERHEAD))
        out = dec.feed(good)
    assert [f.seq for f in out if isinstance(f, Frame)] == [0xC0FFEE]


def test_one_huge_feed_never_buffers_more_than_one_frame():
    """A flood handed over in one call is consumed in pieces: the buffer's high-water mark
    stays at one frame of the cap, however much arrives at once."""
    rng = np.random.default_rng(5)
    for cap in (0, 64, 4096):
        dec = FrameDecoder(cap)
        flood = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
        frames = b"".join(encode_frame(i, Opcode.READ, bytes(min(cap, 40))) for i in range(50))
        out = dec.feed(flood + frames + flood[:1000] + frames)
        assert dec.high_water <= cap + OVERHEAD
        assert [f.seq for f in out if isinstance(f, Frame)][-50:] == list(range(50))


# --- the bulk run (slow) ----------------------------------------------------------------------
def bulk_inputs(rng: np.random.Generator, n: int) -> Iterator[Tuple[int, bytes, List[int]]]:
    """(cap, stream, cuts) for n inputs: a third each of arbitrary bytes, mutated frame
    streams and mutated payloads re-framed with valid CRCs."""
    kinds = np.array(MUTATIONS)
    for i in range(n):
        cap = int(CAPS[rng.integers(len(CAPS))])
        r = i % 3
        if r == 0:
            stream = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
            if rng.random() < 0.5:  # sprinkle sync patterns so headers get parsed
                b = bytearray(stream)
                for p in rng.integers(0, max(1, len(b) - 1), int(rng.integers(1, 8))):
                    b[int(p):int(p) + 2] = SYNC
                stream = bytes(b)
        elif r == 1:
            parts = []
            for _ in range(int(rng.integers(1, 5))):
                if rng.random() < 0.7:
                    f = FRAMES[int(rng.integers(len(FRAMES)))]
                else:
                    f = encode_frame(int(rng.integers(0, 1 << 32)), int(rng.integers(0, 256)),
                                     rng.integers(0, 256, int(rng.integers(0, 200)),
                                                  dtype=np.uint8).tobytes())
                ops = [(str(kinds[int(k)]), int(p), int(v)) for k, p, v in zip(
                    rng.integers(0, len(kinds), int(rng.integers(0, 4))),
                    rng.integers(0, 1 << 16, 4), rng.integers(0, 256, 4))]
                parts.append(rng.integers(0, 256, int(rng.integers(0, 16)),
                                          dtype=np.uint8).tobytes())
                parts.append(mutate(f, ops))
            stream = b"".join(parts)
        else:
            op, payload = PAYLOADS[int(rng.integers(len(PAYLOADS)))]
            if rng.random() < 0.1:
                op = int(rng.integers(0, 256))
            ops = [(str(kinds[int(k)]), int(p), int(v)) for k, p, v in zip(
                rng.integers(0, len(kinds), int(rng.integers(1, 4))),
                rng.integers(0, 1 << 16, 4), rng.integers(0, 256, 4))]
            stream = encode_frame(int(rng.integers(0, 1 << 32)), op, mutate(payload, ops))
            cap = 1 << 16
        cuts = [int(c) for c in rng.integers(0, len(stream) + 1, int(rng.integers(0, 8)))]
        yield cap, stream, cuts


@pytest.mark.slow
def test_bulk_fuzz_100k_inputs(capsys):
    n = 100_000
    rng = np.random.default_rng(20240601)
    firmware = {cap: new_firmware(cap) for cap in CAPS}
    totals: dict = {}
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        for i, (cap, stream, cuts) in enumerate(bulk_inputs(rng, n)):
            if i % 2000 == 0:  # a fresh chip now and then: fuzzed commands accumulate state
                firmware = {c: new_firmware(c) for c in CAPS}
            h = Harness(cap, firmware[cap])
            with watchdog(WATCHDOG_S):
                h.run(stream, cuts)
            for k, v in h.counts.items():
                totals[k] = totals.get(k, 0) + v
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with capsys.disabled():
        print(f"\nbulk fuzz: {n} inputs in {elapsed:.1f} s ({n / elapsed:.0f}/s, tracemalloc "
              f"on), peak traced memory {peak / 2**20:.1f} MiB; outcomes {totals}")
    assert totals["frames"] > 10_000 and totals["payload_errors"] > 1_000
    assert peak < 512 * 2**20
