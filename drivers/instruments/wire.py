"""The wire log: every message to and from one instrument, in order, whatever driver sent it.

Our SCPI drivers and the PyMeasure drivers both put every message through one WireLog, so
"what did the instrument actually receive?" has one answer: `inst.wire`. Each message is also
logged on the "pcm_hil.visa" logger at DEBUG (`smu >> SOUR:VOLT 0.2`, `smu << +1.0E-06`;
`pcm-hil -vv` shows them). The log keeps the newest `maxlen` records; `count` keeps counting,
so `inst.wire.sent_since(mark)` answers "what was written after this point?" exactly.
"""
from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass
from typing import Deque, List, Optional

log = logging.getLogger("pcm_hil.visa")


class Direction(str, enum.Enum):
    SENT = ">>"
    RECEIVED = "<<"


@dataclass(frozen=True)
class WireRecord:
    """One message: `seq` counts from 0 over the instrument's session; `message` is the text
    without its termination characters (binary blocks as ASCII with escapes)."""

    seq: int
    direction: Direction
    message: str


class WireLog:
    """Every message one instrument exchanged, in order (the newest `maxlen` are kept)."""

    def __init__(self, instrument: str, maxlen: int = 4096) -> None:
        self.instrument = instrument
        self._records: Deque[WireRecord] = collections.deque(maxlen=maxlen)
        self._count = 0

    @property
    def count(self) -> int:
        """Messages recorded so far (also the `seq` the next one gets): a mark for later."""
        return self._count

    def sent(self, message: str | bytes) -> None:
        self._add(Direction.SENT, message)

    def received(self, message: str | bytes) -> None:
        self._add(Direction.RECEIVED, message)

    def failed(self, error: BaseException) -> None:
        """A transfer that raised (timeout, closed session): logged, not a message."""
        log.debug("%s !! %s", self.instrument, error)

    def _add(self, direction: Direction, message: str | bytes) -> None:
        if isinstance(message, bytes):
            message = message.decode("ascii", "backslashreplace")
        text = message.rstrip("\r\n")
        self._records.append(WireRecord(self._count, direction, text))
        self._count += 1
        log.debug("%s %s %s", self.instrument, direction.value, text)

    def records(self, since: int = 0) -> List[WireRecord]:
        """Records with seq >= `since` (those still kept)."""
        return [r for r in self._records if r.seq >= since]

    def sent_since(self, since: int = 0) -> List[str]:
        """The messages written to the instrument from mark `since` on."""
        return [r.message for r in self.records(since) if r.direction is Direction.SENT]

    @property
    def last_sent(self) -> Optional[str]:
        for r in reversed(self._records):
            if r.direction is Direction.SENT:
                return r.message
        return None
