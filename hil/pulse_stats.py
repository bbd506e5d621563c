"""Where the pulses go: SET and RESET pulses by purpose, SET pulses per weight and refreshes
per pair, epoch by epoch.

A refresh rule that feeds back shows as a few pairs refreshed at almost every check and a few
weights taking most of the pulses. The mixed-precision core counts both as it works
(`PulseCounter`); the same figures come out of a run log (`epoch_stats_from_log`,
`distribution_from_log`), which is what `pcm-hil replay --plot` draws and how the tests
check the trainer's own count.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, List, Sequence

import numpy as np

#: How many of the most-pulsed weights `top_pulse_share` is over.
TOP_WEIGHTS = 100


@dataclass
class PulseTotals:
    """SET and RESET pulses sent, by why they were sent."""

    init_set: int = 0
    init_reset: int = 0
    update_set: int = 0
    refresh_set: int = 0
    refresh_reset: int = 0

    @property
    def set_pulses(self) -> int:
        return self.init_set + self.update_set + self.refresh_set

    @property
    def reset_pulses(self) -> int:
        return self.init_reset + self.refresh_reset

    def minus(self, earlier: "PulseTotals") -> "PulseTotals":
        return PulseTotals(**{k: v - getattr(earlier, k) for k, v in self.__dict__.items()})

    def copy(self) -> "PulseTotals":
        return PulseTotals(**self.__dict__)

    def vector(self) -> np.ndarray:
        """The counters in field order, as a trainer state stores them."""
        return np.array([getattr(self, k) for k in PULSE_TOTAL_KEYS], np.int64)

    @classmethod
    def from_vector(cls, v: np.ndarray) -> "PulseTotals":
        return cls(**{k: int(x) for k, x in zip(PULSE_TOTAL_KEYS, v)})


#: PulseTotals' counters in field order.
PULSE_TOTAL_KEYS = tuple(f.name for f in fields(PulseTotals))


@dataclass(frozen=True)
class PulseDistribution:
    """How one epoch's training pulses (updates and refreshes, not initial programming)
    spread over the weights."""

    pairs_refreshed: int          # distinct pairs refreshed
    max_pair_refreshes: int       # refreshes of the most-refreshed pair
    top_pulse_share: float        # share of the SET pulses taken by the TOP_WEIGHTS most-pulsed
    max_weight_pulses: int        # SET pulses of the most-pulsed weight

    def metrics(self) -> Dict[str, float]:
        """As epoch metrics (the run log's names)."""
        return {"pairs_refreshed": self.pairs_refreshed,
                "max_pair_refreshes": self.max_pair_refreshes,
                "top100_pulse_share": self.top_pulse_share,
                "max_weight_pulses": self.max_weight_pulses}


def distribution(pulses: np.ndarray, refreshes: np.ndarray) -> PulseDistribution:
    """The figures from SET pulses per weight and refreshes per pair (flat, any order)."""
    pulses = np.asarray(pulses, dtype=np.int64)
    refreshes = np.asarray(refreshes, dtype=np.int64)
    total = int(pulses.sum())
    k = min(TOP_WEIGHTS, pulses.size)
    top = int(np.partition(pulses, pulses.size - k)[pulses.size - k:].sum()) if k else 0
    return PulseDistribution(int(np.count_nonzero(refreshes)),
                             int(refreshes.max()) if refreshes.size else 0,
                             top / total if total else 0.0,
                             int(pulses.max()) if pulses.size else 0)


@dataclass
class PulseCounter:
    """SET pulses per weight and refreshes per pair since the last `take_epoch`, per block,
    and over every epoch taken so far (`run_distribution`)."""

    sizes: Sequence[int]
    pulses: List[np.ndarray] = field(init=False)
    refreshes: List[np.ndarray] = field(init=False)
    run_pulses: np.ndarray = field(init=False)
    run_refreshes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.pulses = [np.zeros(n, np.int64) for n in self.sizes]
        self.refreshes = [np.zeros(n, np.int64) for n in self.sizes]
        self.run_pulses = np.zeros(sum(self.sizes), np.int64)
        self.run_refreshes = np.zeros(sum(self.sizes), np.int64)

    def add_pulses(self, block: int, flat: np.ndarray, n: np.ndarray) -> None:
        """n SET pulses on the weights `flat` (unique) of a block."""
        self.pulses[block][flat] += n

    def add_refreshes(self, block: int, flat: np.ndarray) -> None:
        self.refreshes[block][flat] += 1

    def take_epoch(self) -> PulseDistribution:
        """The distribution since the last call; the counts start again from zero."""
        pulses, refreshes = np.concatenate(self.pulses), np.concatenate(self.refreshes)
        self.run_pulses += pulses
        self.run_refreshes += refreshes
        for a in (*self.pulses, *self.refreshes):
            a[...] = 0
        return distribution(pulses, refreshes)

    def run_distribution(self) -> PulseDistribution:
        """The distribution over every epoch taken so far (the whole run at its end)."""
        return distribution(self.run_pulses, self.run_refreshes)


# --- the same figures from a run log ---------------------------------------------------------
@dataclass(frozen=True)
class LoggedDistribution:
    """Per-weight SET pulses and per-pair refreshes over a range of steps of a log (weights in
    layout order: each block's weights, row-major)."""

    pulses: np.ndarray
    refreshes: np.ndarray

    def summary(self) -> PulseDistribution:
        return distribution(self.pulses, self.refreshes)


def _weight_lookup(log) -> tuple:
    """Sorted device addresses and the weight (layout order) each holds."""
    addr, weight, base = [], [], 0
    for key, a in log.layout.items():
        block, sign = key.rsplit(".", 1)
        n = a.size
        addr.append(a.ravel().astype(np.int64))
        weight.append(base + np.arange(n, dtype=np.int64))
        if sign == "minus":
            base += n
    addr, weight = np.concatenate(addr), np.concatenate(weight)
    order = np.argsort(addr, kind="stable")
    return addr[order], weight[order], base


def distribution_from_log(log, start_step: int = 1, stop_step: int | None = None
                          ) -> LoggedDistribution:
    """Count, from the logged pulse stream, the SET pulses of updates and refreshes per
    weight and the refreshes per pair in steps start_step <= step < stop_step."""
    addr_sorted, weight_of, n_weights = _weight_lookup(log)
    ev = log.pulse_events(start_step=start_step, stop_step=stop_step,
                          columns=("address", "n_pulses", "purpose"))
    codes = {name: log.purpose_code(name) for name in ("update", "refresh_set",
                                                       "refresh_reset")}
    w = weight_of[np.searchsorted(addr_sorted, ev["address"].astype(np.int64))]
    n = ev["n_pulses"].astype(np.int64)
    is_set = np.isin(ev["purpose"], [c for k, c in codes.items() if k != "refresh_reset"
                                     and c > 0])
    pulses = np.bincount(w[is_set], n[is_set], minlength=n_weights).astype(np.int64)
    # a refresh RESETs both devices of its pair: two events per refresh
    is_reset = ev["purpose"] == codes["refresh_reset"] if codes["refresh_reset"] > 0 \
        else np.zeros(w.size, bool)
    refreshes = np.bincount(w[is_reset], minlength=n_weights) // 2
    return LoggedDistribution(pulses, refreshes.astype(np.int64))


def epoch_steps(log) -> List[tuple]:
    """(epoch, first step, stop step) of every epoch with logged step metrics: an epoch ends
    where the next one's first logged step begins (the last one runs to the log's end)."""
    sm = log.step_metrics()
    if "epoch" not in sm or sm["step"].size == 0:
        return []
    epochs = sm["epoch"].astype(np.int64)
    steps = sm["step"].astype(np.int64)
    firsts = [(int(e), int(steps[epochs == e].min())) for e in np.unique(epochs)]
    out = []
    for i, (e, first) in enumerate(firsts):
        start = 1 if i == 0 else first
        stop = firsts[i + 1][1] if i + 1 < len(firsts) else log.last_step + 1
        out.append((e, start, stop))
    return out


def epoch_stats_from_log(log) -> List[PulseDistribution]:
    """One PulseDistribution per logged epoch, counted from the pulse stream."""
    return [distribution_from_log(log, start, stop).summary()
            for _, start, stop in epoch_steps(log)]
