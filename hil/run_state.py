"""The states of a run and the transitions between them: one state machine, one home.

A run starts `running` and ends in exactly one final state: `completed`, `aborted` (the
operator or a monitor stopped it) or `failed` (an error). Nothing leaves a final state. The
values are the strings the run log has always stored (`/status/code` numbers them 1..4 in
this order), and a `RunState` compares equal to its string, so code and logs that use the
bare strings keep working.
"""
from __future__ import annotations

from enum import Enum
from typing import Any, FrozenSet, Mapping, Optional


class RunState(str, Enum):
    """A run's status. Declaration order is the order of the log's status codes."""

    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"

    # Equal to its string, so it must hash like it too (Enum hashes the member name).
    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        """Whether the run has ended (no transition leaves this state)."""
        return not TRANSITIONS[self]

    @classmethod
    def parse(cls, value: Any) -> Optional["RunState"]:
        """The state named by `value` (a RunState or its string), or None for anything else."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            return None


#: Allowed transitions: from each state, the states a run may go to next.
TRANSITIONS: Mapping[RunState, FrozenSet[RunState]] = {
    RunState.RUNNING: frozenset({RunState.COMPLETED, RunState.ABORTED, RunState.FAILED}),
    RunState.COMPLETED: frozenset(),
    RunState.ABORTED: frozenset(),
    RunState.FAILED: frozenset(),
}

#: The states a run can end in.
FINAL_STATES: FrozenSet[RunState] = frozenset(s for s in RunState if not TRANSITIONS[s])


def can_transition(current: Any, new: Any) -> bool:
    """Whether a run in state `current` may go to state `new` (unknown names: never)."""
    a, b = RunState.parse(current), RunState.parse(new)
    return a is not None and b is not None and b in TRANSITIONS[a]


__all__ = ["FINAL_STATES", "RunState", "TRANSITIONS", "can_transition"]
