"""The in-process simulated chip's state file, kept in step with the run log's commits.

A chip behind firmware keeps its own state across a host crash; the in-process simulated chip
(`sim://`) dies with its process. `pcm-hil train --chip-state FILE` therefore saves it after
every commit of the run log, so that `--resume` can restore the chip and the log to the same
command. A sidecar (FILE.json) maps the saved chip's clock to the number of commands it had
executed, which is how a restored state is placed in the log.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from drivers.abilities import StatefulBackend
from drivers.errors import HilError

STATE_SIDECAR = ".json"
SIDECAR_ENTRIES = 8
SIDECAR_FORMAT = "pcm-hil-chip-state-index"


class ChipStateError(HilError):
    """A chip state file that cannot be used, and why."""


class ChipStateKeeper:
    """Keeps an in-process chip's state file at the log's last commit.

    After each commit (RunLogWriter.commit_hooks) the chip is saved when it has executed
    exactly the commands the log now holds. The sidecar is written first: a kill between the
    two writes leaves a state whose clock matches an older entry, still valid."""

    def __init__(self, chip: StatefulBackend, path: str, base_commands: int = 0) -> None:
        self.chip = chip
        self.path = os.fspath(path)
        self.base = int(base_commands) - chip.commands_executed
        self.saves = 0

    @property
    def commands(self) -> int:
        """Commands the chip has executed since it was new."""
        return self.base + self.chip.commands_executed

    def on_commit(self, n_commands: int) -> None:
        if self.commands != int(n_commands):
            return   # a command executed but not yet logged: keep the previous state
        entries = _read_sidecar(self.path)
        entries.append({"commands": int(n_commands), "clock_s": float(self.chip.clock_s)})
        tmp = self.path + STATE_SIDECAR + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": SIDECAR_FORMAT, "entries": entries[-SIDECAR_ENTRIES:]}, f)
        os.replace(tmp, self.path + STATE_SIDECAR)
        self.chip.save_state(self.path)
        self.saves += 1

    @classmethod
    def restore(cls, chip: StatefulBackend, path: str) -> "ChipStateKeeper":
        """Load the state file into `chip`; the keeper knows how many commands it holds."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ChipStateError(f"chip state file {path} does not exist")
        chip.load_state(path)
        clock = float(chip.clock_s)
        match = [e for e in _read_sidecar(path) if float(e["clock_s"]) == clock]
        if not match:
            raise ChipStateError(f"chip state file {path}: its chip clock {clock!r} s matches "
                                 f"no entry of {path}{STATE_SIDECAR}, so it cannot be placed "
                                 "in the run log (a state file of another run?)")
        return cls(chip, path, int(match[-1]["commands"]))


def _read_sidecar(path: str) -> List[Dict[str, Any]]:
    side = path + STATE_SIDECAR
    if not os.path.exists(side):
        return []
    try:
        with open(side, encoding="utf-8") as f:
            doc = json.load(f)
        return list(doc["entries"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ChipStateError(f"{side}: unreadable chip-state index ({e})") from None


__all__ = ["ChipStateError", "ChipStateKeeper", "STATE_SIDECAR"]
