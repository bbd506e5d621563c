"""Protocol constants: version, opcodes, NACK error codes, the payload-error type.

These numbers are the contract with the FPGA firmware (PROTOCOL.md lists them for the firmware
engineer); changing one is a protocol version change.
"""
from __future__ import annotations

import enum
from typing import Iterable, Optional, Tuple

import numpy as np

#: Protocol version spoken by this codec, (major, minor). A different major is incompatible;
#: a higher minor only adds opcodes, capabilities or trailing fields. 1.1 added the simulator
#: clock (ADVANCE_CLOCK, CLOCK, capability SIM_CLOCK); 1.2 the combined PROGRAM_READ; 1.3 the
#: chip's boot identity and command history (HISTORY, capability HISTORY, INFO's boot_id) and
#: one client at a time (INFO's session, HELLO's optional session, NACK IN_USE).
PROTOCOL_VERSION: Tuple[int, int] = (1, 3)


class Opcode(enum.IntEnum):
    """Frame opcodes. A successful reply to request X has opcode X | 0x80; NACK is 0xFF."""

    HELLO = 0x01
    STATUS = 0x02
    HISTORY = 0x03
    READ = 0x10
    READ_EXACT = 0x11
    PROGRAM = 0x20
    PROGRAM_READ = 0x21
    MATVEC = 0x30
    SAFE_STATE = 0x40
    ADVANCE_CLOCK = 0x50
    CLOCK = 0x51

    INFO = 0x81
    STATUS_REPLY = 0x82
    HISTORY_REPLY = 0x83
    READ_REPLY = 0x90
    READ_EXACT_REPLY = 0x91
    PROGRAM_ACK = 0xA0
    PROGRAM_READ_REPLY = 0xA1
    MATVEC_REPLY = 0xB0
    SAFE_STATE_ACK = 0xC0
    ADVANCE_CLOCK_ACK = 0xD0
    CLOCK_REPLY = 0xD1

    NACK = 0xFF

    @property
    def is_reply(self) -> bool:
        return bool(self.value & 0x80)


#: Bit that turns a request opcode into its reply opcode.
REPLY_BIT = 0x80

REQUEST_OPCODES = frozenset(op for op in Opcode if not op.is_reply)

#: Requests whose replies the firmware remembers by sequence number (a repeat is answered from
#: memory, never executed again). HELLO, STATUS, HISTORY and CLOCK are pure queries, answered
#: afresh.
#: ADVANCE_CLOCK moves the chip's time, so a retried one must not move it twice.
REMEMBERED_OPCODES = frozenset({Opcode.READ, Opcode.READ_EXACT, Opcode.PROGRAM,
                                Opcode.PROGRAM_READ, Opcode.MATVEC, Opcode.SAFE_STATE,
                                Opcode.ADVANCE_CLOCK})

#: Commands that change what a later read returns (a read moves the clock and the read-noise
#: counters too). The firmware counts them in its history (HISTORY_REPLY) and the emulator
#: journals each before its reply leaves; a host knows from its log how many it sent.
STATE_CHANGING_OPCODES = frozenset({Opcode.READ, Opcode.PROGRAM, Opcode.PROGRAM_READ,
                                    Opcode.MATVEC, Opcode.ADVANCE_CLOCK})


def reply_opcode(request: Opcode) -> Opcode:
    """The opcode of the successful reply to `request`."""
    return Opcode(int(request) | REPLY_BIT)


class NackCode(enum.IntEnum):
    """Why the firmware refused a request (the u16 code of a NACK)."""

    BAD_CRC = 0x0001               # header fine, frame CRC-32 wrong: resend the same frame
    UNKNOWN_OPCODE = 0x0002        # opcode not a request this firmware knows
    BAD_LENGTH = 0x0003            # payload length disagrees with the payload's own counts
    BAD_PAYLOAD = 0x0004           # a field has an invalid value (mode, kind, order, shape)
    ADDRESS_OUT_OF_RANGE = 0x0005  # a device address beyond the chip
    DUPLICATE_ADDRESS = 0x0006     # a device named twice in one batch
    SAFETY_LIMIT = 0x0007          # amplitude, width or pulse count beyond the hard limits
    BUSY = 0x0008                  # cannot take a command now: retry the same frame later
    UNSUPPORTED = 0x0009           # a command this chip lacks (MATVEC, READ_EXACT, CLOCK, ...)
    VERSION_MISMATCH = 0x000A      # request's protocol major differs from the firmware's
    TOO_LARGE = 0x000B             # payload length above the firmware's max_payload
    CHIP_FAULT = 0x000C            # the chip failed while executing the command
    IN_USE = 0x000D                # another client's session is active (protocol 1.3)

    @property
    def retryable(self) -> bool:
        """Whether resending the very same frame (same sequence number) may succeed."""
        return self in (NackCode.BAD_CRC, NackCode.BUSY)


class Capability(enum.IntFlag):
    """Capability bits of the INFO reply."""

    MATVEC = 0x1
    EXACT_READ = 0x2
    STATE_FILE = 0x4
    SIM_CLOCK = 0x8     # simulated time: ADVANCE_CLOCK and CLOCK (protocol 1.1)
    PROGRAM_READ = 0x10  # PROGRAM_READ: program, then read the same devices (protocol 1.2)
    HISTORY = 0x20       # boot identity and command history: HISTORY (protocol 1.3)


class PulseCode(enum.IntEnum):
    """Pulse kinds on the wire (the same values as drivers.pulse.PulseKind)."""

    SET = 1
    RESET = 2


class PayloadError(ValueError):
    """A payload that cannot be decoded or violates the protocol; carries its NACK code."""

    def __init__(self, code: NackCode, message: str,
                 devices: Optional[Iterable[int]] = None) -> None:
        self.code = NackCode(code)
        self.message = message
        self.devices = None if devices is None else np.asarray(
            devices if isinstance(devices, np.ndarray) else list(devices),
            dtype=np.int64).ravel()
        super().__init__(f"{self.code.name}: {message}")
