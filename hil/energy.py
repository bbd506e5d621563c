"""An energy estimate of a training run, from its counts, against a 32-bit digital design.

The mixed-precision design (Nandakumar et al. 2020): the PCM array computes the weighted
sums (forward through every layer, backward through every layer after the first), each
driven line through a DAC and each output through an ADC; the digital unit computes the
outer products, keeps χ in fp32 (a read-modify-write and a threshold compare per updated
weight), the activations, softmax and errors, and sends the SET and RESET pulses the run
sent, reading back what it pulsed. The 32-bit digital design does the same training with
its weights in SRAM: every weighted sum reads the weights it multiplies, every update is a
read-modify-write of the weight. Both designs skip zero inputs (MNIST is ~19 % ink) and share
the arithmetic of activations, softmax and errors.

Every per-operation energy comes from one YAML table with a source per entry
(hil/energy_table.yaml, or the lab's own); the counts come from the run: examples, non-zero
inputs, pulses by kind with their amplitude and width, devices read, the mean conductance.
docs/energy.md lists every count.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from drivers.errors import ConfigError
from drivers.pulse import PulseKind

TABLE_FORMAT = "pcm-hil-energy-table/1"
#: The entries an estimate needs, and the unit each must be given in.
REQUIRED_UNITS: Dict[str, str] = {
    "fp32_add": "pJ", "fp32_mult": "pJ", "int32_add": "pJ", "int8_add": "pJ",
    "sram_read_64b_8kb": "pJ", "sram_read_64b_32kb": "pJ", "sram_read_64b_1mb": "pJ",
    "dram_read_64b": "pJ", "access_32b_of_64b": "fraction", "exp_multiply_adds": "count",
    "divide_multiply_adds": "count", "pcm_read_time": "ns", "pcm_set_current": "uA",
    "pcm_reset_current": "uA", "adc_walden_fom": "fJ/conversion-step", "adc_bits": "bits",
    "dac_energy_of_adc": "fraction",
}
_PJ = 1e-12


@dataclass(frozen=True)
class EnergyEntry:
    name: str
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class EnergyTable:
    """Per-operation energies, each with its source."""

    path: str
    entries: Dict[str, EnergyEntry]

    def __getitem__(self, name: str) -> float:
        return self.entries[name].value

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "EnergyTable":
        """The packaged table, or the lab's file; a missing entry, value, unit or source is
        one ConfigError naming it."""
        import yaml
        if path is None:
            ref = resources.files("hil") / "energy_table.yaml"
            text, where = ref.read_text(encoding="utf-8"), "hil/energy_table.yaml"
        else:
            where = str(path)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise ConfigError(f"cannot read the energy table: {e.strerror}",
                                  source=where) from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"malformed YAML: {e}", source=where) from None
        return cls.from_dict(doc, where)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "energy table") -> "EnergyTable":
        if not isinstance(doc, Mapping) or doc.get("format") != TABLE_FORMAT:
            raise ConfigError(f"not an energy table (expected format: {TABLE_FORMAT})",
                              key="format", source=where)
        raw = doc.get("entries")
        if not isinstance(raw, Mapping):
            raise ConfigError("expected a mapping of entries", key="entries", source=where)
        entries = {}
        for name, e in raw.items():
            key = f"entries.{name}"
            if not isinstance(e, Mapping):
                raise ConfigError("expected value, unit and source", key=key, source=where)
            for part in ("value", "unit", "source"):
                if e.get(part) in (None, ""):
                    raise ConfigError(f"has no {part}" + (" (every energy needs the paper, "
                                      "datasheet or published estimate it comes from)"
                                      if part == "source" else ""), key=key, source=where)
            v = e["value"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"value must be a number >= 0, got {v!r}", key=key,
                                  source=where)
            entries[str(name)] = EnergyEntry(str(name), float(v), str(e["unit"]),
                                             str(e["source"]))
        for name, unit in REQUIRED_UNITS.items():
            if name not in entries:
                raise ConfigError("missing (an estimate needs it)", key=f"entries.{name}",
                                  source=where)
            if entries[name].unit != unit:
                raise ConfigError(f"unit {entries[name].unit!r}, expected {unit!r}",
                                  key=f"entries.{name}", source=where)
        return cls(where, entries)

    # --- derived per-operation energies, in joules ------------------------------------------
    def sram_word(self, n_bytes: int) -> float:
        """One 32-bit access to an SRAM holding n_bytes (the smallest of Horowitz's sizes that
        holds them; DRAM beyond 1 MB)."""
        for limit, name in ((8 << 10, "sram_read_64b_8kb"), (32 << 10, "sram_read_64b_32kb"),
                            (1 << 20, "sram_read_64b_1mb")):
            if n_bytes <= limit:
                return self[name] * self["access_32b_of_64b"] * _PJ
        return self["dram_read_64b"] * self["access_32b_of_64b"] * _PJ

    @property
    def mult_add(self) -> float:
        return (self["fp32_mult"] + self["fp32_add"]) * _PJ

    @property
    def adc(self) -> float:
        bits = self["adc_bits"]   # 2^bits as a scaling of 1.0 (exact; no C pow())
        steps = math.ldexp(1.0, int(bits)) if bits == int(bits) else 2.0 ** bits
        return self["adc_walden_fom"] * 1e-15 * steps

    @property
    def dac(self) -> float:
        return self.adc * self["dac_energy_of_adc"]

    def pulse(self, kind: PulseKind, amplitude_v: float, width_ns: float) -> float:
        """One pulse: amplitude × device current × width."""
        current = self["pcm_set_current"] if kind is PulseKind.SET else \
            self["pcm_reset_current"]
        return amplitude_v * current * 1e-6 * width_ns * 1e-9


@dataclass(frozen=True)
class PulseCount:
    """Pulses of one shape sent over a run."""

    kind: PulseKind
    amplitude_v: float
    width_ns: float
    pulses: int


@dataclass(frozen=True)
class TrainingCounts:
    """What a run did, as far as energy goes."""

    examples: int                  # training examples processed
    layers: Sequence[int]          # e.g. [784, 250, 10]
    active_inputs: int             # non-zero inputs over all examples (bias excluded)
    pulses: Sequence[PulseCount]
    devices_read: int              # devices read by every read command
    mean_conductance_us: float     # mean conductance of the mapped devices over the run
    read_voltage_v: float          # the weighted sums' input peak (training.matvec_read_v)

    @property
    def n_weights(self) -> int:
        ls = list(self.layers)
        return sum((a + 1) * b for a, b in zip(ls[:-1], ls[1:]))


@dataclass
class EnergyEstimate:
    """Joules per part for the whole run, for both designs."""

    examples: int
    mixed: Dict[str, float] = field(default_factory=dict)
    digital: Dict[str, float] = field(default_factory=dict)
    table: str = ""

    @property
    def mixed_total(self) -> float:
        return float(sum(self.mixed.values()))

    @property
    def digital_total(self) -> float:
        return float(sum(self.digital.values()))

    @property
    def ratio(self) -> float:
        return self.digital_total / self.mixed_total if self.mixed_total else float("nan")

    def summary(self) -> Dict[str, Any]:
        """The run summary's `energy` section (per image, in joules)."""
        n = max(1, self.examples)
        return {"mixed_precision_j_per_image": self.mixed_total / n,
                "digital_fp32_j_per_image": self.digital_total / n,
                "ratio": self.ratio,
                "mixed_precision_parts_j_per_image": {k: v / n for k, v in self.mixed.items()},
                "digital_fp32_parts_j_per_image": {k: v / n for k, v in self.digital.items()},
                "table": self.table}


