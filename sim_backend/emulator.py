"""The firmware emulator's link: sim_backend.firmware served over TCP or a pty.

The production FPGA driver runs unchanged against it. `EmulatorServer` is a TCP listener (each
connection a link the firmware tells apart) or a pty, a modelled link rate and latency, and
fault injection (corrupted bytes, dropped frames, random delays, disconnects, BUSY and chip
faults) drawn from a seeded RNG, with counters written as JSON.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from firmware_interface.frame import Decoded, Frame, FrameDecoder, FrameError
from firmware_interface.protocol import NackCode
from sim_backend.firmware import Firmware

log = logging.getLogger(__name__)

FAULT_KINDS = ("corrupt_request", "corrupt_reply", "drop_request", "drop_reply", "delay",
               "disconnect", "busy", "chip_fault", "crash")


@dataclass
class FaultConfig:
    """Link faults, drawn per request frame from a seeded RNG (so a run is repeatable).

    corrupt / drop: probability per request that one byte is flipped / the frame is lost,
    on the way in or (equally likely) on the way back. delay_ms: every reply waits a uniform
    0..delay_ms. disconnect_every: the reply of every N-th freshly executed command is lost
    with the connection (TCP: closed; pty: an outage that discards input for outage_s).
    script: {request number (1-based, counting every intact request frame, HELLO included):
    fault kind}, for tests that need one exact fault; a scripted "delay" waits outage_s.
    A scripted "crash" executes the request (journaling it with a state file), then kills the
    emulator's own process with SIGKILL before the reply leaves: a hard crash at the worst
    moment, for restart tests. It is honoured only by a server running in its process's main
    thread (`pcm-hil emulate`), never by one inside a test process's thread.
    """

    corrupt: float = 0.0
    drop: float = 0.0
    delay_ms: float = 0.0
    disconnect_every: int = 0
    seed: int = 0
    outage_s: float = 0.2
    script: Dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("corrupt", "drop"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        if self.delay_ms < 0 or self.disconnect_every < 0:
            raise ValueError("delay_ms and disconnect_every must be >= 0")
        for k, kind in self.script.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r} for request {k}")


@dataclass
class LinkModel:
    """Modelled link: 10 bits per byte at `baud` (0 = unlimited) plus a fixed latency."""

    baud: int = 0
    latency_ms: float = 0.0

    def delay_s(self, nbytes: int) -> float:
        t = self.latency_ms / 1000.0
        if self.baud > 0:
            t += nbytes * 10.0 / self.baud
        return t


@dataclass
class _Link:
    """One way in: a TCP connection (named by its peer address) or the pty."""

    name: str
    decoder: FrameDecoder
    sock: Optional[socket.socket] = None


#: Most TCP connections held at once (the session's and those not yet refused): a client
#: that opens more pushes out the oldest one without the session.
MAX_LINKS = 8


def _add_counters(total: Dict[str, int], more: Dict[str, int]) -> None:
    """Add one decoder's counters to a total (high water: the largest)."""
    for k, v in more.items():
        total[k] = max(total.get(k, 0), v) if k == "high_water" else total.get(k, 0) + v


