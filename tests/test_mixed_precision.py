"""The mixed-precision core: χ, the pulse rule, refresh and the cache, for blocks of any
shape, on hand-computed cases and through a real SimulatedChip."""
import numpy as np
import pytest

from drivers.errors import ConfigError
from drivers.geometry import Geometry
from drivers.pulse import DEFAULT_RESET as PulseSpecReset, DEFAULT_SET, PulseKind
from hil.chip_io import ChipIO
from hil.config import ChiUpdate, RefreshConfig, RefreshCriterion
from hil.device_pairs import WeightBlock, allocate_pairs
from hil.mixed_precision import (BlockUpdate, ChiAccumulator, InitVerify, MixedPrecisionCore,
                                 TrainingDiverged, pulses_for, refresh_candidates)
from hil.recorder import Recorder
from sim_backend import PcmModel, SimulatedChip

F32 = np.float32
EPS_US = 1.5


# --- the pulse rule, by hand ----------------------------------------------------------------
def test_pulses_and_residual_by_hand():
    # ε_w = β·ε_G = 0.5 · 0.2 = 0.1
    acc = ChiAccumulator([(2, 3)], beta=[0.5], epsilon_us=0.2, max_pulses=4)
    upd = np.array([[0.05, 0.25, -0.31], [0.0999, -0.1, 0.95]], F32)
    plan = acc.accumulate(0, BlockUpdate(None, upd))
    # |χ| >= 0.1 at flat 1 (0.25 → 2 pulses G+), 2 (-0.31 → 3 pulses G-),
    # 4 (-0.1 → 1 pulse G-), 5 (0.95 → 9, capped at 4, G+)
    assert plan.flat.tolist() == [1, 2, 4, 5]
    assert plan.n.tolist() == [2, 3, 1, 4]
    assert plan.positive.tolist() == [True, False, False, True]
    expect = np.array([[0.05, 0.05, -0.01], [0.0999, 0.0, 0.55]], F32)
    assert np.allclose(acc.chi[0], expect, atol=1e-6)


def test_accumulation_over_steps_until_threshold():
    acc = ChiAccumulator([(1, 1)], beta=[1.0], epsilon_us=1.0, max_pulses=8)
    counts = []
    for _ in range(10):
        plan = acc.accumulate(0, BlockUpdate(None, np.array([[0.3]], F32)))
        counts.append(int(plan.n.sum()))
    # χ passes 1.0 at steps 4 (1.2) and 7 (0.2+0.9=1.1) and 10 (0.1+0.9=1.0)
    assert counts == [0, 0, 0, 1, 0, 0, 1, 0, 0, 1]


def test_row_updates_touch_only_their_rows_in_blocks_of_any_rank():
    acc = ChiAccumulator([(5, 2), (3, 2, 2)], beta=[1.0, 1.0], epsilon_us=1.0, max_pulses=8)
    rows = np.array([1, 3])
    plan = acc.accumulate(0, BlockUpdate(rows, np.array([[2.5, 0.2], [-1.0, 0.0]], F32)))
    assert plan.flat.tolist() == [2, 6]     # (1,0) and (3,0) in a 5×2 matrix
    assert plan.n.tolist() == [2, 1]
    assert acc.chi[0][1, 0] == pytest.approx(0.5) and acc.chi[0][3, 0] == 0.0
    assert acc.chi[0][1, 1] == pytest.approx(0.2)
    assert not acc.chi[0][[0, 2, 4]].any()
    # a (3, 2, 2) block: row 2 is flat 8..11
    upd = np.zeros((1, 2, 2), F32)
    upd[0, 1, 0] = -3.2
    plan = acc.accumulate(1, BlockUpdate(np.array([2]), upd))
    assert plan.flat.tolist() == [10] and plan.n.tolist() == [3] and not plan.positive[0]
    assert acc.chi[1][2, 1, 0] == pytest.approx(-0.2)
    assert acc.accumulate(1, None).flat.size == 0   # no update: no pulses, χ untouched
    assert acc.chi[1][2, 1, 0] == pytest.approx(-0.2)


