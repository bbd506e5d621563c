"""Typed errors of the lab instruments (SMU, supply, temperature controller).

Kept beside the instrument drivers rather than in drivers.errors: chip errors carry pulse
batches and device addresses, instrument errors carry an instrument, a SCPI command and the
instrument's own error queue.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from drivers.errors import HilError


class InstrumentError(HilError):
    """A VISA instrument failed a command, timed out, or reported SCPI errors.

    `scpi_errors` holds what SYST:ERR? returned, as (code, message) pairs, oldest first.
    """

    def __init__(self, message: str, *, instrument: Optional[str] = None,
                 command: Optional[str] = None,
                 scpi_errors: Sequence[Tuple[int, str]] = ()) -> None:
        self.instrument = instrument
        self.command = command
        self.scpi_errors = tuple(scpi_errors)
        self.message = message
        parts = []
        if instrument:
            parts.append(f"{instrument}:")
        if command is not None:
            parts.append(f"[{command}]")
        parts.append(message)
        text = " ".join(parts)
        if self.scpi_errors:
            text += " (instrument error queue: " + "; ".join(
                f'{code} "{msg}"' for code, msg in self.scpi_errors) + ")"
        super().__init__(text)


class ParameterLimitError(InstrumentError, ValueError):
    """A setting outside its parameter's limits; refused before anything was written."""

    def __init__(self, message: str, *, instrument: Optional[str] = None,
                 parameter: Optional[str] = None, value: object = None) -> None:
        self.parameter = parameter
        self.value = value
        super().__init__(message, instrument=instrument)
