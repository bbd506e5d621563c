"""ChipIO: the training loop's only door to the chip.

Every read, program and MATVEC command goes through here, so it is counted once and reported
to the recorder once, whatever backend sits behind it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.abilities import SequencedBackend, find_ability
from drivers.backend import ChipBackend
from drivers.pulse import PulseKind, PulseSpec
from hil.recorder import NullRecorder, Recorder


def wire_seq_of(backend: ChipBackend) -> int:
    """The sequence number `backend` will send its next command under (-1: it has none).

    Journaled with the command, so resume can re-send a command a kill cut off under the
    same number and the firmware answers from memory instead of executing it twice."""
    sequenced = find_ability(backend, SequencedBackend)
    return -1 if sequenced is None else int(sequenced.next_wire_seq())


@dataclass
class IoCounters:
    program_commands: int = 0
    read_commands: int = 0
    set_pulses: int = 0
    reset_pulses: int = 0
    devices_read: int = 0
    devices_pulsed: int = 0           # devices given at least one pulse, summed over commands
    largest_batch: int = 0            # devices in the largest command
    most_pulses_per_device: int = 0   # largest pulse count sent to one device in one command


class ChipIO:
    """Backend + recorder + counters. `step` is set by the trainer before each step."""

    def __init__(self, backend: ChipBackend, recorder: Recorder | None = None) -> None:
        self.backend = backend
        self.recorder = recorder or NullRecorder()
        self.counters = IoCounters()
        self.step = 0

    def _seq_kw(self) -> dict:
        """`wire_seq=` for the write-ahead hooks, only when the backend has one (recorders
        written before it existed keep working on backends without sequence numbers)."""
        seq = wire_seq_of(self.backend)
        return {"wire_seq": seq} if seq != -1 else {}

    def read(self, addresses: np.ndarray, purpose: str) -> np.ndarray:
        self.recorder.before_read(self.step, addresses, purpose, **self._seq_kw())
        values = self.backend.read(addresses)
        self._count_read(addresses)
        self.recorder.on_read(self.step, addresses, values, purpose)
        return values

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec,
                purpose: str) -> None:
        if addresses.size == 0:
            return
        self.recorder.before_program(self.step, addresses, n_pulses, pulse, purpose,
                                     **self._seq_kw())
        self.backend.program(addresses, n_pulses, pulse)
        self._count_program(addresses, n_pulses, pulse)
        self.recorder.on_program(self.step, addresses, n_pulses, pulse, purpose)

    def program_read(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec,
                     purpose: str, read_purpose: str) -> np.ndarray:
        """program() then read() of the same devices, through backend.program_read (one
        command where the backend can combine them).

        The recorder sees the same two commands as from program() and read(), but both
        write-aheads come first, under the one wire sequence number the combined command goes
        out with, so resume can re-send it whole (hil.replay.resume)."""
        self.recorder.before_program_read(self.step, addresses, n_pulses, pulse, purpose,
                                          read_purpose, **self._seq_kw())
        values = self.backend.program_read(addresses, n_pulses, pulse)
        self._count_program(addresses, n_pulses, pulse)
        self.recorder.on_program(self.step, addresses, n_pulses, pulse, purpose)
        self._count_read(addresses)
        self.recorder.on_read(self.step, addresses, values, read_purpose)
        return values

    def matvec(self, block: np.ndarray, x: np.ndarray) -> np.ndarray:
        """An on-chip weighted sum. Not journaled: it changes no conductance, and a run
        that uses it cannot be resumed (hil.replay.resume refuses), only replayed and verified."""
        values = self.backend.matvec(block, x)
        self.recorder.on_matvec(self.step, block, x, values)
        return values

    def _count_read(self, addresses: np.ndarray) -> None:
        c = self.counters
        c.read_commands += 1
        c.devices_read += int(addresses.size)
        c.largest_batch = max(c.largest_batch, int(addresses.size))

    def _count_program(self, addresses: np.ndarray, n_pulses: np.ndarray,
                       pulse: PulseSpec) -> None:
        c = self.counters
        c.program_commands += 1
        c.largest_batch = max(c.largest_batch, int(addresses.size))
        c.most_pulses_per_device = max(c.most_pulses_per_device, int(n_pulses.max()))
        total = int(n_pulses.sum())
        c.devices_pulsed += int(np.count_nonzero(n_pulses))
        if pulse.kind is PulseKind.SET:
            self.counters.set_pulses += total
        else:
            self.counters.reset_pulses += total
