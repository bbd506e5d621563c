"""The results of a sweep as tables: one row per point with every figure of its run summary,
one row per point and epoch, and one row per setting with the mean and spread over seeds.

The run summary is flattened generically, so a figure added to the summary later (a new
accuracy, pulses split by kind, an energy estimate) becomes a column without a change here:

- nested mappings become dotted keys (`io.largest_batch`, `energy.per_image_nj`);
- a list of numbers becomes its `.first`, `.last`, `.min`, `.max` and `.mean`;
- a list of records (`per_epoch`) becomes those five statistics of each numeric field
  (`per_epoch.set_pulses.max`) and the last value of any other field; the records themselves
  go whole into a long table of their own (`per_epoch.csv`: one row per point and epoch);
- any other list is kept as JSON text.

CSV is always written (floats in full precision: a value read back equals the summary's);
Parquet too when pyarrow is installed.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Sequence

from hil.sweep.points import Point, swept_keys
from hil.sweep.store import PointState, SweepStore

STATS = ("first", "last", "min", "max", "mean")
#: Fields of a record that index it rather than measure anything.
_INDEX_FIELDS = ("epoch",)
#: Columns every row of results.csv starts with.
META = ("point", "setting", "label", "status", "error", "sweep.attempts", "sweep.seconds",
        "sweep.run_seconds")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stats(prefix: str, values: Sequence[Any]) -> Dict[str, Any]:
    nums = [v for v in values if v is not None]
    return {f"{prefix}.first": nums[0], f"{prefix}.last": nums[-1],
            f"{prefix}.min": min(nums), f"{prefix}.max": max(nums),
            f"{prefix}.mean": float(sum(nums)) / len(nums)}


def flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """A summary as one flat mapping of scalar values (see the module docstring)."""
    out: Dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        if obj and all(isinstance(x, Mapping) for x in obj):
            records = [flatten(x) for x in obj]
            keys: Dict[str, None] = {}
            for r in records:
                keys.update(dict.fromkeys(r))
            for k in keys:
                if k in _INDEX_FIELDS:
                    continue
                values = [r.get(k) for r in records]
                if all(v is None for v in values):
                    continue                      # a figure these records do not have
                if all(v is None or is_number(v) for v in values):
                    out.update(_stats(f"{prefix}.{k}", values))
                else:
                    out[f"{prefix}.{k}.last"] = values[-1]
        elif obj and all(is_number(x) for x in obj):
            out.update(_stats(prefix, obj))
        else:
            out[prefix] = json.dumps(list(obj))
    else:
        out[prefix] = obj
    return out


def _cell(v: Any) -> Any:
    """A config value as a table cell (lists and mappings as JSON)."""
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else v


def point_rows(store: SweepStore, points: Sequence[Point]) -> List[Dict[str, Any]]:
    """One row per point of the sweep, finished or not (then without summary figures)."""
    keys = swept_keys(points)
    rows = []
    for p in points:
        state = store.state(p.id)
        status = store.status(p.id)
        last = status.attempts[-1] if status.attempts else None
        row: Dict[str, Any] = {
            "point": p.id, "setting": p.setting, "label": p.label, "status": state.value,
            "error": status.error if state is PointState.FAILED else None,
            "sweep.attempts": len(status.attempts),
            "sweep.seconds": last.seconds if last else None,
            "sweep.run_seconds": last.run_seconds if last else None}
        for k in keys:
            row[f"set.{k}"] = _cell(p.overrides.get(k))
        row["seed"] = p.seed
        summary = store.summary(p.id) if state is PointState.FINISHED else None
        if summary is not None:
            for k, v in flatten(summary).items():
                row.setdefault(k, v)
        rows.append(row)
    return rows


def record_rows(store: SweepStore, points: Sequence[Point]) -> Dict[str, List[Dict[str, Any]]]:
    """For every list of records in the summaries (per_epoch): one row per point and record."""
    keys = swept_keys(points)
    tables: Dict[str, List[Dict[str, Any]]] = {}
    for p in points:
        summary = store.summary(p.id)
        if summary is None:
            continue
        for name, value in summary.items():
            if not (isinstance(value, list) and value
                    and all(isinstance(x, Mapping) for x in value)):
                continue
            for i, record in enumerate(value):
                row: Dict[str, Any] = {"point": p.id, "setting": p.setting, "label": p.label}
                row.update({f"set.{k}": _cell(p.overrides.get(k)) for k in keys})
                row.update({"seed": p.seed, "index": i})
                row.update(flatten(record))
                tables.setdefault(name, []).append(row)
    return tables


def setting_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Finished points grouped by setting: n, seeds, and mean/std of every numeric column
    (std over seeds with n − 1; empty for one seed)."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == PointState.FINISHED.value:
            groups.setdefault(r["setting"], []).append(r)
    out = []
    for setting, members in groups.items():
        first = members[0]
        row: Dict[str, Any] = {"setting": setting, "label": first["label"], "n": len(members),
                               "seeds": json.dumps([m["seed"] for m in members])}
        row.update({k: v for k, v in first.items() if k.startswith("set.")})
        columns: Dict[str, None] = {}
        for m in members:
            columns.update(dict.fromkeys(m))
        for k in columns:
            if k in META or k.startswith("set.") or k == "seed":
                continue
            values = [m.get(k) for m in members]
            if not all(is_number(v) for v in values):
                continue
            mean = float(sum(values)) / len(values)
            std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                   if len(values) > 1 else None)
            row[f"{k}.mean"], row[f"{k}.std"] = mean, std
        out.append(row)
    return out


def columns(rows: Iterable[Mapping[str, Any]]) -> List[str]:
    seen: Dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                        for k, v in r.items()})
    os.replace(tmp, path)


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def write_parquet(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One typed column per key: integers, floats (a column mixing both), booleans, or text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {}
    for k in columns(rows):
        values = [r.get(k) for r in rows]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, bool) for v in present):
            data[k] = pa.array(values, pa.bool_())
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            data[k] = pa.array(values, pa.int64())
        elif present and all(is_number(v) for v in present):
            data[k] = pa.array([None if v is None else float(v) for v in values], pa.float64())
        else:
            data[k] = pa.array([None if v is None else str(v) for v in values], pa.string())
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(pa.table(data), tmp)
    os.replace(tmp, path)


def settings_text(settings: Sequence[Mapping[str, Any]], accuracy: str, pulses: str) -> str:
    """A Markdown table of the settings: accuracy and pulses, mean ± std over seeds."""
    def pm(row: Mapping[str, Any], key: str, scale: float, fmt: str) -> str:
        mean, std = row.get(f"{key}.mean"), row.get(f"{key}.std")
        if mean is None:
            return "–"
        text = format(mean * scale, fmt)
        return text if std is None else f"{text} ± {format(std * scale, fmt)}"

    lines = [f"| setting | seeds | {accuracy} (%) | {pulses} |", "|---|---|---|---|"]
    for r in settings:
        lines.append(f"| {r['label']} | {r['n']} | {pm(r, accuracy, 100, '.2f')} | "
                     f"{pm(r, pulses, 1, ',.0f')} |")
    return "\n".join(lines)


__all__ = ["STATS", "columns", "flatten", "is_number", "parquet_available", "point_rows", "record_rows",
           "setting_rows", "settings_text", "write_csv", "write_parquet"]
