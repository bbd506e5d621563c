"""The host <-> FPGA wire protocol: frames, commands, the ADC code model, golden vectors.

Imports numpy and the standard library only, so a firmware test bench or another host can use
it without the rest of pcm-hil. PROTOCOL.md is the specification for the firmware engineer.
"""
from firmware_interface.adc import (ADC_BITS, ADC_CODE_MAX, adc_dequantise, adc_full_scale_us,
                                    adc_lsb_us, adc_quantise, adc_roundtrip)
from firmware_interface.addresses import (AddressMode, BlockMode, decode_address_set,
                                          encode_address_set)
from firmware_interface.frame import (HEADER_LEN, MAX_PAYLOAD, OVERHEAD, SYNC, Frame,
                                      FrameDecoder, FrameError, encode_frame)
from firmware_interface.messages import (MESSAGE_TYPES, AdvanceClockAck, AdvanceClockRequest,
                                         ClockReply, ClockRequest, Hello, HistoryReply,
                                         HistoryRequest, InfoReply, MatvecReply,
                                         MatvecRequest, Message, Nack, ProgramAck,
                                         ProgramRequest, ReadExactReply, ReadExactRequest,
                                         ReadReply, ReadRequest, SafeStateAck,
                                         SafeStateRequest, StatusReply, StatusRequest,
                                         decode_message)
from firmware_interface.protocol import (PROTOCOL_VERSION, REMEMBERED_OPCODES,
                                         STATE_CHANGING_OPCODES, Capability, NackCode, Opcode,
                                         PayloadError, PulseCode, reply_opcode)

__all__ = [
    "AdvanceClockAck", "AdvanceClockRequest", "ClockReply", "ClockRequest", "ADC_BITS", "ADC_CODE_MAX", "AddressMode", "BlockMode", "Capability", "Frame",
    "FrameDecoder", "FrameError", "HEADER_LEN", "Hello", "HistoryReply", "HistoryRequest",
    "InfoReply", "MAX_PAYLOAD",
    "MESSAGE_TYPES", "MatvecReply", "MatvecRequest", "Message", "Nack", "NackCode", "OVERHEAD",
    "Opcode", "PROTOCOL_VERSION", "PayloadError", "ProgramAck", "ProgramRequest", "PulseCode",
    "REMEMBERED_OPCODES", "STATE_CHANGING_OPCODES", "ReadExactReply", "ReadExactRequest", "ReadReply", "ReadRequest",
    "SYNC", "SafeStateAck", "SafeStateRequest", "StatusReply", "StatusRequest",
    "adc_dequantise", "adc_full_scale_us", "adc_lsb_us", "adc_quantise", "adc_roundtrip",
    "decode_address_set", "decode_message", "encode_address_set", "encode_frame", "reply_opcode",
]
