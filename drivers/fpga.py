"""The FPGA chip driver: the ChipBackend contract over the binary wire protocol.

The link is whatever pyserial's `serial_for_url` opens: a serial device (/dev/ttyUSB0, COM3),
a pty path, or `socket://HOST:PORT` (the firmware emulator, or a board behind a TCP bridge).
Structure follows PyMeasure's adapters: public methods do the exchange and log every byte
(logger "pcm_hil.wire", DEBUG, hex), and the raw I/O sits in small private methods
(`_open_port`, `_write`, `_read`, `_discard_input`, `_close_port`) a subclass can replace for
another transport.

Retries never repeat an effect: every attempt of one command reuses its sequence number, and
the firmware answers a repeated sequence number from its memory instead of executing it again.
So a lost PROGRAM_ACK is retried safely, and a lost READ_REPLY is retried without a second
read-noise draw (which keeps emulator runs bit-identical to in-process runs).

A reconnect continues only on the same chip exactly where this session left it: the same
chip id and geometry, the same boot (firmware 1.3: a power-cycled chip is refused), and - where
the firmware reports its history - no command this session did not send (another client's).
A refused chip gets nothing more, not even SAFE_STATE. The HELLO of a reconnect names this
session, so the firmware, which serves one client at a time, lets it take over its own
session even before it has seen the old link close.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs

import numpy as np
import serial

from drivers.backend import (Capability, ChipBackend, ChipInfo, capabilities_from_wire,
                             matvec_operands)
from drivers.chip_history import (HistoryMismatch, HistoryPosition, SessionHistory,
                                  check_history)
from drivers.errors import (AddressError, ChipError, ChipFaultError, ChipHistoryError,
                            ChipInUseError, LinkError, NotSupportedError, ProtocolError,
                            SafetyLimitError)
from drivers.geometry import Geometry, ascending_order
from drivers.pulse import PulseSpec
from drivers.safety import HardLimits
from firmware_interface import adc
from firmware_interface.frame import OVERHEAD, Decoded, Frame, FrameDecoder, FrameError
from firmware_interface.messages import (AdvanceClockAck, AdvanceClockRequest, ClockReply,
                                         ClockRequest, Hello, HistoryReply, HistoryRequest,
                                         InfoReply, MatvecReply,
                                         MatvecRequest, Message,
                                         Nack, ProgramAck, ProgramReadReply,
                                         ProgramReadRequest, ProgramRequest,
                                         ReadExactRequest, ReadReply, ReadRequest,
                                         SafeStateRequest, StatusReply, StatusRequest,
                                         decode_message)
from firmware_interface.protocol import (PROTOCOL_VERSION, STATE_CHANGING_OPCODES, NackCode,
                                         Opcode, PayloadError, reply_opcode)

WIRE_LOG = logging.getLogger("pcm_hil.wire")
log = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 921_600

#: Which typed error a NACK code becomes.
NACK_ERRORS = {
    NackCode.BAD_CRC: LinkError,
    NackCode.UNKNOWN_OPCODE: ProtocolError,
    NackCode.BAD_LENGTH: ProtocolError,
    NackCode.BAD_PAYLOAD: ProtocolError,
    NackCode.ADDRESS_OUT_OF_RANGE: AddressError,
    NackCode.DUPLICATE_ADDRESS: AddressError,
    NackCode.SAFETY_LIMIT: SafetyLimitError,
    NackCode.BUSY: ChipFaultError,
    NackCode.UNSUPPORTED: NotSupportedError,
    NackCode.VERSION_MISMATCH: ProtocolError,
    NackCode.TOO_LARGE: ProtocolError,
    NackCode.CHIP_FAULT: ChipFaultError,
    NackCode.IN_USE: ChipInUseError,
}

_REPLY_OPCODES = frozenset(int(op) for op in Opcode if op.is_reply)

#: Largest pulse count of one device the PROGRAM payload can carry (a u8 field).
WIRE_MAX_PULSES = 255


class _LinkLost(Exception):
    """The port failed (closed socket, unplugged adapter): reopen it."""


class _Retry(Exception):
    """This attempt failed in a way the same frame may fix (timeout, corrupted reply)."""


def nack_error(nack: Nack, command: str) -> ChipError:
    """The typed error for a NACK, carrying the command, the devices and the NACK code."""
    cls = NACK_ERRORS.get(nack.code, ChipFaultError)
    more = ""
    if nack.n_devices > nack.devices.size:
        more = f" ({nack.n_devices} devices at fault, first {nack.devices.size} listed)"
    text = nack.message if nack.code is NackCode.IN_USE else \
        f"chip refused: {nack.code.name}: {nack.message}{more}"   # IN_USE says it all
    err = cls(text, command=command, devices=nack.devices if nack.devices.size else None)
    err.nack_code = nack.code  # type: ignore[attr-defined]
    return err


class FpgaChip(ChipBackend):
    """A PCM chip behind FPGA firmware that speaks the pcm-hil wire protocol."""

    def __init__(self, url: str, *, baudrate: int = DEFAULT_BAUDRATE, timeout_s: float = 5.0,
                 retries: int = 5, reconnect_timeout_s: float = 10.0,
                 busy_backoff_s: float = 0.05, seq_start: Optional[int] = None,
                 busy_poll_s: float = 0.0005, connect: bool = True) -> None:
        self.url = url
        self.baudrate = int(baudrate)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.reconnect_timeout_s = float(reconnect_timeout_s)
        self.busy_backoff_s = float(busy_backoff_s)
        self.poll_s = 0.05  # longest single blocking read; the per-attempt deadline governs
        #: Before a blocking read, poll for input without sleeping for this long: a reply
        #: that comes within it is taken without the slow wake-up of a sleeping process.
        self.busy_poll_s = max(0.0, float(busy_poll_s))
        # A random start keeps a new session's numbers clear of a previous session's replies
        # still held in the firmware's memory.
        self._seq = (int.from_bytes(os.urandom(4), "little") if seq_start is None
                     else int(seq_start)) & 0xFFFFFFFF
        self._port: Optional[serial.SerialBase] = None
        self._decoder = FrameDecoder()
        self._hello: Optional[InfoReply] = None
        self._info: Optional[ChipInfo] = None
        self._hard = HardLimits()
        self._closed = False
        #: The session the firmware named in INFO (1.3), named again in a reconnect's HELLO.
        self._session = 0
        self._history = SessionHistory()
        #: Why the chip answering now was refused (another boot, another client's history):
        #: nothing more is sent.
        self._refused: Optional[ChipHistoryError] = None
        #: The number use_seq set: that command may have run before this session began.
        self._resend_seq: Optional[int] = None
        self._lock = threading.RLock()
        self._rx_total = 0
        self.stats: Dict[str, Dict[str, int]] = {}
        self.link_counters = {"reconnects": 0, "retries": 0, "timeouts": 0, "bad_replies": 0,
                              "stale_replies": 0, "nacks": 0}
        if connect:
            self.open()

    # --- raw I/O (override for another transport) -------------------------------------------
    def _open_port(self) -> None:
        # A serial port (or pty) is locked for this process: the firmware cannot tell two
        # hosts on one line apart, so a second one must fail to open it.
        exclusive = True if "://" not in self.url else None
        self._port = serial.serial_for_url(self.url, baudrate=self.baudrate,
                                           timeout=min(self.poll_s, self.timeout_s),
                                           write_timeout=self.timeout_s, exclusive=exclusive)
        # pyserial's socket:// leaves Nagle on; a request/reply protocol wants every frame
        # on the wire at once.
        sock = getattr(self._port, "_socket", None)
        if isinstance(sock, socket.socket):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _write(self, data: bytes) -> int:
        if self._port is None:
            raise _LinkLost("port not open")
        n = self._port.write(data)
        self._port.flush()
        return len(data) if n is None else int(n)

    def _read(self, n: int, timeout_s: float) -> bytes:
        """At most n bytes, waiting at most min(timeout_s, poll_s); callers loop to a
        deadline. (The port timeout is changed only for a short tail, as changing it
        reconfigures a real serial port.)"""
        if self._port is None:
            raise _LinkLost("port not open")
        if self.busy_poll_s:
            port, end = self._port, time.perf_counter() + min(self.busy_poll_s, timeout_s)
            while not port.in_waiting and time.perf_counter() < end:
                pass
        t = max(min(timeout_s, self.poll_s), 1e-3)
        if self._port.timeout != t:
            self._port.timeout = t
        return bytes(self._port.read(n))

    def _discard_input(self) -> None:
        if self._port is not None:
            self._port.reset_input_buffer()

    # --- connection -----------------------------------------------------------------------
    def open(self) -> None:
        """Open the link and shake hands (HELLO); refuses an incompatible protocol major."""
        with self._lock:
            try:
                self._open_port()
            except (serial.SerialException, OSError, ValueError) as e:
                if getattr(e, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise ChipInUseError(f"cannot open {self.url!r}: another process holds "
                                         "the port (the chip serves one client at a time)",
                                         command="OPEN") from None
                raise LinkError(f"cannot open {self.url!r}: {e}", command="OPEN") from None
            self._decoder.reset()
            try:
                self._handshake(self.transaction(Hello(), command="HELLO"))
            except ChipInUseError as e:
                self._close_port()
                raise ChipInUseError(f"cannot open {self.url!r}: {e.message}",
                                     command="HELLO") from None
            except BaseException:
                self._close_port()
                raise

    def _handshake(self, reply: Message) -> None:
        if not isinstance(reply, InfoReply):
            raise ProtocolError(f"HELLO answered with {type(reply).__name__}", command="HELLO")
        if reply.protocol_version[0] != PROTOCOL_VERSION[0]:
            raise ProtocolError(
                f"firmware speaks protocol {reply.protocol_version[0]}."
                f"{reply.protocol_version[1]}, this driver {PROTOCOL_VERSION[0]}.x",
                command="HELLO")
        if self._hello is not None and (
                (reply.arrays, reply.rows, reply.cols, reply.chip_id)
                != (self._hello.arrays, self._hello.rows, self._hello.cols,
                    self._hello.chip_id)):
            raise ChipFaultError(f"a different chip ({reply.chip_id}, {reply.arrays}x"
                                 f"{reply.rows}x{reply.cols}) answered after reconnecting",
                                 command="HELLO")
        if self._hello is not None and self._hello.boot_id and \
                reply.boot_id != self._hello.boot_id:
            raise ChipHistoryError(
                f"after reconnecting to {self.url}, the chip is another boot (boot "
                f"{self._hello.boot_id:016x}, now {reply.boot_id or 0:016x}): it was "
                "power-cycled, or its firmware restarted without its state, so its devices "
                "are not where this session left them; nothing more is sent to it",
                mismatch=HistoryMismatch.BOOT, command="HELLO")
        self._hello = reply
        self._session = reply.session or 0
        caps = capabilities_from_wire(reply.capabilities)
        self._hard = HardLimits.from_dict(dict(reply.hard_limits))
        self._info = ChipInfo(
            chip_id=reply.chip_id, firmware_version=reply.firmware_version,
            protocol_version=f"{reply.protocol_version[0]}.{reply.protocol_version[1]}",
            geometry=Geometry(reply.arrays, reply.rows, reply.cols),
            g_min_us=reply.g_min_us, g_max_us=reply.g_max_us, adc_bits=reply.adc_bits,
            capabilities=caps, hard_limits=dict(reply.hard_limits))

    def _reconnect(self, command: str) -> None:
        """Reopen the URL and shake hands again, until reconnect_timeout_s runs out."""
        deadline = time.monotonic() + self.reconnect_timeout_s
        delay = 0.02
        last: Exception | None = None
        while True:
            self._close_port()
            self.link_counters["reconnects"] += 1
            try:
                self._open_port()
                self._decoder.reset()
                reply = self._exchange(Hello(self._session), self._next_seq(), "HELLO",
                                       attempts=2, reconnect=False)
                self._handshake(reply)
                self._check_history_after_reconnect()
                log.info("link to %s re-established", self.url)
                return
            except ChipHistoryError as e:
                self._refused = e
                self._close_port()
                raise
            except (ProtocolError, ChipFaultError, ChipInUseError):
                self._close_port()
                raise
            except (serial.SerialException, OSError, ValueError, LinkError) as e:
                last = e
            if time.monotonic() + delay > deadline:
                raise LinkError(f"link to {self.url!r} lost and not re-established within "
                                f"{self.reconnect_timeout_s} s ({last})", command=command)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _check_history_after_reconnect(self) -> None:
        """The chip must be exactly where this session left it, give or take the command in
        flight (a ChipHistoryError otherwise); unchecked where the firmware reports no
        history, or where more than one command's outcome is unknown."""
        expected = self._history.expectation()
        if expected is None or not self.info().supports(Capability.HISTORY):
            return
        reply = self._exchange(HistoryRequest(), self._next_seq(), "HISTORY", attempts=2,
                               reconnect=False)
        assert isinstance(reply, HistoryReply)
        check_history(HistoryPosition.from_reply(reply), expected)

    # --- public wire layer ----------------------------------------------------------------
    def send_frame(self, data: bytes) -> None:
        """Write one frame's bytes (logged as hex at DEBUG on pcm_hil.wire)."""
        if WIRE_LOG.isEnabledFor(logging.DEBUG):
            WIRE_LOG.debug("TX %d bytes: %s", len(data), data.hex(" "))
        try:
            n = self._write(data)
        except (serial.SerialException, OSError) as e:
            raise _LinkLost(str(e)) from None
        if n != len(data):
            raise _LinkLost(f"short write: {n} of {len(data)} bytes")

    def receive(self, timeout_s: float) -> List[Decoded]:
        """Read what completes the next frame (bounded by timeout_s); return decoded items."""
        want = self._decoder.wanted()
        try:
            data = self._read(want, timeout_s)
        except (serial.SerialException, OSError) as e:
            raise _LinkLost(str(e)) from None
        if len(data) > want:
            raise ProtocolError(f"read returned {len(data)} bytes, asked for {want}")
        if data and WIRE_LOG.isEnabledFor(logging.DEBUG):
            WIRE_LOG.debug("RX %d bytes: %s", len(data), data.hex(" "))
        self._rx_total += len(data)
        return self._decoder.feed(data)

    def transaction(self, message: Message, *, command: Optional[str] = None,
                    reply_bytes: int = 64) -> Message:
        """Send one request and return its reply, retrying with the same sequence number.

        Raises the typed error of a NACK, LinkError when no valid reply came after all
        attempts, ProtocolError for a reply that breaks the protocol.
        """
        with self._lock:
            if self._closed:
                raise ChipError("chip is closed", command=command)
            if self._refused is not None:
                raise ChipHistoryError(f"not sent: {self._refused.message}",
                                       mismatch=self._refused.mismatch, command=command)
            seq = self._next_seq()
            pending = None
            if message.OPCODE in STATE_CHANGING_OPCODES:
                pending = (self._history.resending if seq == self._resend_seq
                           else self._history.sending)(message.OPCODE, seq)
            if seq == self._resend_seq:
                self._resend_seq = None
            try:
                reply = self._exchange(message, seq, command or message.OPCODE.name,
                                       attempts=self.retries + 1, reconnect=True,
                                       reply_bytes=reply_bytes)
            except ChipError as e:
                if pending is not None and getattr(e, "refused_seq", None) == seq:
                    self._history.settled(pending, executed=False)   # a NACK applies nothing
                raise
            if pending is not None:
                self._history.settled(pending, executed=True)
            return reply

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _exchange(self, message: Message, seq: int, command: str, *, attempts: int,
                  reconnect: bool, reply_bytes: int = 64) -> Message:
        frame = message.frame(seq)
        max_payload = self._hello.max_payload if self._hello else None
        if max_payload is not None and len(frame) - OVERHEAD > max_payload:
            raise ProtocolError(f"request of {len(frame) - OVERHEAD} bytes exceeds the "
                                f"firmware's max_payload of {max_payload}; split the batch",
                                command=command)
        st = self.stats.setdefault(command, {"commands": 0, "round_trips": 0, "bytes_tx": 0,
                                             "bytes_rx": 0})
        st["commands"] += 1
        rx_before = self._rx_total
        # Allow the transfer time of both frames at the link rate, on top of the timeout.
        timeout = self.timeout_s + (len(frame) + reply_bytes) * 10.0 / max(self.baudrate, 1)
        why = "no attempt"
        try:
            for attempt in range(attempts):
                if attempt:
                    self.link_counters["retries"] += 1
                    log.info("%s seq=%d: retry %d (%s)", command, seq, attempt, why)
                try:
                    if reconnect and self._port is None:
                        self._reconnect(command)
                    self._discard_input()
                    self._decoder.reset()
                    st["round_trips"] += 1
                    st["bytes_tx"] += len(frame)
                    self.send_frame(frame)
                    reply = self._await(seq, time.monotonic() + timeout, command)
                except _LinkLost as e:
                    why = f"link lost: {e}"
                    log.warning("%s seq=%d: %s", command, seq, why)
                    self._close_port()
                    if not reconnect:
                        raise LinkError(why, command=command) from None
                    continue
                except _Retry as e:
                    why = str(e)
                    continue
                if isinstance(reply, Nack):
                    self.link_counters["nacks"] += 1
                    if reply.code.retryable:
                        why = f"NACK {reply.code.name}"
                        if reply.code is NackCode.BUSY:
                            time.sleep(self.busy_backoff_s * (attempt + 1))
                        continue
                    err = nack_error(reply, command)
                    err.refused_seq = seq  # type: ignore[attr-defined]  # this request's NACK
                    raise err
                if reply.OPCODE != reply_opcode(message.OPCODE):
                    raise ProtocolError(f"expected {reply_opcode(message.OPCODE).name}, got "
                                        f"{reply.OPCODE.name}", command=command)
                return reply
        finally:
            st["bytes_rx"] += self._rx_total - rx_before
        raise LinkError(f"no valid reply after {attempts} attempts (last: {why})",
                        command=command)

    def _await(self, seq: int, deadline: float, command: str) -> Message:
        """The reply to `seq`: skips stale frames, raises _Retry on timeout or bad CRC."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.link_counters["timeouts"] += 1
                raise _Retry(f"timeout after {self.timeout_s:g} s "
                             f"({self._decoder.buffered} bytes of a partial frame)")
            for item in self.receive(remaining):
                if isinstance(item, FrameError):
                    self.link_counters["bad_replies"] += 1
                    if item.seq == seq:
                        raise _Retry(f"reply {item.code.name}")
                    continue
                if item.seq != seq:
                    self.link_counters["stale_replies"] += 1
                    log.debug("dropping stale frame seq=%d (awaiting %d)", item.seq, seq)
                    continue
                return self._decode_reply(item, command)

    def _decode_reply(self, frame: Frame, command: str) -> Message:
        if frame.version[0] != PROTOCOL_VERSION[0]:
            raise ProtocolError(f"firmware speaks protocol {frame.version[0]}."
                                f"{frame.version[1]}, this driver {PROTOCOL_VERSION[0]}.x",
                                command=command)
        if frame.opcode not in _REPLY_OPCODES:
            raise ProtocolError(f"reply with opcode 0x{frame.opcode:02X}", command=command)
        try:
            return decode_message(frame)
        except PayloadError as e:
            raise ProtocolError(f"malformed {Opcode(frame.opcode).name} reply: {e}",
                                command=command) from None

    # --- contract -------------------------------------------------------------------------
    def info(self) -> ChipInfo:
        self._require_open("INFO")
        assert self._info is not None
        return self._info

    @property
    def adc_full_scale_us(self) -> float:
        assert self._hello is not None
        return self._hello.adc_full_scale_us

    @property
    def seq_memory(self) -> int:
        """How many of its latest replies the firmware answers a repeated request from (the
        HELLO answer's seq_memory; abilities.ReplyMemory)."""
        assert self._hello is not None
        return int(self._hello.seq_memory)

    def read(self, addresses: np.ndarray) -> np.ndarray:
        codes, inverse = self._read_set(addresses, ReadRequest, "READ")
        values = adc.adc_dequantise(codes, self.adc_full_scale_us)
        return values if inverse is None else values[inverse]

    def read_exact(self, addresses: np.ndarray) -> np.ndarray:
        self._require(Capability.EXACT_READ, "READ_EXACT")
        values, inverse = self._read_set(addresses, ReadExactRequest, "READ_EXACT")
        return (values if inverse is None else values[inverse]).copy()

    def _read_set(self, addresses: np.ndarray, request: type, command: str
                  ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(the reply's array for the set of addresses, the inverse that maps it back to the
        caller's order, or None): a read may name a device twice, the wire carries sets."""
        uniq, inverse = _as_set(self._check(addresses, command))
        reply = self.transaction(request(uniq), command=command,
                                 reply_bytes=(2 if request is ReadRequest else 4) * uniq.size
                                 + 32)
        values = reply.codes if isinstance(reply, ReadReply) else reply.values
        self._expect_count(values.size, uniq.size, command)
        return values, inverse

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec) -> None:
        cmd = "PROGRAM_" + pulse.kind.name
        addr, n, _ = self._program_operands(addresses, n_pulses, pulse, cmd)
        keep = n > 0
        addr, n = addr[keep], n[keep]
        ack = self.transaction(self._program_request(ProgramRequest, pulse, addr, n, cmd),
                               command=cmd)
        assert isinstance(ack, ProgramAck)
        self._expect_ack(ack.devices, ack.pulses, addr, n, cmd)

    def program_read(self, addresses: np.ndarray, n_pulses: np.ndarray,
                     pulse: PulseSpec) -> np.ndarray:
        """One PROGRAM_READ round trip where the firmware has it (protocol 1.2), else
        PROGRAM then READ under consecutive sequence numbers."""
        if not self.info().supports(Capability.PROGRAM_READ):
            return super().program_read(addresses, n_pulses, pulse)
        cmd = "PROGRAM_READ"
        addr, n, order = self._program_operands(addresses, n_pulses, pulse, cmd)
        reply = self.transaction(self._program_request(ProgramReadRequest, pulse, addr, n, cmd),
                                 command=cmd, reply_bytes=2 * addr.size + 48)
        assert isinstance(reply, ProgramReadReply)
        self._expect_ack(reply.devices, reply.pulses, addr, n, cmd)
        self._expect_count(reply.codes.size, addr.size, cmd)
        values = adc.adc_dequantise(reply.codes, self.adc_full_scale_us)
        if order is None:
            return values
        out = np.empty_like(values)
        out[order] = values
        return out

    def _program_operands(self, addresses: np.ndarray, n_pulses: np.ndarray,
                          pulse: PulseSpec, cmd: str
                          ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Checked (addresses ascending, pulse counts in the same order, the sorting
        permutation or None when already ascending); refuses what the chip's hard limits
        would refuse, before anything is sent."""
        addr = self._check(addresses, cmd)
        n = self._hard.check_program(addr, n_pulses, pulse, cmd,
                                     max_pulses=WIRE_MAX_PULSES).astype(np.int64)
        order = ascending_order(addr, command=cmd)
        if order is None:
            return addr, n, None
        return addr[order], n[order], order

    @staticmethod
    def _program_request(cls: type, pulse: PulseSpec, addr: np.ndarray, n: np.ndarray,
                         cmd: str) -> ProgramRequest:
        try:
            return cls.from_units(int(pulse.kind), pulse.amplitude_v, pulse.width_ns, addr, n)
        except ValueError as e:
            raise SafetyLimitError(f"pulse not representable on the wire: {e}",
                                   command=cmd) from None

    @staticmethod
    def _expect_ack(devices: int, pulses: int, addr: np.ndarray, n: np.ndarray,
                    cmd: str) -> None:
        if devices != addr.size or pulses != int(n.sum()):
            raise ChipFaultError(f"chip acknowledged {devices} devices / {pulses} "
                                 f"pulses, sent {addr.size} / {int(n.sum())}", command=cmd,
                                 devices=addr)

    def matvec(self, addresses: np.ndarray, x: np.ndarray) -> np.ndarray:
        self._require(Capability.MATVEC, "MATVEC")
        block, xv = matvec_operands(addresses, x)
        self._hard.check_line_voltages(xv)   # refused here rather than NACKed: nothing is sent
        flat = self._check(block.ravel(), "MATVEC")
        k = 1 if xv.ndim == 1 else xv.shape[1]
        reply = self.transaction(MatvecRequest(flat.reshape(block.shape), xv),
                                 command="MATVEC", reply_bytes=4 * block.shape[0] * k + 32)
        assert isinstance(reply, MatvecReply)
        want = (block.shape[0],) if xv.ndim == 1 else (block.shape[0], k)
        if reply.values.shape != want:
            raise ProtocolError(f"MATVEC reply of shape {reply.values.shape}, expected {want}",
                                command="MATVEC")
        return reply.values.copy()

    def safe_state(self) -> None:
        if self._refused is not None:
            log.info("SAFE_STATE not sent: %s", self._refused.message)
            return
        self.transaction(SafeStateRequest(), command="SAFE_STATE")

    # --- simulated time (emulators only: capability SIM_CLOCK) ------------------------------
    def advance_clock(self, seconds: float) -> float:
        """Let `seconds` of simulated time pass on the chip; returns the chip's new clock.

        Only for a simulator behind the protocol (capability SIM_CLOCK), so a drift
        measurement waits in simulated time rather than the host sleeping; a real chip raises
        NotSupportedError. A retry never moves the clock twice (remembered by sequence number).
        """
        self._require(Capability.SIM_CLOCK, "ADVANCE_CLOCK")
        s = float(seconds)
        if not (math.isfinite(s) and s >= 0.0):
            raise ValueError(f"cannot advance the clock by {seconds} s")
        reply = self.transaction(AdvanceClockRequest(s), command="ADVANCE_CLOCK")
        assert isinstance(reply, AdvanceClockAck)
        return reply.clock_s

    @property
    def clock_s(self) -> float:
        """The chip's simulated clock, s (one CLOCK round trip; capability SIM_CLOCK only)."""
        self._require(Capability.SIM_CLOCK, "CLOCK")
        reply = self.transaction(ClockRequest(), command="CLOCK")
        assert isinstance(reply, ClockReply)
        return reply.clock_s

    def status(self) -> StatusReply:
        """Last executed sequence number and the firmware's counters."""
        reply = self.transaction(StatusRequest(), command="STATUS")
        assert isinstance(reply, StatusReply)
        return reply

    # --- boot and history (firmware 1.3: capability HISTORY) ---------------------------------
    @property
    def boot_id(self) -> str:
        """This boot of the firmware (abilities.ChipHistory), from the HELLO answer."""
        self._require(Capability.HISTORY, "HISTORY")
        assert self._hello is not None
        return f"{self._hello.boot_id or 0:016x}"

    def history(self) -> HistoryPosition:
        """The boot and the state-changing commands executed in it (abilities.ChipHistory):
        one HISTORY round trip. Asked before this session's first state-changing command
        (the trainer does, for the run's provenance), it is also where the session starts:
        a reconnect then checks the chip is exactly where the session left it."""
        self._require(Capability.HISTORY, "HISTORY")
        reply = self.transaction(HistoryRequest(), command="HISTORY")
        assert isinstance(reply, HistoryReply)
        position = HistoryPosition.from_reply(reply)
        self._history.observe(position)
        return position

    def close(self) -> None:
        """Idle the chip where the link still works, then release the port. Idempotent."""
        with self._lock:
            if self._closed:
                return
            if self._port is not None:
                saved = (self.retries, self.reconnect_timeout_s)
                self.retries, self.reconnect_timeout_s = 1, min(1.0, self.reconnect_timeout_s)
                try:
                    self.safe_state()
                except ChipError as e:
                    log.warning("safe_state on close failed: %s", e)
                finally:
                    self.retries, self.reconnect_timeout_s = saved
            self._closed = True
            self._close_port()

    @property
    def last_seq(self) -> int:
        """Sequence number of the last request sent."""
        return self._seq

    def next_wire_seq(self) -> int:
        """The sequence number the next request goes out under (abilities.SequencedBackend):
        journaled with the command, so resume can re-send it under the same number."""
        return (self._seq + 1) & 0xFFFFFFFF

    def use_seq(self, seq: int) -> None:
        """Send the next request under `seq` (and continue counting from it).

        Resume re-sends a command a killed host may or may not have had executed under its
        original number: the firmware answers it from memory if it ran, executes it if not."""
        with self._lock:
            self._seq = (int(seq) - 1) & 0xFFFFFFFF
            self._resend_seq = int(seq) & 0xFFFFFFFF

    # --- checks ---------------------------------------------------------------------------
    def _require_open(self, command: str) -> None:
        if self._closed:
            raise ChipError("chip is closed", command=command)

    def _require(self, capability: Capability, command: str) -> None:
        self._require_open(command)
        if not self.info().supports(capability):
            raise NotSupportedError(f"chip lacks the {capability.value} capability",
                                    command=command)

    def _check(self, addresses: np.ndarray, command: str) -> np.ndarray:
        self._require_open(command)
        return self.info().geometry.check(addresses, command=command)

    @staticmethod
    def _expect_count(got: int, want: int, command: str) -> None:
        if got != want:
            raise ProtocolError(f"reply carries {got} values for {want} devices",
                                command=command)


def _as_set(addr: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(strictly ascending unique addresses, inverse, or None when `addr` already is that set).

    Full-array reads come sorted: a cheap order check then spares np.unique on 10^5-10^6
    addresses."""
    if addr.size < 2 or bool((addr[1:] > addr[:-1]).all()):
        return addr, None
    uniq, inverse = np.unique(addr, return_inverse=True)
    return uniq, inverse.ravel()


#: Driver options a serial:// or socket:// URL's query may set: option -> (keyword, type).
_URL_OPTIONS = {"baudrate": ("baudrate", int), "timeout": ("timeout_s", float),
                "retries": ("retries", int), "reconnect": ("reconnect_timeout_s", float),
                "busy_poll_us": ("busy_poll_s", lambda v: float(v) / 1e6)}


def _url_options(scheme: str, query: str) -> dict:
    """The driver options of a URL's query (one LinkError naming a bad one)."""
    opts = {}
    for k, v in ((k, v[-1]) for k, v in parse_qs(query, keep_blank_values=True).items()):
        if k not in _URL_OPTIONS:
            raise LinkError(f"unknown {scheme}:// option {k!r} (known: "
                            f"{', '.join(_URL_OPTIONS)})", command="OPEN")
        try:
            opts[_URL_OPTIONS[k][0]] = _URL_OPTIONS[k][1](v)
        except ValueError:
            raise LinkError(f"bad value {v!r} for {scheme}:// option {k}", command="OPEN") \
                from None
    return opts


def _parse_serial_url(url: str) -> Tuple[str, dict]:
    """`serial://PATH?baudrate=N&timeout=S&retries=K&reconnect=S&busy_poll_us=U` -> (PATH,
    options)."""
    path, _, query = url[len("serial://"):].partition("?")
    return path, _url_options("serial", query)


def _parse_socket_url(url: str) -> Tuple[str, dict]:
    """`socket://HOST:PORT?timeout=S&retries=K&reconnect=S&busy_poll_us=U` ->
    (socket://HOST:PORT, options), checked here so that a bad host or port is named in our
    words, not in pyserial's."""
    rest, _, query = url[len("socket://"):].partition("?")
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise LinkError(f"{url!r} is not socket://HOST:PORT", command="OPEN")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise LinkError(f"{url!r}: port {port!r} is not a TCP port number (1-65535)",
                        command="OPEN")
    return f"socket://{host}:{int(port)}", _url_options("socket", query)


def open_fpga(url: str, **options: object) -> FpgaChip:
    """Open the FPGA chip a URL names: a device or pty path, socket://HOST:PORT, or
    serial://PATH; the last two take options for the driver itself in their query
    (?baudrate=N&timeout=S&retries=K&busy_poll_us=U)."""
    for scheme, parse in (("serial://", _parse_serial_url), ("socket://", _parse_socket_url)):
        if url.startswith(scheme):
            url, parsed = parse(url)
            parsed.update(options)
            options = parsed
    return FpgaChip(url, **options)  # type: ignore[arg-type]


__all__ = ["FpgaChip", "open_fpga", "NACK_ERRORS", "nack_error", "WIRE_LOG"]
