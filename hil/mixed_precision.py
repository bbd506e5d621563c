"""The mixed-precision core (Nandakumar et al. 2020), for weight blocks of any shape.

The digital unit keeps χ += -lr·∂L/∂W in fp32 per weight; wherever |χ| ≥ ε_w = β·ε_G,
p = min(floor(|χ|/ε_w), max_pulses) SET pulses go to G+ (χ > 0) or G- (χ < 0), and the
pulsed devices are read back. What then leaves χ is `chi_update`'s choice:
- `measured` (the default): the change the chip made, as read back. χ then holds exactly what
  the optimizer asked for and the chip has not yet done (up to read noise), so a weak,
  noisy or saturating device is corrected on later steps instead of keeping its error;
- `nominal` (the paper's blind rule): p·ε_w, whatever the device did;
- `expected`: the device model's mean change for p pulses from the cached conductance.
With `skip_saturated`, a device read at or above the top of the programming table gets no
pulse and its nominal p·ε_w leaves χ all the same: under the measured rule such a weight
would otherwise ask for pulses every step that the device can no longer make.
Pairs whose devices have climbed are refreshed: both RESET, |G+ - G-| re-programmed blind on
the device of its sign, and (with `compensate`) the programming error folded back into χ.
A refresh must not cause the next one (RefreshConfig): the thresholds are checked against
the top of the programming table, a refreshed pair waits for an update pulse before it is
checked again, and the decision is taken on a fresh read of the candidates.

Initial programming RESETs every device and programs each target on the device of its sign,
blind from the programming table or verified (pulse, read, RESET what overshot, until within
tolerance).

`MixedPrecisionCore` applies this to the blocks of a DevicePairMap through one ChipIO. It
knows nothing of the network that produces the updates: the MLP trainer (hil.training) and
hil.torch both hand it one update per block per step. Whatever the number of blocks, a step
costs one PROGRAM_READ command (all its pulses, then a read-back of exactly those devices),
and a refresh one RESET batch, one SET batch and one read-back.

Command purposes (the run log's tags): init_reset, init_set, init_verify_reset,
init_verify_set, init_verify_read, full_read, update, readback, refresh_check,
refresh_reset, refresh_set, refresh_readback.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from drivers.backend import Capability
from drivers.errors import ConfigError, HilError
from drivers.pulse import DEFAULT_RESET, DEFAULT_SET
from hil.chip_io import ChipIO
from hil.conductance_cache import ConductanceCache
from hil.config import ChiUpdate, RefreshConfig, RefreshCriterion
from hil.device_pairs import DevicePairMap
from hil.pulse_stats import PULSE_TOTAL_KEYS, PulseCounter, PulseTotals
from hil.trainer_state import StateField, TrainerState

F32 = np.float32
#: PulseCounter's arrays, in the order the trainer state holds them.
COUNTER_KEYS = ("pulses", "refreshes", "run_pulses", "run_refreshes")
#: Length of the blind-programming table: expected conductance after 0..20 SET pulses.
PROGRAMMING_TABLE_PULSES = 20


class TrainingDiverged(HilError):
    """The network's numbers left the finite range; nothing non-finite is sent to a chip."""


@dataclass
class BlockUpdate:
    """-lr·∂L/∂W for one block: `update` holds the rows `rows` of the block's first axis
    (an MLP's active inputs), or the whole block when rows is None (a dense update)."""

    rows: np.ndarray | None
    update: np.ndarray


@dataclass
class PulsePlan:
    """SET pulses for one block: weight flat indices, pulse counts, and which device."""

    flat: np.ndarray        # int64 flat weight indices (row-major in the block)
    n: np.ndarray           # int64 pulse counts, >= 1
    positive: np.ndarray    # bool: True → G+, False → G-
    #: float32 ±n·ε_w, what was taken out of χ (None: compute it from n and positive)
    nominal: np.ndarray | None = None


_NO_PULSES = PulsePlan(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool),
                       np.empty(0, F32))


