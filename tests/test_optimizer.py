"""χ, pulse and refresh logic on hand-computed cases."""
import numpy as np
import pytest

from hil.config import RefreshConfig, RefreshCriterion
from hil.network import Gradient
from hil.optimizer import MixedPrecisionOptimizer, pulses_for, refresh_candidates


def test_pulses_and_residual_by_hand():
    # ε_w = β·ε_G = 0.5 · 0.2 = 0.1
    opt = MixedPrecisionOptimizer([(2, 3)], beta=[0.5], epsilon_us=0.2, max_pulses=4)
    upd = np.array([[0.05, 0.25, -0.31], [0.0999, -0.1, 0.95]], np.float32)
    plan = opt.accumulate(0, Gradient(None, upd))
    # |χ| >= 0.1 at flat 1 (0.25 → 2 pulses G+), 2 (-0.31 → 3 pulses G-),
    # 4 (-0.1 → 1 pulse G-), 5 (0.95 → 9, capped at 4, G+)
    assert plan.flat.tolist() == [1, 2, 4, 5]
    assert plan.n.tolist() == [2, 3, 1, 4]
    assert plan.positive.tolist() == [True, False, False, True]
    expect = np.array([[0.05, 0.05, -0.01], [0.0999, 0.0, 0.55]], np.float32)
    assert np.allclose(opt.chi[0], expect, atol=1e-6)


def test_accumulation_over_steps_until_threshold():
    opt = MixedPrecisionOptimizer([(1, 1)], beta=[1.0], epsilon_us=1.0, max_pulses=8)
    counts = []
    for _ in range(10):
        plan = opt.accumulate(0, Gradient(None, np.array([[0.3]], np.float32)))
        counts.append(int(plan.n.sum()))
    # χ passes 1.0 at steps 4 (1.2) and 7 (0.2+0.9=1.1) and 10 (0.1+0.9=1.0)
    assert counts == [0, 0, 0, 1, 0, 0, 1, 0, 0, 1]


def test_sparse_rows_update_only_touched_rows():
    opt = MixedPrecisionOptimizer([(5, 2)], beta=[1.0], epsilon_us=1.0, max_pulses=8)
    rows = np.array([1, 3])
    plan = opt.accumulate(0, Gradient(rows, np.array([[2.5, 0.2], [-1.0, 0.0]], np.float32)))
    assert plan.flat.tolist() == [2, 6]     # (1,0) and (3,0) in a 5×2 matrix
    assert plan.n.tolist() == [2, 1]
    assert opt.chi[0][1, 0] == pytest.approx(0.5) and opt.chi[0][3, 0] == 0.0
    assert opt.chi[0][1, 1] == pytest.approx(0.2)
    assert not opt.chi[0][[0, 2, 4]].any()


def test_refresh_criteria():
    gp = np.array([9.5, 9.5, 2.0, 1.0], np.float32)
    gm = np.array([4.0, 1.0, 9.2, 1.0], np.float32)
    both = RefreshConfig(criterion=RefreshCriterion.BOTH, high_us=9.0, low_us=3.0)
    either = RefreshConfig(criterion=RefreshCriterion.EITHER, high_us=9.0)
    assert refresh_candidates(gp, gm, both).tolist() == [0]
    assert refresh_candidates(gp, gm, either).tolist() == [0, 1, 2]


def test_pulses_for_picks_nearest_expected_level():
    curve = np.array([0.1, 2.0, 3.4, 4.5])
    assert pulses_for(np.array([0.0, 1.0, 1.1, 2.6, 2.8, 9.0]), curve).tolist() == \
        [0, 0, 1, 1, 2, 3]
