"""Where the pulses go (hil.pulse_stats): the counter by hand, and the trainer's per-epoch
figures against a direct count of the pulse batches in its own run log."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hil.cli import main as cli_main
from hil.pulse_stats import (PulseCounter, PulseTotals, distribution, epoch_stats_from_log,
                             epoch_steps)
from hil.run_log import RunLog

# A refresh rule that refreshes a lot (format-1 style, guards off), so that pairs are
# refreshed more than once and a few weights take a visible share of the pulses.
BUSY = """\
name: busy
seed: 4
data: {train_examples: 250, validation_examples: 100, test_examples: 100}
network: {layers: [784, 12, 10], init_programming: blind}
optimizer:
  learning_rate: 0.3
  refresh: {period_steps: 5, criterion: either, high_us: 5.0, check_thresholds: false,
            hold_until_updated: false, fresh_read: false}
training: {epochs: 2, baseline: false}
log: {flush_every_steps: 100}
"""


@pytest.fixture(scope="module")
def busy_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("busy")
    (d / "busy.yaml").write_text(BUSY)
    run = str(d / "busy.h5")
    assert cli_main(["train", "--config", str(d / "busy.yaml"), "--run", run,
                     "--no-progress"]) == 0
    return run


def test_counter_and_distribution_by_hand():
    c = PulseCounter([3, 200])
    c.add_pulses(0, np.array([0, 2]), np.array([5, 1]))
    c.add_pulses(1, np.arange(150), np.ones(150, np.int64))
    c.add_pulses(1, np.array([7]), np.array([9]))
    c.add_refreshes(1, np.array([7, 8]))
    c.add_refreshes(1, np.array([7]))
    d = c.take_epoch()
    # 165 pulses; the top 100 weights: 10 (block 1, weight 7), 5, then 98 ones: 113
    assert (d.pairs_refreshed, d.max_pair_refreshes, d.max_weight_pulses) == (2, 2, 10)
    assert d.top_pulse_share == 113 / 165
    empty = c.take_epoch()      # the counts start again
    assert (empty.pairs_refreshed, empty.top_pulse_share, empty.max_weight_pulses) == (0, 0, 0)
    c.add_pulses(0, np.array([2]), np.array([4]))
    c.add_refreshes(1, np.array([7]))
    c.take_epoch()
    # over the run: weight 7 of block 1 refreshed 3 times in all, and took the most pulses
    run = c.run_distribution()
    assert (run.pairs_refreshed, run.max_pair_refreshes, run.max_weight_pulses) == (2, 3, 10)
    assert run.top_pulse_share == 117 / 169
    assert distribution(np.zeros(0, np.int64), np.zeros(0, np.int64)).max_pair_refreshes == 0


def test_totals_by_purpose():
    a = PulseTotals(init_set=5, init_reset=8, update_set=3)
    b = a.copy()
    b.refresh_set, b.refresh_reset, b.update_set = 2, 4, 10
    assert (b.set_pulses, b.reset_pulses) == (17, 12)
    assert b.minus(a) == PulseTotals(0, 0, 7, 2, 4)


def _direct_count(log, start, stop):
    """Per weight SET pulses and per pair refreshes, counted batch by batch in plain Python."""
    weight_of = {}
    for key, addr in log.layout.items():
        block = key.rsplit(".", 1)[0]
        for flat, a in enumerate(addr.ravel().tolist()):
            weight_of[a] = (block, flat)
    pulses, refreshes = Counter(), Counter()
    for b in log.iter_pulse_batches(start, stop):
        if b.purpose in ("update", "refresh_set"):
            for a, n in zip(b.addresses.tolist(), b.n_pulses.tolist()):
                pulses[weight_of[a]] += n
        elif b.purpose == "refresh_reset":
            # both devices of each refreshed pair are RESET: count the pair once
            for pair in {weight_of[a] for a in b.addresses.tolist()}:
                refreshes[pair] += 1
    return pulses, refreshes


def test_the_trainers_figures_equal_a_direct_count_from_its_log(busy_log):
    with RunLog(busy_log) as log:
        em = log.epoch_metrics()
        sm = log.step_metrics()
        ranges = epoch_steps(log)
        from_log = epoch_stats_from_log(log)
        assert [e for e, _, _ in ranges] == [0, 1]
        assert ranges[0][1] == 1 and ranges[1][1] == ranges[0][2] == 251
        for i, (epoch, start, stop) in enumerate(ranges):
            pulses, refreshes = _direct_count(log, start, stop)
            total = sum(pulses.values())
            top = sum(sorted(pulses.values(), reverse=True)[:100])
            assert max(refreshes.values()) > 1          # the busy rule repeats pairs
            # what the trainer logged as it went
            assert em["max_pair_refreshes"][i] == max(refreshes.values())
            assert em["pairs_refreshed"][i] == len(refreshes)
            assert em["max_weight_pulses"][i] == max(pulses.values())
            assert em["top100_pulse_share"][i] == pytest.approx(top / total, rel=1e-12)
            assert em["refreshes"][i] == sum(refreshes.values())
            assert em["update_set_pulses"][i] + em["refresh_set_pulses"][i] == total == \
                em["set_pulses"][i]
            assert em["refreshes"][i] == np.nansum(sm["refreshes"][sm["epoch"] == epoch])
            # and what the log alone gives
            d = from_log[i]
            assert (d.max_pair_refreshes, d.pairs_refreshed, d.max_weight_pulses) == \
                (max(refreshes.values()), len(refreshes), max(pulses.values()))
            assert d.top_pulse_share == pytest.approx(top / total, rel=1e-12)
        whole = _direct_count(log, 1, log.last_step + 1)
        s = log.summary
    assert s["refreshes"] == int(np.sum(em["refreshes"]))
    assert s["pulses"]["refresh_reset"] == 2 * s["refreshes"]
    # the summary's figures over the whole run
    pulses, refreshes = whole
    d = s["pulse_distribution"]
    assert (d["max_pair_refreshes"], d["pairs_refreshed"], d["max_weight_pulses"]) == \
        (max(refreshes.values()), len(refreshes), max(pulses.values()))
    assert d["top100_pulse_share"] == pytest.approx(
        sum(sorted(pulses.values(), reverse=True)[:100]) / sum(pulses.values()), rel=1e-12)


def test_replay_plot_draws_the_distribution(busy_log, tmp_path, capsys):
    figs = tmp_path / "figs"
    assert cli_main(["replay", busy_log, "--plot", str(figs)]) == 0
    assert (figs / "refresh_distribution.png").stat().st_size > 5000
    assert "refresh_distribution.png" in capsys.readouterr().out


def test_replay_summary_names_validation_accuracy_and_the_worst_epochs_spread(busy_log,
                                                                               capsys):
    import json
    assert cli_main(["replay", busy_log, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    with RunLog(busy_log) as log:
        em = log.epoch_metrics()
    assert s["validation_accuracy"] == em["validation_accuracy"][-1]
    assert s["worst_max_pair_refreshes"] == max(em["max_pair_refreshes"])
    assert s["worst_top100_pulse_share"] == max(em["top100_pulse_share"])
    assert cli_main(["replay", busy_log]) == 0
    text = capsys.readouterr().out
    assert f"validation {100 * s['validation_accuracy']:.2f}%" in text
    assert f"most of one pair in an epoch {s['worst_max_pair_refreshes']:.0f}" in text
