"""`pcm-hil replay`: summarise, plot and verify a logged run, long after the chip is gone."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from drivers.errors import ConfigError
from hil.run_log import BATCH_ACKED, RunLog
from hil.run_state import RunState

HELP = """\
Open a run log (the HDF5 file `pcm-hil train --run RUN.h5` writes) and print its summary:
status (and the reason when the run was aborted or failed), config name, epochs, accuracy
(with the fp32 baseline when it was trained), pulse and read counts, refreshes, snapshots,
chip and file size, and the run's state digest (the SHA-256 of the final conductance of
every mapped device that the trainer put in the summary of the final status record; with
--json, `state_digest` is null unless the run completed). A log cut short by a crash opens
too: it shows everything up to the last flush, and the pulse batches its write-ahead journal
(RUN.h5.journal) recorded after that.

--plot DIR writes PNG figures into DIR:
  accuracy.png          train/test accuracy per epoch, and the fp32 baseline when logged
  conductance_hist.png  histograms of G+ and G- at the --steps you choose (the host's
                        view: nearest snapshot plus every read up to the step)
  pulses.png            SET and RESET pulses per step
  refreshes.png         refreshed devices per step, and their running total
  traces.png            the conductance of a few devices, read by read, over the run

--verify re-runs the experiment from the logged config against the log itself (the
replay:// backend): every read and on-chip weighted sum (MATVEC) is served from the log,
every pulse batch, metric and snapshot the re-run produces must equal the logged one bit for
bit. Exit status 0 when everything matches; otherwise the first divergence (step, command
index, device) is printed and the exit status is 1. Timing metrics (names like seconds,
*_s, *_ms) are not compared. Runs with training.matvec: chip can be verified from logs of
schema 1.1 on (1.0 logs hold no MATVEC results).

examples:
  pcm-hil replay runs/quick.h5
  pcm-hil replay runs/quick.h5 --plot figs --steps 0,5000,last --devices 8
  pcm-hil replay runs/quick.h5 --verify
  pcm-hil train --config configs/quick.yaml --backend replay://runs/quick.h5

exit status: 0 ok, 1 error or divergence, 2 bad command line.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="summarise, plot or verify a run log",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN.h5", help="run log written by `pcm-hil train --run`")
    p.add_argument("--plot", metavar="DIR",
                   help="write PNG figures into DIR (created if missing)")
    p.add_argument("--steps", metavar="LIST", default="first,last",
                   help="steps for the conductance histograms: comma-separated step numbers "
                        "or first, mid, last (default: first,last)")
    p.add_argument("--devices", metavar="N", type=int, default=6,
                   help="number of devices to trace in traces.png, sampled among the mapped "
                        "devices that were pulsed (default: 6)")
    p.add_argument("--device", metavar="ADDR", type=int, action="append", default=None,
                   help="trace this device address (repeatable; overrides --devices)")
    p.add_argument("--verify", action="store_true",
                   help="re-run the logged experiment against the log and check that every "
                        "pulse batch, metric and snapshot matches exactly")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for --verify")
    p.set_defaults(func=run)


# --- summary ----------------------------------------------------------------------------------
def summarize(log: RunLog) -> Dict[str, Any]:
    """The numbers `pcm-hil replay` prints, as a dict."""
    st = log.status
    cfg = log.config
    pb = log.pulse_batches()
    pe = log.pulse_events(columns=("n_pulses", "kind", "purpose"))
    n = pe["n_pulses"].astype(np.int64)
    kind = pe["kind"]
    sm = log.step_metrics()
    em = log.epoch_metrics()
    if "refreshes" in sm:
        refreshes = int(np.nansum(sm["refreshes"]))
    else:
        code = log.purpose_code("refresh_reset")
        refreshes = int(np.count_nonzero(pe["purpose"] == code)) // 2 if code > 0 else 0
    out: Dict[str, Any] = {
        "path": log.path,
        "file_bytes": log.file_size,
        "schema_version": log.schema_version,
        "name": log.name or cfg.get("name"),
        "created_utc": log.created_utc,
        "status": str(st.status),
        "reason": st.reason,
        # The trainer's digest of the final conductances, from the summary in the final
        # status record: only a completed run has one (docs/run-log.md, "State digest").
        "state_digest": ((st.summary or {}).get("state_digest")
                         if st.status == RunState.COMPLETED else None),
        "epochs_logged": int(em["epoch"].size),
        "epochs_configured": (cfg.get("training") or {}).get("epochs"),
        "last_step": log.last_step,
        "complete_step": log.complete_step,
        "pulse_batches": int(pb["seq"].size),
        "unacknowledged_batches": int(np.count_nonzero(pb["status"] != BATCH_ACKED)),
        "set_pulses": int(n[kind == 1].sum()),
        "reset_pulses": int(n[kind == 2].sum()),
        "read_commands": int(log.counts["read_batches"]),
        "devices_read": int(log.counts["read_events"]),
        "matvec_commands": int(log.counts["matvec_batches"]),
        "refreshes": refreshes,
        "snapshots": [int(s) for s in log.snapshots()["step"]],
        "events": [{"step": e.step, "kind": e.kind, "detail": e.detail} for e in log.events()],
        "devices": log.n_devices,
    }
    for key in ("test_accuracy", "train_accuracy", "baseline_test_accuracy"):
        if key in em and em[key].size and not np.isnan(em[key][-1]):
            out[key] = float(em[key][-1])
    tail = log.journal()
    if tail.batches or tail.acked_rows:
        out["journal_batches"] = len(tail.batches)
        out["journal_acknowledged"] = sum(b.status == "acked" for b in tail.batches)
    info = log.chip_info()
    if info is not None:
        g = info.geometry
        out["chip"] = (f"{info.chip_id} (firmware {info.firmware_version}), "
                       f"{g.arrays}x{g.rows}x{g.cols}")
    return out


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


def format_summary(s: Dict[str, Any]) -> str:
    status = s["status"] + (f" ({s['reason']})" if s.get("reason") else "")
    if s["status"] == RunState.RUNNING:
        status += " - not finished: still being written, or the writer was killed"
    acc = "not logged"
    if "test_accuracy" in s:
        acc = f"test {100 * s['test_accuracy']:.2f}%"
        if "train_accuracy" in s:
            acc += f", train {100 * s['train_accuracy']:.2f}%"
        if "baseline_test_accuracy" in s:
            acc += f", fp32 baseline {100 * s['baseline_test_accuracy']:.2f}%"
    snaps = s["snapshots"]
    lines = [
        ("run log", f"{s['path']} ({_size(s['file_bytes'])}, schema {s['schema_version']})"),
        ("name", f"{s['name']} (created {s['created_utc']})"),
        ("status", status),
        ("epochs", f"{s['epochs_logged']} of {s['epochs_configured']}; steps up to "
                   f"{s['last_step']:,} (complete through {s['complete_step']:,})"),
        ("accuracy", acc),
        ("pulses", f"{s['set_pulses']:,} SET, {s['reset_pulses']:,} RESET in "
                   f"{s['pulse_batches']:,} batches"
                   + (f" ({s['unacknowledged_batches']} never acknowledged)"
                      if s["unacknowledged_batches"] else "")),
        ("refreshes", f"{s['refreshes']:,}"),
        ("reads", f"{s['devices_read']:,} devices in {s['read_commands']:,} commands"
                  + (f"; {s['matvec_commands']:,} MATVECs" if s["matvec_commands"] else "")),
        ("snapshots", f"{len(snaps)}" + (f" (steps {', '.join(map(str, snaps[:6]))}"
                                          + (", ..." if len(snaps) > 6 else "") + ")"
                                          if snaps else "")),
        ("devices", f"{s['devices']:,} mapped"),
    ]
    if s["events"]:
        kinds = sorted({e["kind"] for e in s["events"]})
        lines.append(("events", f"{len(s['events'])} ({', '.join(kinds)})"))
    if s.get("state_digest"):
        lines.append(("state", f"digest {s['state_digest']}"))
    if "chip" in s:
        lines.append(("chip", s["chip"]))
    if s.get("journal_batches"):
        lines.append(("journal", f"{s['journal_batches']} pulse batches sent after the last "
                                 f"commit ({s['journal_acknowledged']} acknowledged), in "
                                 f"{s['path']}.journal"))
    return "\n".join(f"{k:<11} {v}" for k, v in lines)


# --- plots ----------------------------------------------------------------------------------
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
    if ep.size:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no epoch finished", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    save(fig, "accuracy.png")

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
    ax.legend()
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


# --- command --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    if args.devices < 0:
        raise ConfigError(f"must be >= 0, got {args.devices}", key="--devices")
    with RunLog(args.run) as log:
        s = summarize(log)
        if args.json:
            print(json.dumps(s, indent=2))
        else:
            print(format_summary(s))
        if args.plot:
            steps = parse_steps(args.steps, log)
            files = make_plots(log, args.plot, steps, args.devices, args.device)
            print(f"plots: {', '.join(files)}")
    if args.verify:
        from hil.replay_backend import verify_run
        report = verify_run(args.run, progress=not args.no_progress)
        print(report.message)
        if report.logged_seconds:
            print(f"verify took {report.seconds:.1f} s (the live run trained for "
                  f"{report.logged_seconds:.1f} s)")
        return 0 if report.ok else 1
    return 0
