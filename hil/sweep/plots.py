"""A sweep's plots: accuracy against pulses with the Pareto front marked, and the spread over
seeds of each setting. Both read the rows of the results table (hil.sweep.results)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from hil.sweep.results import is_number

#: Accuracy figures in the order a plot prefers them: model selection belongs on validation.
ACCURACY_KEYS = ("validation_accuracy", "val_accuracy", "test_accuracy")


def accuracy_key(rows: Sequence[Mapping[str, Any]], configured: Optional[str]) -> Optional[str]:
    if configured:
        return configured
    for k in ACCURACY_KEYS:
        if any(is_number(r.get(k)) for r in rows):
            return k
    return None


def pareto_front(pulses: Sequence[float], accuracy: Sequence[float]) -> List[int]:
    """Indices of the points no other point beats on both (fewer pulses, higher accuracy),
    by increasing pulses."""
    order = sorted(range(len(pulses)), key=lambda i: (pulses[i], -accuracy[i]))
    front, best = [], float("-inf")
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def _finished(rows: Sequence[Mapping[str, Any]], *keys: str) -> List[Mapping[str, Any]]:
    return [r for r in rows if r.get("status") == "finished"
            and all(is_number(r.get(k)) for k in keys)]


def _colors(labels: Sequence[str]) -> Dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "viridis"]
    n = max(1, len(labels) - 1)
    return {lab: cmap(i if len(labels) <= 10 else i / n) for i, lab in enumerate(labels)}


def plot_pareto(rows: Sequence[Mapping[str, Any]], accuracy: str, pulses: str, path: str,
                title: str = "") -> bool:
    """Every finished point, coloured by setting; the Pareto front ringed and joined.
    Returns False (and draws nothing) when no point has both figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = _finished(rows, accuracy, pulses)
    if not pts:
        return False
    labels = list(dict.fromkeys(r["label"] for r in pts))
    colors = _colors(labels)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for lab in labels:
        mine = [r for r in pts if r["label"] == lab]
        ax.scatter([r[pulses] for r in mine], [100 * r[accuracy] for r in mine], s=28,
                   color=colors[lab], label=lab if len(labels) <= 12 else None, alpha=0.85)
    xs = [float(r[pulses]) for r in pts]
    ys = [float(r[accuracy]) for r in pts]
    front = pareto_front(xs, ys)
    ax.step([xs[i] for i in front], [100 * ys[i] for i in front], where="post", color="black",
            lw=1, alpha=0.6)
    ax.scatter([xs[i] for i in front], [100 * ys[i] for i in front], s=110,
               facecolors="none", edgecolors="black", lw=1.4, label="Pareto front")
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(pulses.replace("_", " "))
    ax.set_ylabel(f"{accuracy.replace('_', ' ')} (%)")
    ax.set_title(title or f"{accuracy} against {pulses}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_seeds(rows: Sequence[Mapping[str, Any]], accuracy: str, pulses: str, path: str,
               title: str = "") -> bool:
    """Per setting: each seed as a dot, the mean ± std as a bar; accuracy above, pulses
    below. Returns False when no point has both figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = _finished(rows, accuracy, pulses)
    if not pts:
        return False
    labels = list(dict.fromkeys(r["label"] for r in pts))
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.6 * len(labels) + 3), 7), sharex=True)
    for ax, key, scale, name in ((axes[0], accuracy, 100.0, f"{accuracy} (%)"),
                                 (axes[1], pulses, 1.0, pulses)):
        for x, lab in enumerate(labels):
            vals = [scale * float(r[key]) for r in pts if r["label"] == lab]
            ax.scatter([x] * len(vals), vals, s=18, color="tab:blue", alpha=0.7, zorder=3)
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 \
                if len(vals) > 1 else 0.0
            ax.errorbar([x + 0.18], [mean], yerr=[std], fmt="s", color="black", ms=4,
                        capsize=4, zorder=4)
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    axes[0].set_title(title or "spread over seeds (dots: seeds; squares: mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


__all__ = ["ACCURACY_KEYS", "accuracy_key", "pareto_front", "plot_pareto", "plot_seeds"]