class ChiAccumulator:
    """χ per block and the pulse rule: pure arithmetic, no I/O."""

    def __init__(self, shapes: Sequence[tuple], beta: Sequence[float], epsilon_us: float,
                 max_pulses: int) -> None:
        self.chi = [np.zeros(s, dtype=F32) for s in shapes]
        self.eps_w = [F32(b * epsilon_us) for b in beta]
        self.max_pulses = int(max_pulses)
        # weights per row of the first axis: flat index = row * row_size + position in row
        self._row_size = [int(np.prod(s[1:], dtype=np.int64)) for s in shapes]

    def accumulate(self, block: int, upd: BlockUpdate | None) -> PulsePlan:
        """Add the update to χ and take out the pulses it now calls for (None: no update).

        Most steps pulse a handful of weights or none, so after the pass over the block
        (add, |χ|, compare) the rest works on the hits only, in as few numpy calls as the
        arithmetic allows."""
        if upd is None:
            return _NO_PULSES
        chi = self.chi[block]
        eps = self.eps_w[block]
        rows = upd.rows
        if rows is None:
            chi += upd.update
            part = chi
        else:
            part = chi.take(rows, axis=0)   # faster than fancy indexing
            part += upd.update
        flat_part = part.reshape(-1)
        mag = np.abs(flat_part)
        hit = (mag >= eps).nonzero()[0]
        if hit.size == 0:
            if rows is not None:
                chi[rows] = part
            return PulsePlan(hit, np.empty(0, np.int64), np.empty(0, bool), np.empty(0, F32))
        v = flat_part[hit]
        p = mag[hit]
        p /= eps
        np.floor(p, out=p)
        np.minimum(p, F32(self.max_pulses), out=p)
        positive = v > 0
        # ±p·ε. With ε > 0, |v| >= ε: v is never ±0, and copysign is where(v > 0, p, -p).
        nominal = np.copysign(p, v) if eps > 0 else np.where(positive, p, -p)
        nominal *= eps
        flat_part[hit] = v - nominal
        if rows is None:
            flat = hit
        else:
            chi[rows] = part
            q, r = np.divmod(hit, self._row_size[block])
            flat = np.multiply(rows[q], self._row_size[block], dtype=np.int64)
            flat += r
        return PulsePlan(flat.astype(np.int64, copy=False), p.astype(np.int64), positive,
                         nominal)


@dataclass(frozen=True)
class InitVerify:
    """Verified initial programming: stop when |G - target| <= tolerance_us, or after
    max_rounds pulse-and-read rounds."""

    tolerance_us: float = 0.5
    max_rounds: int = 30


def refresh_needed(gp: np.ndarray, gm: np.ndarray, cfg: RefreshConfig,
                   high_us: float | None = None) -> np.ndarray:
    """Which pairs meet the configured criterion (bool, the shape of gp); `high_us` stands
    in for cfg.high_us (the core passes the threshold it derived from its table)."""
    high = cfg.high_us if high_us is None else high_us
    if high is None:
        raise ValueError("refresh high_us is derived from a programming table: pass it")
    hi = np.maximum(gp, gm)
    if cfg.criterion is RefreshCriterion.BOTH:
        return (hi > high) & (np.minimum(gp, gm) > cfg.low_us)
    return hi > high


def refresh_candidates(gp: np.ndarray, gm: np.ndarray, cfg: RefreshConfig,
                       high_us: float | None = None) -> np.ndarray:
    """Flat indices of the pairs that need a refresh, by the configured criterion."""
    return np.flatnonzero(refresh_needed(gp, gm, cfg, high_us).reshape(-1))


def refresh_high_us(cfg: RefreshConfig, curve: np.ndarray) -> float:
    """The high threshold in force: the configured one, or the top of the programming
    table `curve` (the most a refresh writes on one device)."""
    return float(curve[-1]) if cfg.high_us is None else float(cfg.high_us)


