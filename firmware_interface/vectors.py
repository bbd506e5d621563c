"""Golden test vectors: frames built by this codec, written as annotated hex.

Any firmware implementation can be checked against firmware_interface/vectors/*.hex byte for
byte; the tests check that this codec still produces (and decodes) every one of them. The files
are generated, never edited: `python -m firmware_interface.make_vectors`.

Hex file format: `#` starts a comment to the end of the line; everything else is pairs of hex
digits separated by white space.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from firmware_interface.adc import adc_full_scale_us
from firmware_interface.addresses import AddressMode
from firmware_interface.frame import HEADER, HEADER_LEN, TRAILER_LEN
from firmware_interface.messages import (AdvanceClockAck, AdvanceClockRequest, ClockReply,
                                         ClockRequest, Hello, HistoryReply, HistoryRequest,
                                         InfoReply, MatvecReply, MatvecRequest, Message,
                                         Nack, ProgramAck, ProgramReadReply,
                                         ProgramReadRequest, ProgramRequest, ReadExactReply,
                                         ReadExactRequest, ReadReply, ReadRequest, SafeStateAck,
                                         SafeStateRequest, StatusReply, StatusRequest)
from firmware_interface.protocol import (PROTOCOL_VERSION, Capability, NackCode, Opcode,
                                         PulseCode)

VECTOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


@dataclass(frozen=True)
class Vector:
    """One golden vector: a name, what it shows, and its bytes."""

    name: str
    description: str
    data: bytes
    message: Optional[Message] = None  # the message of a single-frame vector
    seq: int = 0


def _msg(name: str, description: str, seq: int, message: Message) -> Vector:
    return Vector(name, description, message.frame(seq), message, seq)


def _sample_info() -> InfoReply:
    return InfoReply(PROTOCOL_VERSION, 1, 512, 2048, 0.1, 20.0, adc_full_scale_us(20.0), 16, 16,
                     int(Capability.MATVEC | Capability.EXACT_READ | Capability.STATE_FILE
                         | Capability.SIM_CLOCK | Capability.PROGRAM_READ | Capability.HISTORY),
                     1 << 24, "sim", "emu-1",
                     (("max_pulses_per_device", 255.0), ("set_amplitude_v_max", 2.0),
                      ("reset_amplitude_v_max", 4.0), ("width_ns_max", 10000.0)),
                     boot_id=0x0123456789ABCDEF, session=0x5E55104F00000001)


def golden_vectors() -> List[Vector]:
    """Every vector, in a fixed order (the file names are the vector names)."""
    addr = np.array([0, 1, 2, 5, 1000, 70000, 1048575], dtype=np.uint32)
    dense = np.array([4096, 4097, 4099, 4100, 4101, 4102, 4103, 4104, 4110], dtype=np.uint32)
    v: List[Vector] = [
        _msg("hello", "HELLO from a host speaking protocol {}.{}".format(*PROTOCOL_VERSION),
             0x01020304, Hello()),
        _msg("hello_session", "HELLO taking over session 0x5E55104F00000001 (a host "
             "reconnecting, protocol 1.3)", 0x01020305, Hello(0x5E55104F00000001)),
        _msg("info_reply", "INFO: 1 x 512 x 2048 simulated chip, 16-bit ADC, full scale 25 uS, "
             "capabilities MATVEC | EXACT_READ | STATE_FILE | SIM_CLOCK | PROGRAM_READ | "
             "HISTORY, boot 0x0123456789ABCDEF, session 0x5E55104F00000001",
             0x01020304, _sample_info()),
        _msg("status_request", "STATUS", 7, StatusRequest()),
        _msg("status_reply", "STATUS_REPLY: last executed seq 6, lines idle", 7,
             StatusReply(6, True, True, 6, 1, 1200, 64, 4096, 2, 1)),
        _msg("history_request", "HISTORY (protocol 1.3)", 8, HistoryRequest()),
        _msg("history_reply", "HISTORY_REPLY: boot 0x0123456789ABCDEF; the last state-changing "
             "command was PROGRAM_READ seq 41; 57 executed: 2 READ, 3 PROGRAM, 50 PROGRAM_READ, "
             "2 MATVEC, 0 ADVANCE_CLOCK", 8,
             HistoryReply(0x0123456789ABCDEF, 41, int(Opcode.PROGRAM_READ), 57, 2, 3, 50, 2, 0)),
        _msg("read_request_raw", "READ of 3 devices, RAW address set", 8,
             ReadRequest(np.array([3, 70000, 1048575], np.uint32), AddressMode.RAW)),
        _msg("read_request_delta", f"READ of {addr.tolist()}, DELTA (varint gap) address set",
             9, ReadRequest(addr, AddressMode.DELTA)),
        _msg("read_request_bitmap", f"READ of {dense.tolist()}, BITMAP address set", 10,
             ReadRequest(dense, AddressMode.BITMAP)),
        _msg("read_reply", "READ_REPLY: codes 0, 1, 2621 (~1 uS), 65535 (full scale)", 10,
             ReadReply(np.array([0, 1, 2621, 65535], np.uint16))),
        _msg("read_exact_request", "READ_EXACT of devices 0 and 1 (DELTA)", 11,
             ReadExactRequest(np.array([0, 1], np.uint32))),
        _msg("read_exact_reply", "READ_EXACT_REPLY: 0.1 uS and 12.5 uS as float32", 11,
             ReadExactReply(np.array([0.1, 12.5], np.float32))),
        _msg("program_set", "PROGRAM SET 1.0 V 50 ns: devices " + str(addr.tolist())
             + " get 1..7 pulses (DELTA)", 12,
             ProgramRequest(PulseCode.SET, 1_000_000, 50_000, addr,
                            np.arange(1, 8, dtype=np.uint8))),
        _msg("program_reset", f"PROGRAM RESET 2.5 V 50 ns: one pulse each to {dense.tolist()}"
             " (BITMAP)", 13,
             ProgramRequest(PulseCode.RESET, 2_500_000, 50_000, dense,
                            np.ones(dense.size, np.uint8), AddressMode.BITMAP)),
        _msg("program_ack", "PROGRAM_ACK: 7 devices, 28 pulses", 12, ProgramAck(7, 28)),
        _msg("program_read", "PROGRAM_READ SET 1.0 V 50 ns: devices 3 and 70000 get 1 and 2 "
             "pulses, device 1048575 none; all three are read back (RAW, protocol 1.2)", 19,
             ProgramReadRequest(PulseCode.SET, 1_000_000, 50_000,
                                np.array([3, 70000, 1048575], np.uint32),
                                np.array([1, 2, 0], np.uint8), AddressMode.RAW)),
        _msg("program_read_reply", "PROGRAM_READ_REPLY: 3 devices, 3 pulses, codes 2621, "
             "5243, 262", 19, ProgramReadReply(3, 3, np.array([2621, 5243, 262], np.uint16))),
        _msg("matvec_request_affine", "MATVEC on the 2 x 3 block at rows 0-1, cols 4-6 of a "
             "2048-column array (AFFINE), x = [1, 0.5, -1] float32", 14,
             MatvecRequest(np.array([[4, 5, 6], [2052, 2053, 2054]], np.uint32),
                           np.array([1.0, 0.5, -1.0]))),
        _msg("matvec_request_list", "MATVEC on an irregular 2 x 2 block (LIST), x a 2 x 2 "
             "float64 matrix", 15,
             MatvecRequest(np.array([[9, 3], [7, 100]], np.uint32),
                           np.array([[0.1, 1.0], [2.0, -0.25]]))),
        _msg("matvec_reply", "MATVEC_REPLY: two float32 currents", 14,
             MatvecReply(np.array([1.5, -2.25], np.float32))),
        _msg("safe_state", "SAFE_STATE", 16, SafeStateRequest()),
        _msg("safe_state_ack", "SAFE_STATE_ACK", 16, SafeStateAck()),
        _msg("advance_clock", "ADVANCE_CLOCK by 3821.4 s (simulators only)", 17,
             AdvanceClockRequest(3821.4)),
        _msg("advance_clock_ack", "ADVANCE_CLOCK_ACK: the clock now reads 3860.0 s", 17,
             AdvanceClockAck(3860.0)),
        _msg("clock_request", "CLOCK (simulators only)", 18, ClockRequest()),
        _msg("clock_reply", "CLOCK_REPLY: 38.6 s", 18, ClockReply(38.6)),
    ]
    for code in NackCode:
        devices = np.array([1048576], np.uint32) if code in (
            NackCode.ADDRESS_OUT_OF_RANGE, NackCode.DUPLICATE_ADDRESS) else np.zeros(0)
        v.append(_msg(f"nack_{code.name.lower()}", f"NACK {code.name} (0x{int(code):04X})",
                      0x20 + int(code), Nack(code, int(Opcode.READ), code.name.lower(),
                                             devices)))
    good = Hello().frame(0x31)
    bad = bytearray(StatusRequest().frame(0x30))
    bad[-1] ^= 0xFF
    stream = b"\x00\xA5\x13" + b"\xA5\x5A\x01\x00" + bytes(bad) + good
    v.append(Vector("stream_resync", "decoder test: garbage (incl. a false sync), a STATUS "
                    "frame (seq 0x30) with a corrupted CRC-32 -> BAD_CRC, then a good HELLO "
                    "(seq 0x31)", stream))
    return v


def _fields(frame: bytes) -> List[str]:
    """Annotated hex lines of one frame."""
    _, major, minor, seq, opcode, flags, length, hcrc = HEADER.unpack_from(frame)
    try:
        opname = Opcode(opcode).name
    except ValueError:
        opname = "?"

    def hx(b: bytes) -> str:
        return " ".join(f"{x:02x}" for x in b)

    lines = [f"{hx(frame[0:2]):<24}# sync",
             f"{hx(frame[2:4]):<24}# version {major}.{minor}",
             f"{hx(frame[4:8]):<24}# seq = {seq} (0x{seq:08X})",
             f"{hx(frame[8:9]):<24}# opcode {opname} (0x{opcode:02X})",
             f"{hx(frame[9:10]):<24}# flags",
             f"{hx(frame[10:14]):<24}# length = {length}",
             f"{hx(frame[14:16]):<24}# header CRC-16/CCITT-FALSE = 0x{hcrc:04X}"]
    payload = frame[HEADER_LEN:HEADER_LEN + length]
    if payload:
        lines.append(f"# payload ({length} bytes)")
        lines += [hx(payload[i:i + 16]) for i in range(0, len(payload), 16)]
    crc = struct.unpack_from("<I", frame, HEADER_LEN + length)[0]
    lines.append(f"{hx(frame[HEADER_LEN + length:HEADER_LEN + length + TRAILER_LEN]):<24}"
                 f"# CRC-32 = 0x{crc:08X}")
    return lines


def render_hex(vector: Vector) -> str:
    """The text of a vector's .hex file."""
    major, minor = PROTOCOL_VERSION
    out = [f"# pcm-hil wire protocol {major}.{minor} golden vector: {vector.name}",
           f"# {vector.description}",
           "# Generated by `python -m firmware_interface.make_vectors`; do not edit."]
    if vector.message is not None:
        out += _fields(vector.data)
    else:
        out += [" ".join(f"{x:02x}" for x in vector.data[i:i + 16])
                for i in range(0, len(vector.data), 16)]
    return "\n".join(out) + "\n"