def test_refresh_criteria():
    gp = np.array([9.5, 9.5, 2.0, 1.0], F32)
    gm = np.array([4.0, 1.0, 9.2, 1.0], F32)
    both = RefreshConfig(criterion=RefreshCriterion.BOTH, high_us=9.0, low_us=3.0)
    either = RefreshConfig(criterion=RefreshCriterion.EITHER, high_us=9.0)
    assert refresh_candidates(gp, gm, both).tolist() == [0]
    assert refresh_candidates(gp, gm, either).tolist() == [0, 1, 2]


def test_pulses_for_picks_nearest_expected_level():
    curve = np.array([0.1, 2.0, 3.4, 4.5])
    assert pulses_for(np.array([0.0, 1.0, 1.1, 2.6, 2.8, 9.0]), curve).tolist() == \
        [0, 0, 1, 1, 2, 3]


# --- the core on a real simulated chip -------------------------------------------------------
class Commands(Recorder):
    """Every command as the run log sees it: (kind, purpose, addresses, counts or values)."""

    def __init__(self):
        self.seen = []
        self.snapshots = []

    def on_program(self, step, addresses, n_pulses, pulse, purpose):
        self.seen.append(("program", purpose, addresses.copy(), np.asarray(n_pulses).copy(),
                          pulse.kind))

    def on_read(self, step, addresses, values, purpose):
        self.seen.append(("read", purpose, addresses.copy(), values.copy(), None))

    def on_snapshot(self, step, g_us, chi):
        self.snapshots.append((step, g_us.copy(), {k: v.copy() for k, v in chi.items()}))

    def take(self):
        out, self.seen = self.seen, []
        return out


BLOCKS = [WeightBlock("conv", (4, 3, 2, 2), 0.05),   # (out, in, kh, kw)
          WeightBlock("fc", (9, 5), 0.2),             # an MLP layer with its bias row
          WeightBlock("gate", (6,), 0.1)]


def _core(chi_update=ChiUpdate.NOMINAL, refresh=RefreshConfig(period_steps=0), **kw):
    chip = SimulatedChip(PcmModel.preset("jap"), Geometry(1, 32, 64), seed=3)
    rec = Commands()
    io = ChipIO(chip, rec)
    pairs = allocate_pairs(BLOCKS, chip.geometry, start_address=17)
    core = MixedPrecisionCore(io, pairs, PcmModel.preset("jap"), epsilon_us=EPS_US,
                              max_pulses=5, chi_update=chi_update, refresh=refresh, **kw)
    return chip, rec, core


def _targets(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.3, 0.3, b.shape).astype(F32) for b in BLOCKS]


def test_initial_programming_resets_all_programs_targets_blind_and_reads_all():
    chip, rec, core = _core()
    targets = _targets()
    core.program_initial(targets)
    (k1, p1, a1, n1, kind1), (k2, p2, a2, n2, kind2), (k3, p3, a3, v3, _) = rec.take()
    addr = core.pairs.addresses
    assert (k1, p1, kind1) == ("program", "init_reset", PulseKind.RESET)
    assert np.array_equal(a1, addr) and (n1 == 1).all()
    assert (k2, p2, kind2) == ("program", "init_set", PulseKind.SET)
    want_dev, want_n = [], []
    for pb, w in zip(core.pairs.blocks, targets):
        n = pulses_for(np.abs(w) / F32(pb.beta), core.curve)
        pos, neg = (w > 0) & (n > 0), (w <= 0) & (n > 0)
        want_dev += [pb.plus[pos], pb.minus[neg]]
        want_n += [n[pos], n[neg]]
    assert np.array_equal(a2, np.concatenate(want_dev))
    assert np.array_equal(n2, np.concatenate(want_n)) and n2.sum() > 100
    assert (k3, p3) == ("read", "full_read") and np.array_equal(a3, addr)
    # the cache holds the read, the weights are β(G+ - G-) from it
    assert np.array_equal(core.cache_vector(), v3)
    for pb, c, w in zip(core.pairs.blocks, core.cache.blocks, targets):
        assert c.w.shape == pb.shape and np.array_equal(c.w, F32(pb.beta) * (c.gp - c.gm))
        n = pulses_for(np.abs(w) / F32(pb.beta), core.curve)
        assert np.array_equal(c.pulses_plus[w > 0], n[w > 0])
        assert np.array_equal(c.pulses_minus[w <= 0], n[w <= 0])
        # blind programming lands near the targets (JAP noise: a loose bound)
        assert np.corrcoef(c.w.ravel(), w.ravel())[0, 1] > 0.6


