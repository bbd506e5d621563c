"""What every benchmark shares: the benchmark experiment and the chip it runs on."""
from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hil.config import ExperimentConfig, config_from_dict
from sim_backend.sim_chip import SimulatedChip

#: Networks of the network-size scaling table: layers, init range, β per layer.
NETWORKS: Dict[str, Tuple[List[int], List[float], List[float]]] = {
    "784-100-10": ([784, 100, 10], [0.2, 0.3], [0.1, 0.3]),
    "784-250-10": ([784, 250, 10], [0.2, 0.3], [0.1, 0.3]),
    "784-500-10": ([784, 500, 10], [0.2, 0.3], [0.1, 0.3]),
    "784-1000-1000-10": ([784, 1000, 1000, 10], [0.2, 0.1, 0.3], [0.1, 0.1, 0.3]),
}


def say(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the results."""
    print(msg, file=sys.stderr, flush=True)


def bench_config(examples: int, test_examples: int, network_name: str = "784-250-10",
                 cols: int = 2048) -> ExperimentConfig:
    """The default experiment config, one epoch of `examples`, no baseline, no log."""
    layers, init_range, beta = NETWORKS[network_name]
    d = ExperimentConfig(name="bench").to_dict()
    d["data"].update(train_examples=examples, validation_examples=0,
                     test_examples=test_examples)
    d["training"].update(epochs=1, baseline=False)
    d["network"].update(layers=list(layers), init_range=list(init_range))
    d["optimizer"]["beta"] = list(beta)
    d["chip"]["cols"] = cols
    return config_from_dict(d, source="bench")


def open_sim_chip(cfg: ExperimentConfig) -> SimulatedChip:
    """A fresh in-process simulated chip as the config describes it (model, geometry, seed)."""
    return cfg.sim_chip_spec().build()


def epoch_examples_per_s(summary: Dict[str, Any]) -> float:
    """Examples per second of the training epoch (the chip's one-off initial programming is
    excluded, so the figure compares with the fp32 loops, which have none)."""
    return summary["examples"] / summary["per_epoch"][0]["seconds"]


def median_interval(values: Sequence[float], level: float = 0.95
                    ) -> Optional[Tuple[float, float]]:
    """A distribution-free interval for the median of `values`, at least `level` sure: the
    k-th smallest and k-th largest values for the largest k the sign test allows. On a
    shared machine run-to-run noise is neither normal nor small, so paired benchmark
    differences are judged by this rather than a mean ± std. None for fewer than 6 values
    (no interval reaches 95 %)."""
    v = sorted(values)
    n = len(v)
    best = None
    below = 0   # the count of Binomial(n, 1/2) outcomes <= k
    for k in range(n // 2):   # P(v[k] <= median <= v[n-1-k]) = 1 - 2·P(Binomial(n, 1/2) <= k)
        below += math.comb(n, k)
        if 1.0 - 2.0 * below / 2.0 ** n < level:
            break
        best = (v[k], v[n - 1 - k])
    return best
