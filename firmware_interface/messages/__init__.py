"""One small type per command and reply, each with its byte layout.

Every message is a frozen dataclass with `encode() -> bytes` (the payload) and
`decode(payload)` (raises PayloadError with the NACK code a firmware would answer). Batch
payloads are struct-of-arrays: a packed address set (see addresses.py), then one packed numpy
array per per-device field, all little-endian. Messages compare equal when they encode to
the same bytes. The session's messages are in `control`, those carrying device batches in
`batches`; `decode_message` turns any frame into its message.
"""
from __future__ import annotations

from typing import Dict, Type

from firmware_interface.addresses import SET_HEADER, BlockMode
from firmware_interface.frame import Frame
from firmware_interface.messages.base import Message
from firmware_interface.messages.batches import (MatvecReply, MatvecRequest, ProgramAck,
                                                 ProgramReadReply, ProgramReadRequest,
                                                 ProgramRequest, ReadExactReply,
                                                 ReadExactRequest, ReadReply, ReadRequest)
from firmware_interface.messages.control import (NACK_MAX_DEVICES, AdvanceClockAck,
                                                 AdvanceClockRequest, ClockReply,
                                                 ClockRequest, Hello, HistoryReply,
                                                 HistoryRequest, InfoReply, Nack,
                                                 SafeStateAck, SafeStateRequest, StatusReply,
                                                 StatusRequest)
from firmware_interface.protocol import NackCode, PayloadError

MESSAGE_TYPES: Dict[int, Type[Message]] = {
    t.OPCODE: t for t in (Hello, InfoReply, StatusRequest, StatusReply, HistoryRequest,
                          HistoryReply, ReadRequest, ReadReply,
                          ReadExactRequest, ReadExactReply, ProgramRequest, ProgramAck,
                          ProgramReadRequest, ProgramReadReply, MatvecRequest, MatvecReply, SafeStateRequest, SafeStateAck,
                          AdvanceClockRequest, AdvanceClockAck, ClockRequest, ClockReply, Nack)
}


def decode_message(frame: Frame) -> Message:
    """The message a frame carries; PayloadError for an unknown opcode or a bad payload."""
    t = MESSAGE_TYPES.get(frame.opcode)
    if t is None:
        raise PayloadError(NackCode.UNKNOWN_OPCODE, f"unknown opcode 0x{frame.opcode:02X}")
    return t.decode(frame.payload)


__all__ = ["Hello", "InfoReply", "StatusRequest", "StatusReply", "HistoryRequest",
           "HistoryReply", "ReadRequest", "ReadReply",
           "ReadExactRequest", "ReadExactReply", "ProgramRequest", "ProgramAck",
           "ProgramReadRequest", "ProgramReadReply", "MatvecRequest", "MatvecReply", "SafeStateRequest", "SafeStateAck",
           "AdvanceClockRequest", "AdvanceClockAck", "ClockRequest", "ClockReply", "Nack",
           "Message", "MESSAGE_TYPES", "decode_message", "NACK_MAX_DEVICES", "SET_HEADER",
           "BlockMode"]