def estimate(c: TrainingCounts, t: EnergyTable) -> EnergyEstimate:
    """The energy of both designs doing the training `c` describes (docs/energy.md)."""
    ls = list(c.layers)
    n_ex = c.examples
    hidden = ls[1:-1]
    # weights used per example: layer 0 only on its non-zero inputs and the bias
    rows0 = c.active_inputs + n_ex                   # summed over examples, bias included
    fwd = rows0 * ls[1] + n_ex * sum((a + 1) * b for a, b in zip(ls[1:-1], ls[2:]))
    bwd = n_ex * sum(a * b for a, b in zip(ls[1:-1], ls[2:]))   # bias rows carry no error
    updated = fwd                                      # the outer product's entries
    # arithmetic both designs do: activations, softmax, errors, the -lr scaling of δ
    exp_cost = t["exp_multiply_adds"] * t.mult_add
    div_cost = t["divide_multiply_adds"] * t.mult_add
    add, mult = t["fp32_add"] * _PJ, t["fp32_mult"] * _PJ
    n_hidden, n_out = sum(hidden), ls[-1]
    shared = n_ex * (n_hidden * (exp_cost + add + div_cost)          # sigmoid
                     + n_out * (exp_cost + add + div_cost)           # softmax
                     + n_hidden * (2 * mult + add)                   # h(1-h)·
                     + n_out * add                                   # p - onehot
                     + sum(ls[1:]) * mult)                           # δ·(-lr)
    act_word = t.sram_word(4 * (ls[0] + 1 + sum(h + 1 for h in hidden)))
    activations = 2 * act_word * (rows0 + n_ex * sum(h + 1 for h in hidden))
    outer = updated * mult
    weight_bytes = 4 * c.n_weights

    est = EnergyEstimate(n_ex, table=t.path)
    # --- mixed precision: weighted sums on the array ---------------------------------------
    g_s = c.mean_conductance_us * 1e-6
    t_read = t["pcm_read_time"] * 1e-9
    per_device = c.read_voltage_v * c.read_voltage_v * g_s * t_read    # V²·G·t, every line at the peak
    est.mixed["array weighted sums (V²·G·t)"] = 2 * (fwd + bwd) * per_device
    dac = rows0 + n_ex * (sum(h + 1 for h in hidden) + sum(ls[2:]))
    adc = n_ex * (sum(ls[1:]) + sum(hidden))
    est.mixed["DAC conversions"] = dac * t.dac
    est.mixed["ADC conversions"] = adc * t.adc
    est.mixed["outer products"] = outer
    # χ: read, add, compare |χ| >= ε, write back, for every entry of the outer product
    est.mixed["chi read-modify-write"] = updated * (2 * t.sram_word(weight_bytes) + 2 * add)
    est.mixed["activations, softmax, errors"] = shared
    est.mixed["activation memory"] = activations
    set_j = sum(p.pulses * t.pulse(p.kind, p.amplitude_v, p.width_ns)
                for p in c.pulses if p.kind is PulseKind.SET)
    reset_j = sum(p.pulses * t.pulse(p.kind, p.amplitude_v, p.width_ns)
                  for p in c.pulses if p.kind is not PulseKind.SET)
    est.mixed["SET pulses"] = set_j
    est.mixed["RESET pulses"] = reset_j
    est.mixed["device reads (V²·G·t and ADC)"] = c.devices_read * (per_device + t.adc)
    # --- the 32-bit digital design ----------------------------------------------------------
    word = t.sram_word(weight_bytes)
    est.digital["weight reads for weighted sums"] = (fwd + bwd) * word
    est.digital["multiply-accumulates"] = (fwd + bwd) * t.mult_add
    est.digital["outer products"] = outer
    est.digital["weight read-modify-write"] = updated * (2 * word + add)
    est.digital["activations, softmax, errors"] = shared
    est.digital["activation memory"] = activations
    return est