def test_chi_and_pulses_match_a_direct_numpy_computation_in_one_command_per_step():
    # the pulse rule alone: every device pulsed, saturated or not (see the saturation test)
    chip, rec, core = _core(skip_saturated=False)
    core.program_initial(_targets())
    rec.take()
    rng = np.random.default_rng(5)
    chi_ref = [np.zeros(b.shape, F32) for b in BLOCKS]
    eps = [F32(b.beta * EPS_US) for b in BLOCKS]
    total = 0
    for step in range(1, 30):
        core.io.step = step
        ups = [BlockUpdate(None, rng.normal(0, 0.02, BLOCKS[0].shape).astype(F32)),
               BlockUpdate(np.array([0, 4, 8]), rng.normal(0, 0.1, (3, 5)).astype(F32)),
               None if step % 3 else BlockUpdate(None, rng.normal(0, 0.2, 6).astype(F32))]
        w_before = [w.copy() for w in core.weights]
        sent = core.update(ups)
        want_dev, want_n = [], []
        for i, (pb, u) in enumerate(zip(core.pairs.blocks, ups)):
            if u is not None:
                if u.rows is None:
                    chi_ref[i] += u.update
                else:
                    chi_ref[i][u.rows] += u.update
            flat = chi_ref[i].reshape(-1)
            p = np.minimum(np.floor(np.abs(flat) / eps[i]), F32(5))
            hit = np.flatnonzero(p)
            want_dev.append(np.where(flat[hit] > 0, pb.plus.ravel()[hit],
                                     pb.minus.ravel()[hit]))
            want_n.append(p[hit].astype(np.int64))
            flat -= np.sign(flat) * p * eps[i]
        cmds = rec.take()
        want_n_all = np.concatenate(want_n)
        assert sent == int(want_n_all.sum())
        for c, ref in zip(core.chi.chi, chi_ref):
            assert np.array_equal(c, ref)
        if not want_n_all.size:
            assert cmds == []
            continue
        total += sent
        # every block's pulses in one PROGRAM_READ: the program, then the read-back
        (k1, p1, a1, n1, kind), (k2, p2, a2, v2, _) = cmds
        assert (k1, p1, kind, k2, p2) == ("program", "update", PulseKind.SET, "read",
                                          "readback")
        assert np.array_equal(a1, np.concatenate(want_dev)) and np.array_equal(a2, a1)
        assert np.array_equal(n1, want_n_all)
        # the cache took the read-back values, and only the pulsed weights changed
        g = dict(zip(core.pairs.addresses.tolist(), core.cache_vector().tolist()))
        assert [g[int(a)] for a in a2] == v2.tolist()
        for pb, c, wb in zip(core.pairs.blocks, core.cache.blocks, w_before):
            assert np.array_equal(c.w, F32(pb.beta) * (c.gp - c.gm))
            changed = np.flatnonzero(c.w.ravel() != wb.ravel())
            touched = np.flatnonzero(np.isin(pb.plus.ravel(), a1) | np.isin(pb.minus.ravel(),
                                                                            a1))
            assert np.isin(changed, touched).all()
    assert total > 50


