"""The figures `pcm-hil replay --plot DIR` draws from a run log (PNG, matplotlib)."""
from __future__ import annotations

import os
from typing import Any, List, Optional

import numpy as np

from drivers.errors import ConfigError
from hil.run_log import RunLog


def parse_steps(text: str, log: RunLog) -> List[int]:
    """'0,5000,last' → step numbers; a bad item is one ConfigError naming it."""
    snaps = log.snapshots()["step"]
    first = int(snaps[0]) if snaps.size else 0
    last = max(log.last_step, first)
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "first":
            v = first
        elif item == "last":
            v = last
        elif item == "mid":
            v = (first + last) // 2
        else:
            try:
                v = int(item)
            except ValueError:
                raise ConfigError(f"{item!r} is not a step number (or first, mid, last)",
                                  key="--steps") from None
            if not first <= v <= last:
                raise ConfigError(f"step {v} is outside the logged steps {first}..{last}",
                                  key="--steps")
        if v not in out:
            out.append(v)
    if not out:
        raise ConfigError("no steps given", key="--steps")
    return out


def _refresh_distribution(log: RunLog, plt: Any) -> Any:
    """Refreshes per pair over the run (a feedback loop shows as a long tail), and per
    epoch the most-refreshed pair and the share of SET pulses taken by the top 100 weights."""
    from hil.pulse_stats import TOP_WEIGHTS, distribution_from_log, epoch_stats_from_log
    whole = distribution_from_log(log)
    per_epoch = epoch_stats_from_log(log)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    r = whole.refreshes
    if r.size and r.max() > 0:
        a1.hist(r[r > 0], bins=np.arange(1, r.max() + 2) - 0.5 if r.max() < 60 else 60)
        a1.set_yscale("log")
    else:
        a1.text(0.5, 0.5, "no refreshes", ha="center", transform=a1.transAxes)
    a1.set_xlabel("refreshes of one pair (whole run)")
    a1.set_ylabel("pairs")
    a1.set_title(f"{int(np.count_nonzero(r)):,} pairs refreshed, most {int(r.max()) if r.size else 0}")
    ep = np.arange(1, len(per_epoch) + 1)
    if per_epoch:
        a2.plot(ep, [d.max_pair_refreshes for d in per_epoch], "o-",
                label="refreshes of the most-refreshed pair")
        a2.set_ylabel("refreshes in the epoch")
        b = a2.twinx()
        b.plot(ep, [100 * d.top_pulse_share for d in per_epoch], "s--", color="tab:red",
               label=f"share of SET pulses on the top {TOP_WEIGHTS} weights")
        b.set_ylabel(f"% of SET pulses, top {TOP_WEIGHTS} weights")
        b.set_ylim(bottom=0)
        lines = a2.get_lines() + b.get_lines()
        a2.legend(lines, [ln.get_label() for ln in lines], fontsize="small", loc="upper left")
    a2.set_xlabel("epoch")
    a2.set_title("per epoch")
    a2.grid(alpha=0.3)
    return fig