def counts_from_summary(summary: Mapping[str, Any], cfg: Any) -> Optional[TrainingCounts]:
    """TrainingCounts from a run summary of config format 2 (None when it lacks them)."""
    need = ("pulse_shapes", "active_inputs", "mean_conductance_us")
    if any(k not in summary for k in need):
        return None
    return TrainingCounts(
        examples=int(summary["examples"]), layers=list(cfg.network.layers),
        active_inputs=int(summary["active_inputs"]),
        pulses=[PulseCount(PulseKind(int(p["kind"])), float(p["amplitude_v"]),
                           float(p["width_ns"]), int(p["pulses"]))
                for p in summary["pulse_shapes"]],
        devices_read=int(summary["devices_read"]),
        mean_conductance_us=float(summary["mean_conductance_us"]),
        read_voltage_v=float(cfg.training.matvec_read_v))


def counts_from_log(log: Any, data: Any = None) -> TrainingCounts:
    """TrainingCounts from a run log: pulses by shape from its pulse batches, reads from its
    read batches, the mean conductance over its snapshots; non-zero inputs from its epoch
    metrics, or (logs of config format 1) counted in the data set its config names."""
    cfg = log.experiment_config()
    pb = log.pulse_batches()
    ev = log.pulse_events(columns=("n_pulses",))["n_pulses"].astype(np.int64)
    ends = np.concatenate([[0], np.cumsum(ev)])
    per_batch = ends[pb["offset"] + pb["count"]] - ends[pb["offset"]]
    shapes: Dict[tuple, int] = {}
    for kind, amp, width, n in zip(pb["kind"], pb["amplitude_v"], pb["width_ns"], per_batch):
        key = (int(kind), float(amp), float(width))
        shapes[key] = shapes.get(key, 0) + int(n)
    pulses = [PulseCount(PulseKind(k), a, w, n) for (k, a, w), n in sorted(shapes.items())]
    em = log.epoch_metrics()
    sm = log.step_metrics()
    examples = int(np.nansum(sm["examples"])) if "examples" in sm else 0
    if "active_inputs" in em and em["active_inputs"].size:
        active = int(np.nansum(em["active_inputs"]))
    else:
        active = _active_inputs_of_data(cfg, data, int(em["epoch"].size))
    if "mean_conductance_us" in em and em["mean_conductance_us"].size:
        g = float(np.nanmean(em["mean_conductance_us"]))
    else:
        snaps = log.snapshots()["step"]
        g = float(np.mean([np.nanmean(log.snapshot_g(i)) for i in range(snaps.size)])) \
            if snaps.size else 0.0
    return TrainingCounts(examples, list(cfg.network.layers), active, pulses,
                          int(log.counts["read_events"]), g,
                          float(cfg.training.matvec_read_v))