def test_measured_chi_keeps_the_change_the_chip_made():
    _, rec, core = _core(ChiUpdate.MEASURED)
    core.program_initial(_targets())
    rec.take()
    upd = np.zeros((9, 5), F32)
    upd[2, 3], upd[7, 0] = 0.95, -0.65     # ε_w = 0.3: 3 pulses on G+, 2 on G-
    w0 = core.weights[1].copy()
    assert core.update([None, BlockUpdate(None, upd), None]) == 5
    dw = core.weights[1] - w0
    # χ = update - (the weight change read back), exactly as the float32 sums go
    assert core.chi.chi[1][2, 3] == (upd[2, 3] - F32(3) * F32(0.2 * EPS_US)) + \
        (F32(3) * F32(0.2 * EPS_US) - dw[2, 3])
    assert core.chi.chi[1][7, 0] == (upd[7, 0] + F32(2) * F32(0.2 * EPS_US)) + \
        (F32(-2) * F32(0.2 * EPS_US) - dw[7, 0])
    assert dw[2, 3] > 0 > dw[7, 0]


def test_expected_chi_uses_the_device_model_and_counts_pulses():
    _, rec, core = _core(ChiUpdate.EXPECTED)
    core.program_initial(_targets())
    c = core.cache.blocks[2]
    g0, n0 = float(c.gp[4]), int(c.pulses_plus[4])
    upd = np.zeros(6, F32)
    upd[4] = 0.35    # ε_w = 0.15: 2 pulses on G+
    core.update([None, None, BlockUpdate(None, upd)])
    g = np.array([g0])
    for k in (1, 2):
        g = core.model.set_pulse(g, np.array([n0 + k]), 0.0)
    dw = (F32(0.1) * (g - np.float32(g0))).astype(F32)[0]
    nominal = F32(2) * F32(0.1 * EPS_US)
    assert core.chi.chi[2][4] == (upd[4] - nominal) + (nominal - dw)
    assert c.pulses_plus[4] == n0 + 2


def test_refresh_resets_saturated_pairs_reprograms_the_difference_and_compensates_chi():
    # the mechanics alone: no guards, a low threshold so that many pairs qualify
    refresh = RefreshConfig(period_steps=7, criterion=RefreshCriterion.EITHER, high_us=4.0,
                            compensate=True, check_thresholds=False, hold_until_updated=False,
                            fresh_read=False)
    _, rec, core = _core(refresh=refresh)
    core.program_initial(_targets())
    rec.take()
    assert [core.refresh_due(s) for s in (1, 6, 7, 14)] == [False, False, True, True]
    found = [refresh_candidates(c.gp, c.gm, refresh) for c in core.cache.blocks]
    assert sum(f.size for f in found) > 10
    w_old = [c.w.copy() for c in core.cache.blocks]
    chi_old = [x.copy() for x in core.chi.chi]
    diffs = [(c.gp - c.gm).ravel()[f] for c, f in zip(core.cache.blocks, found)]
    assert core.refresh() == sum(f.size for f in found) == core.refreshes
    (k1, p1, a1, n1, kind1), (k2, p2, a2, n2, kind2), (k3, p3, a3, v3, _) = rec.take()
    pairs = [np.concatenate([pb.plus.ravel()[f], pb.minus.ravel()[f]])
             for pb, f in zip(core.pairs.blocks, found)]
    assert (p1, kind1) == ("refresh_reset", PulseKind.RESET) and (n1 == 1).all()
    assert np.array_equal(a1, np.concatenate(pairs))
    n = [pulses_for(np.abs(d), core.curve) for d in diffs]
    dev = [np.where(d > 0, pb.plus.ravel()[f], pb.minus.ravel()[f])[k > 0]
           for d, pb, f, k in zip(diffs, core.pairs.blocks, found, n)]
    assert (p2, kind2) == ("refresh_set", PulseKind.SET)
    assert np.array_equal(a2, np.concatenate(dev))
    assert np.array_equal(n2, np.concatenate([k[k > 0] for k in n]))
    assert p3 == "refresh_readback" and np.array_equal(a3, a1)
    for i, (c, f) in enumerate(zip(core.cache.blocks, found)):
        # the error of the re-programming goes into χ
        assert np.array_equal(core.chi.chi[i].ravel()[f],
                              chi_old[i].ravel()[f] + (w_old[i].ravel()[f] - c.w.ravel()[f]))
        assert np.array_equal(np.delete(core.chi.chi[i].ravel(), f),
                              np.delete(chi_old[i].ravel(), f))
        # the pulse counts restart from the RESET
        pos = diffs[i] > 0
        assert np.array_equal(c.pulses_plus.ravel()[f], np.where(pos, n[i], 0))
        assert np.array_equal(c.pulses_minus.ravel()[f], np.where(pos, 0, n[i]))
    assert core.refresh() < sum(f.size for f in found)   # most pairs are now below 4 µS