def check_refresh_thresholds(cfg: RefreshConfig, curve: np.ndarray, reset_us: float,
                             reset_noise_us: float) -> None:
    """Refuse thresholds a just-refreshed pair would meet at once.

    A refresh leaves one device at |G+ - G-| (at most the top of the table, `curve[-1]`) and
    the other at the RESET level: so the high threshold may not lie below the table's top,
    and with criterion both the low threshold must lie above what a RESET leaves
    (`reset_us` plus three `reset_noise_us`)."""
    top = float(curve[-1])
    if cfg.high_us is not None and cfg.high_us < top:
        raise ConfigError(f"{cfg.high_us} µS is below {top:.2f} µS, the top of the "
                          f"{len(curve) - 1}-pulse programming table: a refresh writes up to "
                          f"that, so a refreshed pair would qualify again at once (leave it "
                          f"out to use the table's top, or set check_thresholds: false)",
                          key="optimizer.refresh.high_us")
    floor = reset_us + 3 * reset_noise_us
    if cfg.criterion is RefreshCriterion.BOTH and cfg.low_us <= floor:
        raise ConfigError(f"{cfg.low_us} µS is not above {floor:.2f} µS, what a RESET leaves "
                          f"(with read noise): a refreshed pair would qualify again at once",
                          key="optimizer.refresh.low_us")