def _active_inputs_of_data(cfg: Any, data: Any, epochs: int) -> int:
    """Non-zero inputs of the training examples, times the epochs (every example is seen
    once per epoch)."""
    from hil.training import load_dataset
    d = load_dataset(cfg) if data is None else data.head(cfg.data.train_examples,
                                                         cfg.data.test_examples,
                                                         cfg.data.validation_examples)
    return int(np.count_nonzero(d.train_x[:, :-1])) * epochs


# --- reporting --------------------------------------------------------------------------------
def _si(v: float) -> str:
    for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}J"
    return f"{v / 1e-15:.3g} fJ"


def format_estimate(e: EnergyEstimate) -> str:
    """The breakdown per image, both designs, and the ratio."""
    n = max(1, e.examples)
    lines = [f"energy per training image ({e.examples:,} images; table {e.table})"]
    for title, parts, total in (("mixed precision (PCM array + digital unit)", e.mixed,
                                 e.mixed_total),
                                ("32-bit digital design", e.digital, e.digital_total)):
        lines.append(f"  {title}: {_si(total / n)}")
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            share = 100 * v / total if total else 0.0
            lines.append(f"    {k:<34} {_si(v / n):>10}  {share:5.1f} %")
    lines.append(f"  the digital design needs {e.ratio:,.1f}x the energy of the mixed-precision "
                 f"design (the seed paper's system study: 173x)")
    return "\n".join(lines)


def plot_estimate(e: EnergyEstimate, path: str) -> str:
    """A stacked bar per design, per image, log-free (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = max(1, e.examples)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = sorted(set(e.mixed) | set(e.digital),
                   key=lambda k: -(e.mixed.get(k, 0.0) + e.digital.get(k, 0.0)))
    cmap = plt.get_cmap("tab20")
    for x, parts in ((0, e.mixed), (1, e.digital)):
        bottom = 0.0
        for i, k in enumerate(names):
            v = parts.get(k, 0.0) / n * 1e9
            if v:
                ax.bar(x, v, bottom=bottom, color=cmap(i % 20), label=k if x == 0 or
                       k not in e.mixed else None, width=0.6)
                bottom += v
    ax.set_xticks([0, 1], ["mixed precision", "32-bit digital"])
    ax.set_ylabel("energy per training image (nJ)")
    ax.set_title(f"energy per image: {e.ratio:,.1f}x in favour of mixed precision")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["EnergyEntry", "EnergyEstimate", "EnergyTable", "PulseCount", "REQUIRED_UNITS",
           "TrainingCounts", "counts_from_log", "counts_from_summary", "estimate",
           "format_estimate", "plot_estimate"]