def test_snapshots_are_the_cache_in_layout_order_and_chi_by_block_name():
    _, rec, core = _core()
    core.program_initial(_targets())
    core.record_snapshot(0)
    step, g, chi = rec.snapshots[0]
    assert step == 0 and np.array_equal(g, core.cache_vector())
    assert list(chi) == ["conv", "fc", "gate"] and chi["conv"].shape == (4, 3, 2, 2)
    lay = core.pairs.layout()
    assert list(lay) == ["conv.plus", "conv.minus", "fc.plus", "fc.minus", "gate.plus",
                         "gate.minus"]
    full = rec.seen[-1]
    assert full[1] == "full_read" and np.array_equal(full[3], g)


def test_bad_updates_are_refused_by_name_before_anything_is_sent():
    chip, rec, core = _core(check_finite=True)
    core.program_initial(_targets())
    rec.take()
    before = chip.counters["commands"]
    with pytest.raises(ValueError, match="2 updates for 3 blocks"):
        core.update([None, None])
    bad = np.zeros(6, F32)
    bad[2] = np.nan
    big = BlockUpdate(None, np.full(BLOCKS[0].shape, 10.0, F32))
    with pytest.raises(TrainingDiverged, match="block 'gate': its update is NaN or infinite"):
        core.update([big, None, BlockUpdate(None, bad)])
    assert chip.counters["commands"] == before and rec.seen == []
    assert not core.chi.chi[0].any()   # nothing was accumulated either
    with pytest.raises(ValueError, match=r"block 'fc': initial weights of shape \(5, 9\)"):
        core.program_initial([t.T if t.ndim == 2 else t for t in _targets()])


# --- refresh cannot feed back ---------------------------------------------------------------
def _pair_core(refresh, seed=3):
    """A real chip and a core with one weight block whose pair 0 we set up by hand."""
    chip = SimulatedChip(PcmModel.preset("jap"), Geometry(1, 8, 8), seed=seed)
    rec = Commands()
    io = ChipIO(chip, rec)
    pairs = allocate_pairs([WeightBlock("w", (2,), 0.1)], chip.geometry)
    core = MixedPrecisionCore(io, pairs, PcmModel.preset("jap"), epsilon_us=EPS_US,
                              max_pulses=8, chi_update=ChiUpdate.MEASURED, refresh=refresh)
    return chip, rec, core


def _climb(core, chip, plus, minus):
    """Bring pair 0's devices into the windows `plus` and `minus` (lo, hi) µS, or leave one
    at RESET (None): SET pulses one by one, RESET and again on an overshoot. Then read the
    pair into the cache."""
    pb = core.pairs.blocks[0]
    for dev, window in ((pb.plus[0], plus), (pb.minus[0], minus)):
        if window is None:
            continue
        lo, hi = window
        a = np.array([dev])
        for _ in range(2000):
            g = chip.read_exact(a)[0]
            if lo < g < hi:
                break
            chip.program(a, np.array([1]), DEFAULT_SET if g <= lo else PulseSpecReset)
        else:
            raise AssertionError(f"device {dev} never reached {window}")
    core.full_read()


