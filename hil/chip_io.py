"""ChipIO: the training loop's only door to the chip.

Every read, program and MATVEC command goes through here, so it is counted once and reported
to the recorder once, whatever backend sits behind it.

Where the stack has a station guard (drivers.abilities.GuardedBackend), every command is
checked against it before it is written ahead into the log: a refused command never
appears in the log as sent, only as a "command_refused" event (Recorder.on_event). The guard knows
commands, not training steps, so the station's per-step limit (max_pulses_per_step) is
counted here, over all the commands of a training step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np

from drivers.abilities import GuardedBackend, SequencedBackend, find_ability
from drivers.backend import ChipBackend
from drivers.errors import SafetyLimitError
from drivers.pulse import PulseKind, PulseSpec
from hil.recorder import NullRecorder, Recorder
from hil.trainer_state import StateField, TrainerState


def wire_seq_of(backend: ChipBackend) -> int:
    """The sequence number `backend` will send its next command under (-1: it has none).

    Journaled with the command, so resume can re-send a command a kill cut off under the
    same number and the firmware answers from memory instead of executing it twice."""
    return _next_seq(find_ability(backend, SequencedBackend))


def _next_seq(sequenced: SequencedBackend | None) -> int:
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
        #: The station's guard in the stack, or None (no station: nothing to check here).
        self.guard = find_ability(backend, GuardedBackend)
        # The layer that numbers commands, or None; found once, as the guard is: find_ability
        # probes every layer's attributes, which costs more than a small command itself.
        self._sequenced = find_ability(backend, SequencedBackend)
        self._step_of_pulses = 0    # the step _step_pulses counts
        self._step_pulses = 0       # pulses sent in that step so far

    def _seq_kw(self) -> dict:
        """`wire_seq=` for the write-ahead hooks, only when the backend has one (recorders
        written before it existed keep working on backends without sequence numbers)."""
        seq = _next_seq(self._sequenced)
        return {"wire_seq": seq} if seq != -1 else {}

    def record_refusal(self, command: str, purpose: str, addresses: np.ndarray,
                       n_pulses: np.ndarray | None, error: SafetyLimitError) -> None:
        """Tell the recorder a command was refused by the station's limits and never sent:
        which command, why it was sent, how many devices and pulses, and the limit's
        message."""
        detail = {"command": command, "purpose": purpose, "devices": int(addresses.size),
                  "reason": str(error)}
        if n_pulses is not None:
            detail["pulses"] = int(np.asarray(n_pulses).sum())
        self.recorder.on_event(self.step, "command_refused", detail)

    def _check(self, check: Callable[[], None], command: str, purpose: str,
               addresses: np.ndarray, n_pulses: np.ndarray | None = None) -> None:
        """Run a guard check before the write-ahead (and, for a training step's program
        command, the step's pulse total); a refusal is recorded, then raised."""
        try:
            check()
            if n_pulses is not None and self.step >= 1:
                if self.step != self._step_of_pulses:
                    self._step_of_pulses, self._step_pulses = self.step, 0
                self.guard.station_limits.check_step(
                    self._step_pulses + int(np.asarray(n_pulses).sum()), self.step)
        except SafetyLimitError as e:
            self.record_refusal(command, purpose, addresses, n_pulses, e)
            raise

    def _sent_pulses(self, n_pulses: np.ndarray) -> None:
        if self.step != self._step_of_pulses:
            self._step_of_pulses, self._step_pulses = self.step, 0
        self._step_pulses += int(np.asarray(n_pulses).sum())

    def read(self, addresses: np.ndarray, purpose: str) -> np.ndarray:
        if self.guard is not None:
            g = self.guard
            self._check(lambda: g.check_read(addresses), "READ", purpose, addresses)
        self.recorder.before_read(self.step, addresses, purpose, **self._seq_kw())
        values = self.backend.read(addresses)
        self._count_read(addresses)
        self.recorder.on_read(self.step, addresses, values, purpose)
        return values

    def program(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec,
                purpose: str) -> None:
        if addresses.size == 0:
            return
        if self.guard is not None:
            g = self.guard
            self._check(lambda: g.check_program(addresses, n_pulses, pulse),
                        f"PROGRAM_{pulse.kind.name}", purpose, addresses, n_pulses)
        self.recorder.before_program(self.step, addresses, n_pulses, pulse, purpose,
                                     **self._seq_kw())
        self.backend.program(addresses, n_pulses, pulse)
        if self.guard is not None:
            self._sent_pulses(n_pulses)
        self._count_program(addresses, n_pulses, pulse)
        self.recorder.on_program(self.step, addresses, n_pulses, pulse, purpose)

    def program_read(self, addresses: np.ndarray, n_pulses: np.ndarray, pulse: PulseSpec,
                     purpose: str, read_purpose: str) -> np.ndarray:
        """program() then read() of the same devices, through backend.program_read (one
        command where the backend can combine them).

        The recorder sees the same two commands as from program() and read(), but both
        write-aheads come first, under the one wire sequence number the combined command goes
        out with, so resume can re-send it whole (hil.replay.resume)."""
        if self.guard is not None:
            g = self.guard
            self._check(lambda: g.check_program_read(addresses, n_pulses, pulse),
                        "PROGRAM_READ", purpose, addresses, n_pulses)
        self.recorder.before_program_read(self.step, addresses, n_pulses, pulse, purpose,
                                          read_purpose, **self._seq_kw())
        values = self.backend.program_read(addresses, n_pulses, pulse)
        if self.guard is not None:
            self._sent_pulses(n_pulses)
        self._count_program(addresses, n_pulses, pulse)
        self.recorder.on_program(self.step, addresses, n_pulses, pulse, purpose)
        self._count_read(addresses)
        self.recorder.on_read(self.step, addresses, values, read_purpose)
        return values

    # --- its part of the trainer state (hil.trainer_state) ------------------------------------
    def state_fields(self) -> List[StateField]:
        """One int64 field per counter (`io.<name>`): a counter added to IoCounters is in
        the state record without further ado."""
        return [StateField(f"io.{f.name}", "<i8") for f in dataclasses.fields(IoCounters)]

    def state_values(self) -> Dict[str, int]:
        return {f"io.{k}": v for k, v in dataclasses.asdict(self.counters).items()}

    def load_state(self, state: TrainerState) -> None:
        """Counters and step as `state` has them (the step of the snapshot it was taken at)."""
        for f in dataclasses.fields(IoCounters):
            setattr(self.counters, f.name, state.int(f"io.{f.name}"))
        self.step = state.step

    def matvec(self, block: np.ndarray, x: np.ndarray) -> np.ndarray:
        """An on-chip weighted sum. Not journaled: it changes no conductance, and a run
        that uses it cannot be resumed (hil.replay.resume refuses), only replayed and verified."""
        if self.guard is not None:
            g = self.guard
            self._check(lambda: g.check_matvec(block, x), "MATVEC", "matvec", block)
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
        # ufunc reductions: without the Python wrappers of .max()/.sum() (a batch is small)
        c.most_pulses_per_device = max(c.most_pulses_per_device,
                                       int(np.maximum.reduce(n_pulses, axis=None)))
        total = int(np.add.reduce(n_pulses, axis=None, dtype=np.int64))
        c.devices_pulsed += int(np.count_nonzero(n_pulses))
        if pulse.kind is PulseKind.SET:
            self.counters.set_pulses += total
        else:
            self.counters.reset_pulses += total
