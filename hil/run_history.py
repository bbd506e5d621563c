"""The chip's history as a run log knows it: recorded when the run begins, checked before a
resume sends anything.

A run on a chip that reports its history (firmware 1.3: drivers.abilities.ChipHistory)
records in its log's provenance, under `chip_history`, the chip's boot and position before the
run's first command (`start`). A resumed log holds the whole run from step 0, so it carries
its first segment's `start`, plus where the chip stood when it was resumed (`resumed_at`).

Before a resume sends anything, `check_log_chip` asks the chip where its history stands: it
must be the log's boot, and exactly as far as every command the log knows reached the chip
takes it from `start`, give or take the one command the kill left uncertain (re-sent under
its wire sequence number, drivers.chip_history). Refused, with one ChipHistoryError naming what
differs: a power-cycled chip (another boot), a history further than the log (another client
used the chip, or a later segment continued the run), a chip that cannot report its history,
or a log that recorded none.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from drivers.abilities import ChipHistory, find_ability
from drivers.backend import ChipBackend
from drivers.chip_history import (HistoryExpectation, HistoryMismatch, HistoryPosition,
                                  UncertainCommand, check_chip)
from drivers.errors import ChipHistoryError

if TYPE_CHECKING:
    from hil.run_log import RunLog

#: The provenance key.
KEY = "chip_history"


def start_provenance(backend: ChipBackend) -> Dict[str, Any]:
    """What a new run's provenance records: the chip's boot and history before the run's
    first command, or why there is none (a chip that does not report it)."""
    chip = find_ability(backend, ChipHistory)
    if chip is None:
        info = backend.info()
        return {KEY: {"unavailable": f"chip {info.chip_id} (firmware {info.firmware_version}, "
                                     f"protocol {info.protocol_version}) reports no boot or "
                                     "history"}}
    position = chip.history()
    return {KEY: {"boot_id": position.boot_id, "start": position.to_dict()}}


def resumed_provenance(old: "RunLog", position: HistoryPosition) -> Dict[str, Any]:
    """What a resumed log's provenance records: the run's start (its first segment's) and
    where the chip stood, checked, when this segment began."""
    start = dict((old.provenance.get(KEY) or {}).get("start") or {})
    return {KEY: {"boot_id": position.boot_id, "start": start,
                  "resumed_from": os.path.basename(old.path),
                  "resumed_at": position.to_dict()}}


def expected_history(log: "RunLog") -> HistoryExpectation:
    """Where the chip's history must stand for `log` to continue on it: its recorded start,
    plus every command the log knows reached the chip (committed, or journaled with its
    result, or served by an earlier segment), plus the one sent without a known outcome."""
    from hil.run_log import BATCH_ACKED, NOT_SENT
    rec = log.provenance.get(KEY) or {}
    if "start" not in rec:
        why = rec.get("unavailable") or "it was written before runs recorded it"
        raise ChipHistoryError(
            f"{log.path} does not record where the chip's history stood when the run began "
            f"({why}), so whether the chip is still where the log left it cannot be checked; "
            "refusing to assume it", mismatch=HistoryMismatch.UNREPORTED, command="HISTORY")
    try:
        start = HistoryPosition.from_dict(rec["start"])
    except ValueError as e:
        raise ChipHistoryError(f"{log.path}: provenance {KEY}.start: {e}",
                               mismatch=HistoryMismatch.UNREPORTED, command="HISTORY") from None
    tail = log.journal()
    pb = log.pulse_batches()
    acked = set(tail.acked_rows)
    unacked = [int(b) for b, s in zip(pb["batch_id"], pb["status"])
               if int(s) != BATCH_ACKED and int(b) not in acked]
    programs = int(log.counts["pulse_batches"]) - len(unacked)
    reads = int(log.counts["read_batches"])
    # Commands sent without a known outcome, by wire sequence number: [programs, reads], and
    # their devices.
    open_: Dict[int, List[int]] = {}
    devices = 0
    if unacked:   # committed as sent, never acknowledged: its wire seq is the journal's last
        seq = tail.last.wire_seq if tail.last is not None else -1   # record (or its read half)
        open_.setdefault(seq, [0, 0])[0] += len(unacked)
        count = dict(zip((int(b) for b in pb["batch_id"]), (int(n) for n in pb["count"])))
        devices = sum(count[b] for b in unacked)
    for c in tail.commands:
        if c.done or c.wire_seq == NOT_SENT:   # a served one reached the chip in an earlier
            if c.kind == "program":            # segment
                programs += 1
            else:
                reads += 1
            continue
        open_.setdefault(c.wire_seq, [0, 0])[0 if c.kind == "program" else 1] += 1
        devices = max(devices, int(c.addresses.size))   # a PROGRAM_READ's halves: the same
    if len(open_) > 1 or any(n > 1 for v in open_.values() for n in v):
        raise ChipHistoryError(
            f"{log.path} leaves more than one command with an unknown outcome, so where the "
            "chip's history must stand is unknown", mismatch=HistoryMismatch.UNREPORTED,
            command="HISTORY")
    uncertain = None
    if open_:
        (seq, (p, r)), = open_.items()
        uncertain = UncertainCommand(seq, p, r, parts=batch_parts(devices,
                                                                  logged_batch_limit(log)))
    return HistoryExpectation(
        f"run log {os.path.basename(log.path)}", start, programs, reads, 0, uncertain,
        further="another client has used the chip since, or a later segment of this run "
                "has continued it")


def logged_batch_limit(log: "RunLog") -> Optional[int]:
    """safety.max_batch_devices of the station the logged run was under (None: no station,
    no limit): how its station guard split a command into parts."""
    safety = (log.provenance.get("station") or {}).get("safety") or {}
    limit = safety.get("max_batch_devices")
    return None if limit is None else int(limit)


def batch_parts(devices: int, limit: Optional[int]) -> int:
    """Commands on the wire a command of `devices` devices goes out as under a batch limit
    (drivers.safety.LimitedBackend.parts)."""
    return 1 if limit is None or devices <= limit else -(-int(devices) // int(limit))


def check_log_chip(log: "RunLog", backend: ChipBackend) -> Tuple[HistoryPosition, bool]:
    """Check, before anything is sent, that `backend`'s chip is where `log` left it
    (ChipHistoryError otherwise); returns its position and whether the log's uncertain
    command had been executed."""
    return check_chip(backend, expected_history(log))


__all__ = ["KEY", "batch_parts", "check_log_chip", "expected_history", "logged_batch_limit",
           "resumed_provenance", "start_provenance"]
