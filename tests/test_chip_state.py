"""The in-process chip's state file (hil.chip_state): saved only when the chip and the log
agree on the commands executed, placed back in the log by its clock, refused when it is not
this run's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from drivers.geometry import Geometry
from drivers.pulse import DEFAULT_SET
from hil.chip_state import STATE_SIDECAR, ChipStateError, ChipStateKeeper
from sim_backend.pcm_model import PcmModel
from sim_backend.sim_chip import SimulatedChip


def _chip(seed: int = 1) -> SimulatedChip:
    return SimulatedChip(PcmModel.preset("jap"), Geometry(1, 16, 16), seed=seed)


def _work(chip: SimulatedChip, k: int) -> None:
    a = np.arange(8, dtype=np.uint32)
    for _ in range(k):
        chip.program(a, np.ones(8, np.int64), DEFAULT_SET)


def test_saves_only_when_the_chip_has_executed_what_the_log_holds(tmp_path):
    path = str(tmp_path / "c.state")
    chip = _chip()
    keeper = ChipStateKeeper(chip, path, 0)
    _work(chip, 3)
    keeper.on_commit(2)            # the log holds 2 commands, the chip ran 3: no save
    assert keeper.saves == 0 and not (tmp_path / "c.state").exists()
    keeper.on_commit(3)
    assert keeper.saves == 1 and keeper.commands == 3
    side = json.loads((tmp_path / ("c.state" + STATE_SIDECAR)).read_text())
    assert side["entries"][-1] == {"commands": 3, "clock_s": chip.clock_s}


def test_restore_places_the_state_by_its_clock_and_gives_the_same_chip(tmp_path):
    path = str(tmp_path / "c.state")
    chip = _chip()
    keeper = ChipStateKeeper(chip, path, 0)
    _work(chip, 4)
    keeper.on_commit(4)
    _work(chip, 2)                 # executed after the commit: lost with the process
    fresh = _chip()
    restored = ChipStateKeeper.restore(fresh, path)
    assert restored.commands == 4
    twin = _chip()
    _work(twin, 4)
    a = np.arange(16, dtype=np.uint32)
    assert np.array_equal(fresh.read(a), twin.read(a))


def test_a_state_of_another_run_or_a_damaged_index_is_refused(tmp_path):
    path = str(tmp_path / "c.state")
    chip = _chip()
    keeper = ChipStateKeeper(chip, path, 0)
    _work(chip, 2)
    keeper.on_commit(2)
    side = tmp_path / ("c.state" + STATE_SIDECAR)
    doc = json.loads(side.read_text())
    doc["entries"] = [{"commands": 2, "clock_s": 123.0}]
    side.write_text(json.dumps(doc))
    with pytest.raises(ChipStateError, match="matches no entry"):
        ChipStateKeeper.restore(_chip(), path)
    side.write_text("{not json")
    with pytest.raises(ChipStateError, match="unreadable chip-state index"):
        ChipStateKeeper.restore(_chip(), path)
    with pytest.raises(ChipStateError, match="does not exist"):
        ChipStateKeeper.restore(_chip(), str(tmp_path / "missing.state"))