def parse_hex(text: str) -> bytes:
    """Bytes of a .hex file's text (comments and white space ignored)."""
    digits = re.sub(r"\s+", "", "".join(line.split("#", 1)[0] for line in text.splitlines()))
    return bytes.fromhex(digits)


def read_vector(name: str, directory: str = VECTOR_DIR) -> bytes:
    with open(os.path.join(directory, f"{name}.hex"), encoding="ascii") as f:
        return parse_hex(f.read())


def write_vectors(directory: str = VECTOR_DIR) -> Dict[str, str]:
    """(Re)write every vector file; returns name -> path."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for vec in golden_vectors():
        path = os.path.join(directory, f"{vec.name}.hex")
        with open(path, "w", encoding="ascii", newline="\n") as f:
            f.write(render_hex(vec))
        paths[vec.name] = path
    return paths


def check_vectors(directory: str = VECTOR_DIR) -> List[str]:
    """Names of vectors whose file is missing or differs from what the codec builds."""
    bad = []
    for vec in golden_vectors():
        try:
            if read_vector(vec.name, directory) != vec.data:
                bad.append(vec.name)
        except OSError:
            bad.append(vec.name)
    return bad


__all__ = ["Vector", "golden_vectors", "render_hex", "parse_hex", "read_vector",
           "write_vectors", "check_vectors", "VECTOR_DIR"]
