"""What `pcm-hil replay` prints about a run log: its figures as a dict, and as text."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from hil.run_log import BATCH_ACKED, RunLog
from hil.run_state import RunState


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
        "arithmetic": log.arithmetic,   # None: before portable arithmetic (can't --verify)
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
    for key in ("test_accuracy", "train_accuracy", "validation_accuracy",
                "baseline_test_accuracy", "baseline_validation_accuracy",
                "holdout_bpc", "baseline_holdout_bpc", "fid", "baseline_fid",
                "inception_score", "baseline_inception_score"):
        if key in em and em[key].size and not np.isnan(em[key][-1]):
            out[key] = float(em[key][-1])
    # where the pulses went, epoch by epoch (logs of config format 2 on): the worst epoch
    for key in ("max_pair_refreshes", "top100_pulse_share"):
        if key in em and em[key].size and not np.isnan(em[key]).all():
            out[f"worst_{key}"] = float(np.nanmax(em[key]))
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
        if "validation_accuracy" in s:
            acc += f", validation {100 * s['validation_accuracy']:.2f}%"
        if "baseline_test_accuracy" in s:
            acc += f", fp32 baseline {100 * s['baseline_test_accuracy']:.2f}%"
    elif "holdout_bpc" in s:          # a language model (docs/lstm-gan.md)
        acc = f"holdout {s['holdout_bpc']:.4f} bits per character"
        if "baseline_holdout_bpc" in s:
            acc += f", fp32 {s['baseline_holdout_bpc']:.4f}"
    elif "fid" in s:                  # a GAN: classifier-FID and inception-style score
        acc = f"classifier-FID {s['fid']:.2f}, IS {s['inception_score']:.2f}"
        if "baseline_fid" in s:
            acc += f"; fp32 {s['baseline_fid']:.2f}, IS {s['baseline_inception_score']:.2f}"
    snaps = s["snapshots"]
    lines = [
        ("run log", f"{s['path']} ({_size(s['file_bytes'])}, schema {s['schema_version']})"),
        ("arithmetic", s["arithmetic"] or "machine-dependent (recorded before portable "
                                           "arithmetic: replays, cannot --verify)"),
        ("name", f"{s['name']} (created {s['created_utc']})"),
        ("status", status),
        ("epochs", f"{s['epochs_logged']} of {s['epochs_configured']}; steps up to "
                   f"{s['last_step']:,} (complete through {s['complete_step']:,})"),
        ("accuracy" if "test_accuracy" in s or acc == "not logged" else "score", acc),
        ("pulses", f"{s['set_pulses']:,} SET, {s['reset_pulses']:,} RESET in "
                   f"{s['pulse_batches']:,} batches"
                   + (f" ({s['unacknowledged_batches']} never acknowledged)"
                      if s["unacknowledged_batches"] else "")),
        ("refreshes", f"{s['refreshes']:,}" + (
            f"; most of one pair in an epoch {s['worst_max_pair_refreshes']:.0f}, top 100 "
            f"weights at most {100 * s['worst_top100_pulse_share']:.1f}% of an epoch's SET "
            f"pulses" if "worst_top100_pulse_share" in s else "")),
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