def make_plots(log: RunLog, folder: str, steps: List[int], n_devices: int = 6,
               devices: Optional[List[int]] = None) -> List[str]:
    """Write the PNG figures; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create folder {folder!r}: {e.strerror}", key="--plot") \
            from None
    written = []

    def save(fig: Any, name: str) -> None:
        path = os.path.join(folder, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # Accuracy per epoch.
    em = log.epoch_metrics()
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = em["epoch"] + 1
    for key, label, style in (("train_accuracy", "train (chip)", "o-"),
                              ("test_accuracy", "test (chip)", "s-"),
                              ("baseline_test_accuracy", "test (fp32 baseline)", "^--")):
        if key in em and np.any(~np.isnan(em[key])):
            ax.plot(ep, 100 * em[key], style, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{log.name}: accuracy per epoch")
    if ax.get_lines():
        ax.legend()
    elif ep.size:
        ax.text(0.5, 0.5, "no accuracy logged", ha="center", transform=ax.transAxes)
    else:
        ax.text(0.5, 0.5, "no epoch finished", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    save(fig, "accuracy.png")

    # Losses: per step (both players' for a GAN) and, for a language model, bits per
    # character per epoch; FID and IS per epoch for a GAN.
    _loss_plots(log, em, plt, save)

    # G+ / G- histograms at the chosen steps.
    plus = [k for k in log.layout if k.endswith(".plus")]
    minus = [k for k in log.layout if k.endswith(".minus")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for s in steps:
        st = log.state(s)
        for ax, keys, title in ((axes[0], plus, "G+"), (axes[1], minus, "G-")):
            vals = np.concatenate([st[k].ravel() for k in keys]) if keys else np.zeros(0)
            vals = vals[~np.isnan(vals)]
            if vals.size:
                ax.hist(vals, bins=80, histtype="step", label=f"step {s}")
            ax.set_title(title)
            ax.set_xlabel("conductance (µS)")
    axes[0].set_ylabel("devices")
    axes[0].set_yscale("log")
    axes[1].legend()
    save(fig, "conductance_hist.png")

    # Pulses per step.
    pps = log.pulses_per_step()
    fig, ax = plt.subplots(figsize=(8, 4))
    train = pps["step"] > 0
    for key, label in (("set", "SET"), ("reset", "RESET")):
        y = pps[key][train]
        if y.size and y.any():
            ax.plot(pps["step"][train], y, lw=0.5, alpha=0.5, label=f"{label} pulses")
            w = max(1, y.size // 200)
            if w > 1:
                ax.plot(pps["step"][train][w - 1:], np.convolve(y, np.ones(w) / w, "valid"),
                        lw=1.5, label=f"{label}, mean over {w} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("pulses per step")
    ax.set_title("pulses per step (initial programming at step 0 not shown)")
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no pulses after the initial programming", ha="center",
                va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    save(fig, "pulses.png")

    # Refreshes.
    code = log.purpose_code("refresh_reset")
    fig, ax = plt.subplots(figsize=(8, 4))
    if code > 0:
        ev = log.pulse_events(columns=("step", "purpose"))
        rs = ev["step"][ev["purpose"] == code].astype(np.int64)
        if rs.size:
            steps_u, counts = np.unique(rs, return_counts=True)
            ax.bar(steps_u, counts // 2, width=max(1, (steps_u.max() - steps_u.min()) / 300),
                   label="pairs refreshed")
            ax2 = ax.twinx()
            ax2.plot(steps_u, np.cumsum(counts // 2), "r-", label="running total")
            ax2.set_ylabel("running total")
            ax2.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("pairs refreshed")
    ax.set_title("refreshes")
    save(fig, "refreshes.png")

    save(_refresh_distribution(log, plt), "refresh_distribution.png")

    # Device traces.
    if devices:
        chosen = np.asarray(devices, dtype=np.int64)
    else:
        # candidates: devices pulsed early in training (a bounded read, whatever the log size)
        pe = log.pulse_events(start_step=1, stop_step=2001, columns=("address",))
        pool = np.unique(pe["address"]) if pe["address"].size else log.addresses
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(pool, size=min(n_devices, pool.size), replace=False))
    fig, ax = plt.subplots(figsize=(8, 4))
    if chosen.size:
        tr = log.traces(chosen)
        g0 = log.conductance(0, chosen) if log.snapshots()["step"].size else None
        for i, a in enumerate(chosen):
            sel = tr["address"] == a
            x, y = tr["step"][sel], tr["value"][sel]
            if g0 is not None and not np.isnan(g0[i]):
                x, y = np.concatenate([[0], x]), np.concatenate([[g0[i]], y])
            ax.step(x, y, where="post", label=f"device {int(a)}")
        ax.legend(fontsize="small", ncol=2)
    ax.set_xlabel("step")
    ax.set_ylabel("conductance read (µS)")
    ax.set_title("device traces (every read)")
    ax.grid(alpha=0.3)
    save(fig, "traces.png")
    return written


def _smooth(y: np.ndarray) -> tuple:
    """A running mean over about 1/200 of the curve (the window, and the smoothed curve)."""
    w = max(1, y.size // 200)
    return w, (np.convolve(y, np.ones(w) / w, "valid") if w > 1 else y)


def _loss_plots(log: RunLog, em: dict, plt: Any, save: Any) -> None:
    sm = log.step_metrics()
    players = [k for k in ("d_loss", "g_loss") if k in sm]
    keys = players or [k for k in ("loss",) if k in sm]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = {"loss": "training loss", "d_loss": "discriminator", "g_loss": "generator"}
    for key in keys:
        ok = ~np.isnan(sm[key])
        w, y = _smooth(sm[key][ok])
        ax.plot(sm["step"][ok][w - 1:], y, lw=1.2,
                label=names[key] + (f" (mean over {w} steps)" if w > 1 else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per prediction)")
    ax.set_title(f"{log.name}: training loss")
    if ax.get_lines():
        ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "loss.png")
    ep = em["epoch"] + 1
    if "holdout_bpc" in em:
        fig, ax = plt.subplots(figsize=(6, 4))
        _epoch_series(ax, ep, em, (("train_bpc", "train (chip)", "o-"),
                                   ("holdout_bpc", "holdout (chip)", "s-"),
                                   ("baseline_holdout_bpc", "holdout (fp32)", "^--")))
        ax.set_xlabel("epoch")
        ax.set_ylabel("bits per character")
        ax.set_title(f"{log.name}: bits per character per epoch")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "bpc.png")
    if "fid" in em:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        _epoch_series(ax, ep, em, (("fid", "chip", "s-"), ("baseline_fid", "fp32", "^--")))
        _epoch_series(ax2, ep, em, (("inception_score", "chip", "s-"),
                                    ("baseline_inception_score", "fp32", "^--")))
        ax.set_title("classifier-FID per epoch (lower is better)")
        ax2.set_title("inception-style score per epoch")
        for a in (ax, ax2):
            a.set_xlabel("epoch")
            a.legend()
            a.grid(alpha=0.3)
        save(fig, "fid.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        _epoch_series(ax, ep, em, (("d_loss", "discriminator (chip)", "o-"),
                                   ("g_loss", "generator (chip)", "s-"),
                                   ("baseline_d_loss", "discriminator (fp32)", "o--"),
                                   ("baseline_g_loss", "generator (fp32)", "s--")))
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean loss over the epoch")
        ax.set_title(f"{log.name}: both players' losses per epoch")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "gan_losses.png")


def _epoch_series(ax, ep, em, series) -> None:
    """Plot each (epoch-metric key, label, style) the log has against the epoch number."""
    for key, label, style in series:
        if key in em:
            ax.plot(ep, em[key], style, label=label)
