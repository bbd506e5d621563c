"""Typed errors for everything that talks to a chip.

Every error carries the command it happened in and, where known, the devices involved, so an
operator reading a traceback at 3 a.m. knows which pulse batch failed and on which devices.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


class HilError(Exception):
    """Base of every error raised by pcm-hil."""


class ChipError(HilError):
    """An error in a chip command, with its command and device context."""

    def __init__(self, message: str, *, command: Optional[str] = None,
                 devices: Optional[Iterable[int]] = None) -> None:
        self.command = command
        self.devices = None if devices is None else np.asarray(list(devices) if not isinstance(
            devices, np.ndarray) else devices, dtype=np.int64).ravel()
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.command:
            parts.append(f"[{self.command}]")
        parts.append(self.message)
        if self.devices is not None and self.devices.size:
            shown = ", ".join(str(int(d)) for d in self.devices[:8])
            more = f" and {self.devices.size - 8} more" if self.devices.size > 8 else ""
            parts.append(f"(devices {shown}{more})")
        return " ".join(parts)


class AddressError(ChipError):
    """A device address outside the chip, or repeated within one batch."""


class LinkError(ChipError):
    """The link to the chip failed: timeout, disconnect, short read."""


class ProtocolError(ChipError):
    """A frame or reply that breaks the wire protocol."""


class SafetyLimitError(ChipError):
    """A command that would exceed a safety limit; nothing was sent."""


class ChipFaultError(ChipError):
    """The chip or its firmware reported a fault while executing a command."""


class NotSupportedError(ChipError):
    """The backend lacks the capability a command needs."""


class ChipInUseError(ChipError):
    """Another client's session holds the chip (NACK IN_USE): the firmware serves one client
    at a time, and nothing was sent on this one's behalf."""


class ChipHistoryError(ChipError):
    """The chip is not where a record of the commands sent to it says it must be: another
    boot (power-cycled), a history further or shorter than the record, or one that cannot be
    reported. `mismatch` says which (drivers.chip_history.HistoryMismatch); `expected` and
    `found` are the two positions compared, where known."""

    def __init__(self, message: str, *, mismatch: object, expected: object = None,
                 found: object = None, command: Optional[str] = None) -> None:
        self.mismatch = mismatch
        self.expected = expected
        self.found = found
        super().__init__(message, command=command)


class ConfigError(HilError, ValueError):
    """A configuration file or value that cannot be used; names the bad key."""

    def __init__(self, message: str, *, key: Optional[str] = None,
                 source: Optional[str] = None) -> None:
        self.key = key
        self.source = source
        self.detail = message
        where = ""
        if source:
            where += f"{source}: "
        if key:
            where += f"{key}: "
        super().__init__(where + message)