def test_a_just_refreshed_pair_does_not_qualify_again():
    """The default rule: a pair that met the criterion is refreshed once; right after, it
    does not qualify, whatever its rewritten device reads, until an update pulses it."""
    refresh = RefreshConfig(period_steps=1)           # criterion both, high = table top
    chip, rec, core = _pair_core(refresh)
    core.program_initial([np.zeros(2, F32)])
    top = core.refresh_high_us
    assert top == pytest.approx(core.curve[-1]) and top > 9.0
    _climb(core, chip, (11.0, 13.0), (4.0, 5.0))   # G+ above the table's top
    c = core.cache.blocks[0]
    assert c.gp[0] > top and c.gm[0] > refresh.low_us
    rec.take()
    assert core.refresh() == 1
    kinds = [(k, p) for k, p, *_ in rec.take()]
    # the candidates re-read first, then RESET both, re-program the difference, read back
    assert kinds == [("read", "refresh_check"), ("program", "refresh_reset"),
                     ("program", "refresh_set"), ("read", "refresh_readback")]
    for _ in range(5):              # the next checks: nothing to do, no command sent
        assert core.refresh() == 0
    assert rec.take() == []
    # an update pulse on the pair releases it; it is checked again (and, with G- at
    # RESET, does not qualify under criterion both)
    upd = np.array([0.2, 0.0], F32)
    assert core.update([BlockUpdate(None, upd)]) > 0
    assert not core.held[0][0]
    assert core.refresh() == 0


def _push(refresh, steps=60):
    """A pair whose weight the optimizer keeps pushing up, past what the table can write:
    an update then a refresh check every step; returns the refreshes."""
    chip, rec, core = _pair_core(refresh)
    core.program_initial([np.zeros(2, F32)])
    _climb(core, chip, (11.0, 13.0), None)
    push = np.array([0.05, 0.0], F32)
    for step in range(1, steps + 1):
        core.io.step = step
        core.update([BlockUpdate(None, push)])
        core.refresh()
    return core.refreshes


def test_the_legacy_rule_feeds_back_the_default_rule_does_not():
    """Criterion either below the table's top, no hold, no fresh read (config format 1): the
    pushed pair is rewritten near the top, qualifies again, and is refreshed again and again.
    The default rule refreshes it at most once."""
    legacy = RefreshConfig(period_steps=1, criterion=RefreshCriterion.EITHER, high_us=9.0,
                           check_thresholds=False, hold_until_updated=False, fresh_read=False)
    assert _push(legacy) >= 10
    assert _push(RefreshConfig(period_steps=1)) <= 1


@pytest.mark.parametrize("refresh,key", [
    (RefreshConfig(criterion=RefreshCriterion.EITHER, high_us=9.0), "high_us"),
    (RefreshConfig(high_us=9.0), "high_us"),
    (RefreshConfig(low_us=0.3), "low_us"),
])
def test_thresholds_a_refreshed_pair_meets_at_once_are_refused_by_name(refresh, key):
    with pytest.raises(ConfigError, match=rf"optimizer\.refresh\.{key}: .*qualify again"):
        _pair_core(refresh)
    _pair_core(RefreshConfig(criterion=refresh.criterion, high_us=refresh.high_us,
                             low_us=refresh.low_us, check_thresholds=False))


def test_the_decision_uses_a_fresh_read():
    """A pair the cache says qualifies, but whose devices read lower now (here: RESET behind
    the cache's back), is re-read and left alone."""
    chip, rec, core = _pair_core(RefreshConfig(period_steps=1))
    core.program_initial([np.zeros(2, F32)])
    _climb(core, chip, (11.0, 13.0), (4.0, 5.0))
    pb = core.pairs.blocks[0]
    chip.program(np.array([pb.plus[0]]), np.array([1]), PulseSpecReset)
    rec.take()
    assert core.refresh() == 0
    (kind, purpose, addr, values, _), = rec.take()
    assert (kind, purpose) == ("read", "refresh_check")
    assert addr.tolist() == [pb.plus[0], pb.minus[0]]
    assert core.cache.blocks[0].gp[0] == values[0] < core.refresh_high_us