def pulses_for(target_us: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Blind programming from RESET: the pulse count whose expected conductance is nearest.

    `curve[n]` is the expected conductance after n SET pulses from RESET (increasing).
    """
    t = np.asarray(target_us, dtype=np.float64)
    i = np.clip(np.searchsorted(curve, t), 1, len(curve) - 1)
    lower_closer = (t - curve[i - 1]) < (curve[i] - t)
    return np.where(lower_closer, i - 1, i).astype(np.int64)


class MixedPrecisionCore:
    """χ, the pulse rule, refresh and the conductance cache of a set of weight blocks.

    The caller sets `io.step` before each step (every command is logged under it), calls
    `update()` with one BlockUpdate (or None) per block, and `refresh()` when `refresh_due()`
    says so. `weights` are the arrays W = β(G+ - G-) from the cache, updated in place.

    `model` is the host's model of its devices (a PcmModel): its mean SET curve is the
    blind-programming table, and `chi_update: expected` asks it for the change p pulses
    should make. `check_finite` refuses NaN/inf updates with TrainingDiverged naming the
    block (one pass over each update; off for callers that check their own numbers).
    `skip_saturated` sends no SET pulse to a device read at or above the table's top.
    `totals` counts the pulses sent by purpose and `counter` where they went (per weight and
    per pair, hil.pulse_stats), for the run summary and the epoch metrics.
    """

    def __init__(self, io: ChipIO, pairs: DevicePairMap, model, *, epsilon_us: float,
                 max_pulses: int, chi_update: ChiUpdate = ChiUpdate.MEASURED,
                 refresh: RefreshConfig = RefreshConfig(), check_finite: bool = False,
                 skip_saturated: bool = True) -> None:
        self.io = io
        self.pairs = pairs
        self.model = model
        self.curve = model.mean_set_curve(PROGRAMMING_TABLE_PULSES)
        self.cache = ConductanceCache(pairs)
        self.chi = ChiAccumulator([b.shape for b in pairs.blocks],
                                  [b.beta for b in pairs.blocks], epsilon_us, max_pulses)
        self.chi_update = ChiUpdate(chi_update)
        self.refresh_config = refresh
        if refresh.check_thresholds:
            noise = model.read_noise
            reset = model.reset.mean_us
            check_refresh_thresholds(refresh, self.curve, reset,
                                     model.reset.std_us + noise.rel * reset + noise.abs_us)
        #: the high threshold in force (the table's top unless configured)
        self.refresh_high_us = refresh_high_us(refresh, self.curve)
        self.check_finite = check_finite
        self.refreshes = 0                   # pairs refreshed so far
        self._exact_read = io.backend.info().supports(Capability.EXACT_READ)
        self.weights: List[np.ndarray] = self.cache.weights
        #: pairs refreshed and not pulsed by an update since (hold_until_updated)
        self.held = [np.zeros(b.size, bool) for b in pairs.blocks]
        self.totals = PulseTotals()
        self.counter = PulseCounter([b.size for b in pairs.blocks])
        #: no SET pulse goes to a device read at or above the top of the programming table:
        #: in the JAP model a pulse there adds almost nothing on average and a lot of noise,
        #: and under the measured χ rule a weight pushed there would take pulses every step
        self.skip_saturated = skip_saturated
        self.saturation_us = float(self.curve[-1])
        self.skipped_saturated = 0           # SET pulses not sent for that reason

    # --- programming and reading whole blocks -----------------------------------------------
    def program_initial(self, targets: Sequence[np.ndarray],
                        verify: InitVerify | None = None) -> None:
        """RESET every mapped device, program each target weight on the device of its sign,
        then read everything. Blind (verify None): the pulse count from the programming
        table. Verified: see `_program_verified`."""
        devices, counts, per_block = self.initial_programming(targets)
        addr = self.pairs.addresses
        self.io.program(addr, np.ones(addr.size, np.int64), DEFAULT_RESET, "init_reset")
        self.totals.init_reset += int(addr.size)
        if verify is not None:
            self._program_verified(targets, verify)
        else:
            for cache, (n, pos) in zip(self.cache.blocks, per_block):
                cache.pulses_plus[pos], cache.pulses_minus[~pos] = n[pos], n[~pos]
            self.io.program(devices, counts, DEFAULT_SET, "init_set")
            self.totals.init_set += int(counts.sum())
        self.full_read()

    def initial_programming(self, targets: Sequence[np.ndarray]
                            ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[np.ndarray,
                                                                        np.ndarray]]]:
        """The blind SET batch that programs `targets` after the RESET, computed without
        touching the chip: (devices, pulse counts, and per block the pulse count and sign
        of every weight). A pre-flight checks it against the station's limits; verified
        programming sends no more to a device in any of its rounds (the table's count,
        capped at the most pulses per update)."""
        self._check_targets(targets)
        devices, counts, per_block = [], [], []
        for pairs, cache, w in zip(self.pairs.blocks, self.cache.blocks, targets):
            n = pulses_for(np.abs(w) / cache.beta, self.curve)
            pos = w > 0
            per_block.append((n, pos))
            devices += [pairs.plus[pos & (n > 0)], pairs.minus[~pos & (n > 0)]]
            counts += [n[pos & (n > 0)], n[~pos & (n > 0)]]
        return np.concatenate(devices), np.concatenate(counts), per_block

    @property
    def most_refresh_pulses(self) -> int:
        """The most SET pulses a refresh can send to one device: the blind-programming
        count of the largest difference a pair can hold (g_max of the host's model)."""
        return int(pulses_for(np.array([self.model.g_max_us]), self.curve)[0])

    def _program_verified(self, targets: Sequence[np.ndarray], verify: InitVerify) -> None:
        """Program-and-verify from RESET, all devices of a round in one command.

        Each weight's device (G+ for w > 0, else G-) aims at G = RESET level + |w|/β. Every
        round, the devices read more than the tolerance above their target are RESET (one
        command), and those below it get the table's pulse count from their level to the
        target, at least one, and are read back (one PROGRAM_READ). A RESET device starts
        afresh, so a target within reach of the table ends within tolerance unless the
        rounds run out; the realised error is what the final full read shows."""
        reset_us = float(self.curve[0])
        tol = float(verify.tolerance_us)
        dev, goal, where = [], [], []
        for i, (pairs, cache, w) in enumerate(zip(self.pairs.blocks, self.cache.blocks,
                                                  targets)):
            w = np.asarray(w, np.float32).reshape(-1)
            pos = w > 0
            dev.append(np.where(pos, pairs.plus.reshape(-1), pairs.minus.reshape(-1)))
            goal.append(reset_us + np.abs(w).astype(np.float64) / float(cache.beta))
            where.append((i, pos))
        dev_all = np.concatenate(dev)
        goal_all = np.minimum(np.concatenate(goal), float(self.curve[-1]))
        g = np.full(dev_all.size, reset_us)           # every device was just RESET
        n = np.zeros(dev_all.size, np.int64)          # SET pulses since its RESET
        cap = self.chi.max_pulses
        for _ in range(verify.max_rounds):
            over = g > goal_all + tol
            if over.any():
                k = int(np.count_nonzero(over))
                self.io.program(dev_all[over], np.ones(k, np.int64), DEFAULT_RESET,
                                "init_verify_reset")
                self.totals.init_reset += k
                g[over], n[over] = reset_us, 0
            under = g < goal_all - tol
            if not under.any():
                break
            want = pulses_for(goal_all[under], self.curve) - pulses_for(g[under], self.curve)
            p = np.clip(want, 1, cap).astype(np.int64)
            values = self.io.program_read(dev_all[under], p, DEFAULT_SET, "init_verify_set",
                                          "init_verify_read")
            self.totals.init_set += int(p.sum())
            g[under] = values
            n[under] += p
        pos_ = 0
        for (i, pos), d in zip(where, dev):
            cache = self.cache.blocks[i]
            k = d.size
            counts = np.minimum(n[pos_:pos_ + k], np.iinfo(np.uint16).max).astype(np.uint16)
            cache.pulses_plus.reshape(-1)[pos] = counts[pos]
            cache.pulses_minus.reshape(-1)[~pos] = counts[~pos]
            pos_ += k

    def _check_targets(self, targets: Sequence[np.ndarray]) -> None:
        if len(targets) != len(self.pairs.blocks):
            raise ValueError(f"{len(targets)} initial weight arrays for "
                             f"{len(self.pairs.blocks)} blocks")
        for b, w in zip(self.pairs.blocks, targets):
            if np.shape(w) != b.shape:
                raise ValueError(f"block {b.name!r}: initial weights of shape {np.shape(w)}, "
                                 f"the block is {b.shape}")
            if not np.isfinite(w).all():
                raise ValueError(f"block {b.name!r}: initial weights are NaN or infinite")

    def full_read(self, purpose: str = "full_read") -> None:
        """Read every mapped device into the cache (one command)."""
        self.cache.load(self.io.read(self.pairs.addresses, purpose))

    # --- one step ---------------------------------------------------------------------------
    def update(self, updates: Sequence[BlockUpdate | None]) -> int:
        """Add one update per block to χ, send every pulse χ now calls for in one
        PROGRAM_READ and store what it reads back; returns the SET pulses sent."""
        if len(updates) != len(self.pairs.blocks):
            raise ValueError(f"{len(updates)} updates for {len(self.pairs.blocks)} blocks")
        if self.check_finite:
            self._check_updates(updates)
        plans = [self.chi.accumulate(i, u) for i, u in enumerate(updates)]
        if self.skip_saturated:
            plans = [self._unsaturated(i, p) for i, p in enumerate(plans)]
        if self.chi_update is ChiUpdate.EXPECTED:
            self._expected_correction(plans)
        # Blocks without pulses (most steps leave most blocks alone) cost no numpy calls.
        pulsed = [(i, plan) for i, plan in enumerate(plans) if plan.flat.size]
        if not pulsed:
            return 0
        blocks = self.pairs.blocks
        if len(pulsed) == 1:
            i, plan = pulsed[0]
            addr, n = blocks[i].devices(plan.flat, plan.positive), plan.n
        else:
            addr = np.concatenate([blocks[i].devices(plan.flat, plan.positive)
                                   for i, plan in pulsed])
            n = np.concatenate([plan.n for _, plan in pulsed])
        values = self.io.program_read(addr, n, DEFAULT_SET, "update", "readback")
        measured = self.chi_update is ChiUpdate.MEASURED
        hold = self.refresh_config.hold_until_updated
        pos = 0
        for i, plan in pulsed:
            k = plan.flat.size
            self.counter.add_pulses(i, plan.flat, plan.n)
            if hold:
                self.held[i][plan.flat] = False   # pulsed: checked again from now on
            w_before, w_after = self.cache.blocks[i].store(plan.flat, plan.positive,
                                                           values[pos:pos + k])
            if measured:
                # χ already lost the nominal ±p·ε; trade it for the change the chip made.
                nominal = plan.nominal
                if nominal is None:
                    eps = self.chi.eps_w[i]
                    nominal = np.where(plan.positive, plan.n, -plan.n).astype(F32) * eps
                w_after -= w_before   # now the change the chip made
                self.chi.chi[i].reshape(-1)[plan.flat] += nominal - w_after
            pos += k
        total = int(np.add.reduce(n, dtype=np.int64))
        self.totals.update_set += total
        return total

    def _unsaturated(self, block: int, plan: PulsePlan) -> PulsePlan:
        """The plan without the devices read at or above `saturation_us`. χ keeps the nominal
        p·ε it gave up for them, as under the blind rule: what the device cannot take is
        dropped, so χ stays below ε and the weight answers at once when the gradient turns."""
        if not plan.flat.size:
            return plan
        g = self.cache.blocks[block].conductance(plan.flat, plan.positive)
        keep = g < self.saturation_us
        if np.logical_and.reduce(keep):
            return plan
        self.skipped_saturated += int(plan.n[~keep].sum())
        return PulsePlan(plan.flat[keep], plan.n[keep], plan.positive[keep],
                         None if plan.nominal is None else plan.nominal[keep])

    def _check_updates(self, updates: Sequence[BlockUpdate | None]) -> None:
        for b, u in zip(self.pairs.blocks, updates):
            if u is not None and not np.isfinite(u.update).all():
                raise TrainingDiverged(f"block {b.name!r}: its update is NaN or infinite: "
                                       f"training diverged; nothing was sent to the chip "
                                       f"this step; try a smaller learning rate")

    def _expected_correction(self, plans: List[PulsePlan]) -> None:
        """Trade the nominal ±p·ε in χ for the change the device model expects from p pulses
        at the device's cached conductance and pulse count (blind: nothing is read for it)."""
        for i, (cache, plan) in enumerate(zip(self.cache.blocks, plans)):
            if not plan.flat.size:
                continue
            pos = plan.positive
            g = cache.conductance(plan.flat, pos)
            n0 = cache.pulse_counts(plan.flat, pos)
            g_new = g.astype(np.float64)
            for k in range(int(plan.n.max())):
                live = plan.n > k
                g_new = np.where(live, self.model.set_pulse(g_new, n0 + k + 1, 0.0), g_new)
            dw = (cache.beta * (g_new - g)).astype(F32)
            nominal = plan.n.astype(F32) * self.chi.eps_w[i]
            self.chi.chi[i].reshape(-1)[plan.flat] += np.where(pos, nominal - dw,
                                                               dw - nominal)
            cache.count_pulses(plan.flat, pos, plan.n)

    # --- refresh ----------------------------------------------------------------------------
    def refresh_due(self, step: int) -> bool:
        """Whether the refresh criterion is checked after `step` (every period_steps)."""
        period = self.refresh_config.period_steps
        return bool(period) and step % period == 0

    def _candidates(self) -> List[np.ndarray]:
        """Per block, the pairs whose cached conductances meet the criterion and that are not
        held (refreshed and not pulsed by an update since)."""
        cfg, high = self.refresh_config, self.refresh_high_us
        out = []
        for c, held in zip(self.cache.blocks, self.held):
            need = refresh_needed(c.gp, c.gm, cfg, high).reshape(-1)
            if cfg.hold_until_updated:
                need &= ~held
            out.append(np.flatnonzero(need))
        return out

    def _confirm(self, found: List[np.ndarray]) -> List[np.ndarray]:
        """Read both devices of every candidate (one command), store the values and keep the
        candidates that still meet the criterion: drift since the last read-back lowers a
        conductance, and one noisy read-back should not cost a pair its state."""
        addr = np.concatenate([a for pairs, flat in zip(self.pairs.blocks, found)
                               for a in (pairs.plus.reshape(-1)[flat],
                                         pairs.minus.reshape(-1)[flat])])
        values = self.io.read(addr, "refresh_check")
        out, pos = [], 0
        for cache, flat in zip(self.cache.blocks, found):
            k = flat.size
            if k:
                ones = np.ones(k, bool)
                cache.store(flat, ones, values[pos:pos + k])
                cache.store(flat, ~ones, values[pos + k:pos + 2 * k])
                gp, gm = values[pos:pos + k], values[pos + k:pos + 2 * k]
                flat = flat[refresh_needed(gp, gm, self.refresh_config,
                                           self.refresh_high_us)]
            out.append(flat)
            pos += 2 * k
        return out

    def refresh(self) -> int:
        """Refresh saturated pairs: RESET both, re-program |G+ - G-| on one, read back;
        returns the number of pairs refreshed."""
        cfg = self.refresh_config
        found = self._candidates()
        if cfg.fresh_read and any(f.size for f in found):
            found = self._confirm(found)
        total = sum(f.size for f in found)
        if total == 0:
            return 0
        resets, sets, counts, w_old = [], [], [], []
        for i, (pairs, cache, flat) in enumerate(zip(self.pairs.blocks, self.cache.blocks,
                                                     found)):
            p, m = pairs.plus.reshape(-1)[flat], pairs.minus.reshape(-1)[flat]
            diff = cache.gp.reshape(-1)[flat] - cache.gm.reshape(-1)[flat]
            n = pulses_for(np.abs(diff), self.curve)
            resets += [p, m]
            sets.append(np.where(diff > 0, p, m)[n > 0])
            counts.append(n[n > 0])
            w_old.append(cache.w.reshape(-1)[flat].copy())
            cache.reset_counts(flat)
            cache.count_pulses(flat, diff > 0, n)
            self.counter.add_refreshes(i, flat)
            self.counter.add_pulses(i, flat, n)
            if cfg.hold_until_updated:
                self.held[i][flat] = True
        pair_addresses = np.concatenate(resets)   # RESET both devices, later read both back
        self.io.program(pair_addresses, np.ones(2 * total, np.int64), DEFAULT_RESET,
                        "refresh_reset")
        set_counts = np.concatenate(counts)
        self.io.program(np.concatenate(sets), set_counts, DEFAULT_SET, "refresh_set")
        self.totals.refresh_reset += 2 * total
        self.totals.refresh_set += int(set_counts.sum())
        values = self.io.read(pair_addresses, "refresh_readback")
        pos = 0
        for i, (cache, flat) in enumerate(zip(self.cache.blocks, found)):
            k = flat.size
            ones = np.ones(k, bool)
            cache.store(flat, ones, values[pos:pos + k])
            cache.store(flat, ~ones, values[pos + k:pos + 2 * k])
            pos += 2 * k
            if cfg.compensate:
                chi = self.chi.chi[i].reshape(-1)
                chi[flat] += w_old[i] - cache.w.reshape(-1)[flat]
        self.refreshes += total
        return total

    # --- what the run log stores ------------------------------------------------------------
    def cache_vector(self) -> np.ndarray:
        """Every cached conductance in layout order (the snapshot's g_us)."""
        return self.cache.vector()

    def chi_dict(self) -> Dict[str, np.ndarray]:
        """χ per block, by block name (the snapshot's χ)."""
        return {b.name: c for b, c in zip(self.pairs.blocks, self.chi.chi)}

    def record_snapshot(self, step: int) -> None:
        """Hand the recorder the core's conductances and χ (a trainer with a state record
        hands it the whole record instead: on_state_snapshot)."""
        self.io.recorder.on_snapshot(step, self.cache_vector(), self.chi_dict())

    # --- its part of the trainer state (hil.trainer_state) ------------------------------------
    # The cached conductances and χ are every record's g_us and chi; what else the core
    # keeps between steps is declared here, so that every trainer on the core (the MLP's,
    # hil.torch's) records it the same way. State the core gains goes here too.
    def state_fields(self) -> List[StateField]:
        n = self.n_weights
        return [StateField("core.pulses_since_reset", "<u2", (self.pairs.n_devices,)),
                StateField("core.refreshes", "<i8"),
                StateField("core.held", "<u1", (n,)),
                StateField("core.pulse_totals", "<i8", (len(PULSE_TOTAL_KEYS),)),
                StateField("core.skipped_saturated", "<i8"),
                *(StateField(f"core.counter.{k}", "<u4", (n,)) for k in COUNTER_KEYS)]

    def state_values(self) -> Dict[str, object]:
        c = self.counter
        counts = {"pulses": np.concatenate(c.pulses), "refreshes": np.concatenate(c.refreshes),
                  "run_pulses": c.run_pulses, "run_refreshes": c.run_refreshes}
        return {"core.pulses_since_reset": self.cache.pulse_vector(),
                "core.refreshes": self.refreshes,
                "core.held": np.concatenate(self.held).astype(np.uint8),
                "core.pulse_totals": self.totals.vector(),
                "core.skipped_saturated": self.skipped_saturated,
                **{f"core.counter.{k}": counts[k] for k in COUNTER_KEYS}}

    def load_state(self, state: TrainerState) -> None:
        """Conductance cache (and with it the weights), χ, pulse counts, refresh count, held
        pairs and the pulse statistics as `state` holds them."""
        g = state.g_us
        if g.size != self.pairs.n_devices:
            raise ValueError(f"the state has {g.size} conductances, the core maps "
                             f"{self.pairs.n_devices} devices")
        self.cache.load(g)
        for b, chi in zip(self.pairs.blocks, self.chi.chi):
            if b.name not in state.chi:
                raise ValueError(f"the state has no chi for block {b.name!r}")
            chi[...] = state.chi[b.name].reshape(chi.shape)
        self.cache.load_pulses(state["core.pulses_since_reset"])
        self.refreshes = state.int("core.refreshes")
        held = state["core.held"].astype(bool)
        self.totals = PulseTotals.from_vector(state["core.pulse_totals"])
        self.skipped_saturated = state.int("core.skipped_saturated")
        c = self.counter
        pos = 0
        for i, b in enumerate(self.pairs.blocks):
            self.held[i][...] = held[pos:pos + b.size]
            c.pulses[i][...] = state["core.counter.pulses"][pos:pos + b.size]
            c.refreshes[i][...] = state["core.counter.refreshes"][pos:pos + b.size]
            pos += b.size
        c.run_pulses[...] = state["core.counter.run_pulses"]
        c.run_refreshes[...] = state["core.counter.run_refreshes"]

    def state_digest(self) -> str:
        """SHA-256 of the conductance of every mapped device, layout order, float32
        little-endian: read noise-free where the backend can (simulators), else the cache."""
        if self._exact_read:
            g = self.io.backend.read_exact(self.pairs.addresses)
        else:
            g = self.cache_vector()
        return hashlib.sha256(np.ascontiguousarray(g, dtype="<f4").tobytes()).hexdigest()

    def block_index(self, name: str) -> int:
        names = self.pairs.names
        if name not in names:
            raise KeyError(f"no weight block {name!r} (blocks: {', '.join(names)})")
        return names.index(name)

    @property
    def n_weights(self) -> int:
        return sum(b.size for b in self.pairs.blocks)