def _keepalive(sock: socket.socket) -> None:
    """Probe an idle connection so that one whose host died without closing it (power lost,
    cable pulled) ends, with its session, within about 10 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 4), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            except OSError:
                pass


class EmulatorServer:
    """Serves one Firmware over TCP or over a pty (os.openpty; connect to `url`).

    Over TCP each connection is a link of its own: the firmware serves the session of one of
    them (protocol 1.3) and refuses the others NACK IN_USE, after which the server closes
    them; a session ends when its connection closes or fails. A firmware before 1.3 has no
    sessions: a new connection replaces the old one, as reopening a serial port would. A pty
    is one link: the firmware cannot tell hosts apart on it (the driver locks the port)."""

    def __init__(self, firmware: Firmware, *, listen: Optional[Tuple[str, int]] = None,
                 pty: bool = False, faults: Optional[FaultConfig] = None,
                 link: Optional[LinkModel] = None, stats_path: Optional[str] = None,
                 busy_poll_s: float = 0.0) -> None:
        if (listen is None) == (not pty):
            raise ValueError("give exactly one of listen=(host, port) or pty=True")
        self.firmware = firmware
        self.faults = faults or FaultConfig()
        self.link = link or LinkModel()
        self.stats_path = stats_path
        self._rng = np.random.default_rng(self.faults.seed)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._links: Dict[socket.socket, _Link] = {}   # TCP connections, oldest first
        self._pty_link = _Link("pty", FrameDecoder(firmware.max_payload))
        self._decoded: Dict[str, int] = {}   # decoder counters of the links gone
        self._listener: Optional[socket.socket] = None
        self._master: Optional[int] = None
        self._slave: Optional[int] = None
        self._outage_until = 0.0
        #: After a request, poll without sleeping for this long: a sleeping process wakes
        #: slowly (its core idles, its caches go cold), and an FPGA never sleeps.
        self.busy_poll_s = max(0.0, float(busy_poll_s))
        self._hot_until = 0.0
        self._requests = 0
        self._fresh = 0
        self._closed = False
        self.counters: Dict[str, object] = {
            "faults": {k: 0 for k in FAULT_KINDS}, "requests": 0, "connections": 0,
            "bytes_rx": 0, "bytes_tx": 0}
        #: Called with (request Frame, reply bytes or None) after each request (tests).
        self.on_request: Optional[Callable[[Frame, Optional[bytes]], None]] = None
        if pty:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self.url = os.ttyname(self._slave)
        else:
            assert listen is not None
            host, port = listen
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                              socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(4)
            self._listener = s
            bound = s.getsockname()
            self.address = (bound[0], bound[1])
            h = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            self.url = f"socket://{h}:{bound[1]}"

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "EmulatorServer":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="pcm-hil-emulator",
                                        daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask serve_forever to return (safe from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop serving, close the link, write stats and state."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for link in list(self._links.values()):
            self._drop_link(link)
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        self._listener = None
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        try:
            self.firmware.close()
        except OSError as e:
            log.error("cannot save the chip state to %s: %s", self.firmware.state_path, e)
        finally:
            self.write_stats()

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict:
        """Every counter: link faults, firmware commands and pulses, decoder errors."""
        fw = self.firmware
        out = json.loads(json.dumps(self.counters))
        out["firmware"] = json.loads(json.dumps(fw.counters))
        out["chip"] = dict(fw.chip.counters)
        out["decoder"] = self._decoder_counters()
        out["pulses"] = {"set": fw.counters["set_pulses"], "reset": fw.counters["reset_pulses"]}
        out["commands_executed"] = fw.counters["commands_executed"]
        out["repeats_answered"] = fw.counters["repeats_answered"]
        return out

    def write_stats(self) -> None:
        if not self.stats_path:
            return
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.stats(), f, indent=2, sort_keys=True)
        os.replace(tmp, self.stats_path)

    # --- serving --------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until request_stop()/stop(); then close (stats and state are written)."""
        try:
            while not self._stop.is_set():
                if self._master is not None:
                    self._poll_pty()
                else:
                    self._poll_tcp()
        finally:
            if self._thread is None:  # run in the caller's thread: clean up here
                self.close()

    def _decoder_counters(self) -> Dict[str, int]:
        """The frame decoders' counters, summed over every link (high water: the largest)."""
        out = dict(self._decoded)
        for link in [self._pty_link, *self._links.values()]:
            _add_counters(out, link.decoder.counters())
        return out

    def _poll_hot(self, link: _Link, read: Callable[[], bytes]) -> bool:
        """One non-blocking read while busy polling; True when it settled this poll."""
        if not self.busy_poll_s or time.perf_counter() >= self._hot_until:
            return False
        try:
            data = read()
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False   # let the blocking path deal with the error
        if data:
            self._on_bytes(link, data)
            return True
        return False

    def _session_link(self) -> Optional[_Link]:
        s = self.firmware.session
        if s is None:
            return None
        return next((k for k in self._links.values() if k.name == s.link), None)

    def _poll_tcp(self) -> None:
        assert self._listener is not None
        hot = self._session_link() or (next(iter(self._links.values()))
                                       if len(self._links) == 1 else None)
        if hot is not None and hot.sock is not None:
            sock = hot.sock
            if self._poll_hot(hot, lambda: sock.recv(1 << 16, socket.MSG_DONTWAIT)):
                return
        watch = [self._listener, *self._links]
        ready, _, _ = select.select(watch, [], [], 0.05)
        # The session's link first, the listener last: a connection that closed is seen to
        # be gone before the one that replaces it is heard.
        first = hot.sock if hot is not None else None
        for sock in sorted(ready, key=lambda r: (r is not first, r is self._listener)):
            if sock is self._listener:
                self._accept()
                continue
            link = self._links.get(sock)
            if link is None:
                continue   # dropped while serving another link this round
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._drop_link(link)
                continue
            self._on_bytes(link, data)

    def _accept(self) -> None:
        assert self._listener is not None
        conn, peer = self._listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(conn)
        if not self.firmware.sessions:   # old firmware: the new connection replaces the old
            for link in list(self._links.values()):
                self._drop_link(link)
        session = self._session_link()
        others = [k for k in self._links.values() if k is not session]
        while others and len(self._links) >= MAX_LINKS:
            self._drop_link(others.pop(0))
        name = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        self._links[conn] = _Link(name, FrameDecoder(self.firmware.max_payload), conn)
        self.counters["connections"] += 1  # type: ignore[operator]

    def _session_gone(self) -> None:
        """Before another link is heard: end the session if its connection has closed or
        failed without the server having read so yet (a peek, nothing consumed)."""
        link = self._session_link()
        if link is None:
            if self.firmware.session is not None and self._master is None:
                self.firmware.link_closed(self.firmware.session.link)   # its link is gone
            return
        assert link.sock is not None
        try:
            data = link.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_link(link)

    def _poll_pty(self) -> None:
        assert self._master is not None
        master = self._master
        if time.monotonic() >= self._outage_until and \
                self._poll_hot(self._pty_link, lambda: os.read(master, 1 << 16)):
            return
        ready, _, _ = select.select([self._master], [], [], 0.05)
        if not ready:
            return
        try:
            data = os.read(self._master, 1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            time.sleep(0.05)
            return
        if time.monotonic() < self._outage_until:
            return
        self._on_bytes(self._pty_link, data)

    def _drop_link(self, link: _Link) -> None:
        """Close a link; the firmware's session ends with it."""
        if link.sock is None:
            link.decoder.reset()
            return
        if self._links.pop(link.sock, None) is not None:
            _add_counters(self._decoded, link.decoder.counters())
        try:
            link.sock.close()
        except OSError:
            pass
        self.firmware.link_closed(link.name)

    def _on_bytes(self, link: _Link, data: bytes) -> None:
        if self.busy_poll_s:
            self._hot_until = time.perf_counter() + self.busy_poll_s
        self.counters["bytes_rx"] += len(data)  # type: ignore[operator]
        for item in link.decoder.feed(data):
            if link.sock is not None and link.sock not in self._links:
                return   # dropped by an earlier frame of this read
            if isinstance(item, FrameError):
                self._send(link, self.firmware.handle(item, link.name), 0)
            else:
                self._on_request(link, item)

    def _draw_fault(self, n: int) -> Tuple[Optional[str], float]:
        f = self.faults
        if not (f.corrupt or f.drop or f.delay_ms or f.script):
            return None, 0.0  # a clean link: no stream to keep in step
        u = self._rng.random(5)  # always five draws: the stream does not depend on config
        delay = float(u[4]) * self.faults.delay_ms / 1000.0
        if n in self.faults.script:
            return self.faults.script[n], delay
        if u[0] < self.faults.corrupt:
            return ("corrupt_request" if u[1] < 0.5 else "corrupt_reply"), delay
        if u[2] < self.faults.drop:
            return ("drop_request" if u[3] < 0.5 else "drop_reply"), delay
        return None, delay

    def _count(self, kind: str) -> None:
        self.counters["faults"][kind] += 1  # type: ignore[index]
        log.info("fault injected: %s", kind)

    def _handle(self, link: _Link, item: Decoded) -> Optional[bytes]:
        """The firmware's answer to a request from `link`; the old link of a session its own
        host took over is closed (a refused link is closed after its NACK is sent)."""
        fw = self.firmware
        if fw.sessions and link.sock is not None and fw.session is not None and \
                fw.session.link != link.name:
            self._session_gone()
        before = self._session_link()
        reply = fw.handle(item, link.name)
        if before is not None and before is not link and fw.session is not None and \
                fw.session.link == link.name:
            self._drop_link(before)   # taken over by its own host, reconnected
        return reply

    def _on_request(self, link: _Link, frame: Frame) -> None:
        self._requests += 1
        self.counters["requests"] = self._requests
        fault, delay = self._draw_fault(self._requests)
        size = frame.wire_size
        reply: Optional[bytes] = None
        try:
            if fault == "drop_request":
                self._count(fault)
                return
            if fault == "corrupt_request":
                self._count(fault)
                raw = bytearray(frame.encode())
                raw[int(self._rng.integers(len(raw)))] ^= int(self._rng.integers(1, 256))
                for item in FrameDecoder(self.firmware.max_payload).feed(bytes(raw)):
                    reply = self._handle(link, item)
                    self._send(link, reply, size)
                return
            if fault in ("busy", "chip_fault"):
                self._count(fault)
                code = NackCode.BUSY if fault == "busy" else NackCode.CHIP_FAULT
                reply = self.firmware.nack(frame.seq, code, frame.opcode, f"injected {fault}")
                self._send(link, reply, size)
                return
            reply = self._handle(link, frame)
            if reply is None:
                return
            if self.firmware.refused_client:
                self._send(link, reply, size)
                self._drop_link(link)
                return
            if fault == "crash":
                self._crash()
            every = self.faults.disconnect_every
            if self.firmware.executed_fresh:
                self._fresh += 1
            if fault == "disconnect" or (self.firmware.executed_fresh and every
                                         and self._fresh % every == 0):
                self._count("disconnect")
                self._disconnect(link)
                return
            if fault == "drop_reply":
                self._count(fault)
                return
            if fault == "corrupt_reply":
                self._count(fault)
                raw = bytearray(reply)
                raw[int(self._rng.integers(len(raw)))] ^= int(self._rng.integers(1, 256))
                reply = bytes(raw)
            if fault == "delay":
                delay = max(delay, self.faults.outage_s)
            if delay > 0:
                self._count("delay")
                time.sleep(delay)
            self._send(link, reply, size)
        finally:
            if self.on_request is not None:
                self.on_request(frame, reply)

    def _crash(self) -> None:
        """SIGKILL this process (no cleanup: the journal alone must carry the state)."""
        if threading.current_thread() is not threading.main_thread():
            log.error("fault 'crash' ignored: the emulator is not its process's main thread")
            return
        self._count("crash")
        self.write_stats()
        log.warning("fault injected: crash (SIGKILL) after executing seq=%d",
                    self.firmware.last_seq or 0)
        os.kill(os.getpid(), signal.SIGKILL)

    def _disconnect(self, link: _Link) -> None:
        if self._master is not None:
            self._outage_until = time.monotonic() + self.faults.outage_s
            link.decoder.reset()
        else:
            self._drop_link(link)

    def _send(self, link: _Link, data: Optional[bytes], request_bytes: int) -> None:
        if not data:
            return
        wait = self.link.delay_s(request_bytes + len(data))
        if wait > 0:
            _wait(wait)
        try:
            if self._master is not None:
                self._write_pty(data)
            elif link.sock is not None and link.sock in self._links:
                link.sock.sendall(data)
            else:
                return
        except OSError as e:
            log.info("reply lost: %s", e)
            self._drop_link(link)
            return
        self.counters["bytes_tx"] += len(data)  # type: ignore[operator]

    def _write_pty(self, data: bytes) -> None:
        assert self._master is not None
        view = memoryview(data)
        deadline = time.monotonic() + 5.0
        while view:
            try:
                n = os.write(self._master, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError("pty not drained by the host within 5 s") from None
                select.select([], [self._master], [], 0.05)


def _wait(seconds: float) -> None:
    """Wait `seconds` precisely: time.sleep overshoots by ~0.1 ms, as much as a modelled
    12 Mbaud link takes for a whole small frame, so the last stretch is spun."""
    end = time.perf_counter() + seconds
    if seconds > 1e-3:
        time.sleep(seconds - 5e-4)
    while time.perf_counter() < end:
        time.sleep(0)  # yields the interpreter lock to a host in this process


def parse_listen(value: str) -> Tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `PORT` (on 127.0.0.1) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"--listen wants HOST:PORT, got {value!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} outside 0..65535")
    return host, p


__all__ = ["EmulatorServer", "FaultConfig", "LinkModel", "FAULT_KINDS",
           "parse_listen"]