# --- verified initial programming ------------------------------------------------------------
def test_verified_programming_lands_within_tolerance_in_one_command_per_step_of_a_round():
    chip, rec, core = _core()
    targets = _targets(1)
    core.program_initial(targets, InitVerify(tolerance_us=0.5, max_rounds=40))
    cmds = rec.take()
    assert cmds[0][:2] == ("program", "init_reset") and cmds[-1][:2] == ("read", "full_read")
    rounds = cmds[1:-1]
    # a round: RESET what overshot (when anything did), then pulse what is short and read
    # it back
    assert {p for _, p, *_ in rounds} <= {"init_verify_reset", "init_verify_set",
                                          "init_verify_read"}
    sets = [c for c in rounds if c[1] == "init_verify_set"]
    reads = [c for c in rounds if c[1] == "init_verify_read"]
    assert len(sets) == len(reads) >= 2
    for s_cmd, r_cmd in zip(sets, reads):
        assert np.array_equal(s_cmd[2], r_cmd[2])
    reset = float(core.curve[0])
    for pb, c, w in zip(core.pairs.blocks, core.cache.blocks, targets):
        g = np.where(w > 0, c.gp, c.gm)     # the device of the weight's sign
        want = reset + np.abs(w) / pb.beta
        # within the tolerance, up to the read noise of the final read (σ ≈ 0.2 µS)
        assert np.mean(np.abs(g - want) <= 0.5 + 0.6) > 0.97
        assert np.sqrt(np.mean((c.w - w) ** 2)) < 0.5 * np.sqrt(np.mean(w ** 2)) + 0.05 * pb.beta
        other = np.where(w > 0, c.pulses_minus, c.pulses_plus)
        assert not other.any()              # the other device stays at RESET
    # blind programming of the same targets is much further off
    _, _, blind = _core()
    blind.program_initial(targets)
    err = lambda cc: sum(float(np.sum((c.w - w) ** 2)) for c, w in zip(cc.cache.blocks, targets))
    assert err(core) < 0.5 * err(blind)


def test_no_pulse_goes_to_a_device_above_the_tables_top():
    """A weight pushed past what its device can hold: the saturated device gets no more SET
    pulses and χ gives up what the device cannot take (it stays below ε), so a turn of the
    gradient is answered at once; the other device of the pair still takes pulses."""
    chip, rec, core = _pair_core(RefreshConfig(period_steps=0))
    core.program_initial([np.zeros(2, F32)])
    _climb(core, chip, (11.0, 13.0), None)
    eps = core.chi.eps_w[0]
    rec.take()
    for step in range(1, 21):
        core.io.step = step
        assert core.update([BlockUpdate(None, np.array([0.4, 0.0], F32))]) == 0
    assert rec.take() == []                        # nothing sent
    chi = float(core.chi.chi[0][0])
    # χ gave up every pulse the rule called for (p·ε each step) and kept the remainder
    assert 0 < chi < eps and core.skipped_saturated == round((20 * 0.4 - chi) / eps) == 53
    # the gradient turns: pulses go to G- at once
    assert core.update([BlockUpdate(None, np.array([-0.4, 0.0], F32))]) == 2
    (k, purpose, addr, n, _), _ = rec.take()
    assert purpose == "update" and addr.tolist() == [core.pairs.blocks[0].minus[0]]
    # without the guard (config format 1) the saturated device is pulsed every step
    chip, rec, core = _pair_core(RefreshConfig(period_steps=0))
    core.skip_saturated = False
    core.program_initial([np.zeros(2, F32)])
    _climb(core, chip, (11.0, 13.0), None)
    sent = sum(core.update([BlockUpdate(None, np.array([0.4, 0.0], F32))]) for _ in range(20))
    assert sent >= 20
