"""Run states (hil.run_state): a run goes from running to exactly one final state, and a
state is its string wherever the bare strings were used."""
from __future__ import annotations

import json

import pytest

from hil.run_state import FINAL_STATES, TRANSITIONS, RunState, can_transition


def test_a_run_ends_in_exactly_one_final_state():
    assert set(TRANSITIONS[RunState.RUNNING]) == FINAL_STATES == \
        {RunState.COMPLETED, RunState.ABORTED, RunState.FAILED}
    assert not RunState.RUNNING.final
    for s in FINAL_STATES:
        assert s.final and not TRANSITIONS[s]
        for t in RunState:
            assert not can_transition(s, t), (s, t)   # nothing leaves a final state
    assert not can_transition("running", "running")
    assert can_transition("running", "aborted") and can_transition(RunState.RUNNING, "failed")
    assert not can_transition("running", "paused") and not can_transition("done", "failed")


def test_a_state_is_its_string():
    """Logs store the strings; code compared bare strings: both keep working."""
    for s in RunState:
        assert s == s.value and str(s) == s.value and f"{s}" == s.value
        assert {s.value: 1}[s] == 1 and {s: 1}[s.value] == 1   # same hash as the string
        assert json.dumps({"status": s}) == json.dumps({"status": s.value})
        assert RunState.parse(s.value) is s and RunState.parse(s) is s
    assert [s.value for s in RunState] == ["running", "completed", "aborted", "failed"]


@pytest.mark.parametrize("bad", ["Completed", "", None, 2])
def test_anything_else_is_no_state(bad):
    assert RunState.parse(bad) is None
