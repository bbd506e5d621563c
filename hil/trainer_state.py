"""The trainer's full state as one named, versioned record: what a run restarted from a
snapshot needs to carry on exactly as the uninterrupted run did.

Why a record of its own: `pcm-hil replay --verify --workers N` restarts each segment of a
log from the state in the snapshot it begins at, so a snapshot must hold *everything* a
trainer keeps between steps - χ, the conductance cache, pulses since RESET, every counter,
the data position, the fp32 baseline's weights. A trainer

- declares the layout of its state once, at the start of a run (`StateLayout`: its kind, a
  version, and every field's name, dtype and shape), because the run log must create a
  dataset per field then (SWMR forbids creating any later);
- builds the record in one place (`capture_state`) and restores it in one place
  (`restore_state`), out of parts that the components it is made of provide (the
  mixed-precision core, the chip I/O counters, its own epoch loop).

A field added to a trainer but not to its record cannot go unnoticed: `object_differences`
compares a trainer restored from a snapshot with one that re-ran to the same step attribute
by attribute, down through every object it holds, and the tests require no difference
(tests/test_trainer_state.py).

Every trainer on the mixed-precision core has the cached conductance of every mapped device
(`g_us`, layout order) and χ per weight block, which the run log stores where every schema
has stored them; the record's other fields are the trainer's own: `kind` names the trainer
("mlp"; a torch trainer names its own), `version` is the revision of its layout.
"""
from __future__ import annotations

import json
import re
import struct
import types
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from drivers.errors import HilError

#: Field names: dotted words (`io.read_commands`, `baseline.layer0`); never "/", which HDF5
#: reads as a path.
_NAME = re.compile(r"[A-Za-z0-9_\-\[\]]+(\.[A-Za-z0-9_\-\[\]]+)*")


class StateMismatch(HilError):
    """A trainer state that does not fit the trainer asked to restore it."""


@dataclass(frozen=True)
class StateField:
    """One field of a trainer's state: a numpy array of a fixed dtype and shape (shape ()
    for a scalar). `wall_clock` fields (time spent so far) are restored but never compared:
    no re-run reproduces them."""

    name: str
    dtype: str
    shape: Tuple[int, ...] = ()
    wall_clock: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"state field name {self.name!r}: dotted words of letters, "
                             "digits, _ - [ ] (no '/')")
        object.__setattr__(self, "dtype", np.dtype(self.dtype).str)
        shape = tuple(int(n) for n in self.shape)
        if any(n < 0 for n in shape):
            raise ValueError(f"state field {self.name!r}: negative dimension in {shape}")
        object.__setattr__(self, "shape", shape)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "wall_clock": self.wall_clock}


@dataclass(frozen=True)
class StateLayout:
    """What a trainer's state record holds: `kind` (which trainer), `version` (the revision
    of its fields) and the fields, in order."""

    kind: str
    version: int
    fields: Tuple[StateField, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"state field {dup[0]!r} is declared twice")

    @cached_property
    def by_name(self) -> Dict[str, StateField]:
        return {f.name: f for f in self.fields}

    @property
    def names(self) -> List[str]:
        return [f.name for f in self.fields]

    def describe(self) -> str:
        return f"{self.kind!r} version {self.version} ({len(self.fields)} fields)"

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "version": self.version,
                           "fields": [f.to_dict() for f in self.fields]})

    @classmethod
    def from_json(cls, text: str) -> "StateLayout":
        d = json.loads(text)
        return cls(str(d["kind"]), int(d["version"]),
                   tuple(StateField(f["name"], f["dtype"], tuple(f["shape"]),
                                    bool(f.get("wall_clock", False))) for f in d["fields"]))

    def difference(self, other: "StateLayout") -> Optional[str]:
        """None when both layouts are the same, else the first thing that differs."""
        if (self.kind, self.version) != (other.kind, other.version):
            return f"{self.describe()} against {other.describe()}"
        a, b = self.by_name, other.by_name
        for name in self.names + [n for n in other.names if n not in a]:
            if name not in b:
                return f"field {name!r} is only in the first"
            if name not in a:
                return f"field {name!r} is only in the second"
            if a[name] != b[name]:
                return f"field {name!r}: {a[name].to_dict()} against {b[name].to_dict()}"
        return None

    def values(self, given: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        """`given` as the layout's arrays (each a copy, in the field's dtype and shape);
        ValueError naming the first field that is missing, extra or does not fit."""
        extra = sorted(set(given) - set(self.by_name))
        if extra:
            raise ValueError(f"state value {extra[0]!r} is not a field of {self.describe()}")
        out: Dict[str, np.ndarray] = {}
        for f in self.fields:
            if f.name not in given:
                raise ValueError(f"state field {f.name!r} has no value")
            v = np.asarray(given[f.name])
            if v.shape != f.shape:
                raise ValueError(f"state field {f.name!r}: shape {v.shape}, declared "
                                 f"{f.shape}")
            a = v.astype(f.dtype)
            if not np.array_equal(a, v, equal_nan=v.dtype.kind == "f"):
                raise ValueError(f"state field {f.name!r}: values do not fit {f.dtype}")
            out[f.name] = a
        return out


@dataclass(frozen=True, eq=False)
class TrainerState:
    """A trainer's full state after step `step`: the cached conductances (layout order), χ
    per block, and a value for every field of `layout`."""

    layout: StateLayout
    step: int
    g_us: np.ndarray
    chi: Mapping[str, np.ndarray]
    values: Mapping[str, np.ndarray]

    @classmethod
    def build(cls, layout: StateLayout, step: int, g_us: np.ndarray,
              chi: Mapping[str, np.ndarray], values: Mapping[str, Any]) -> "TrainerState":
        """Checked and copied: the record never shares an array with the trainer."""
        return cls(layout, int(step), np.array(g_us, dtype=np.float32).ravel(),
                   {k: np.array(v, dtype=np.float32) for k, v in chi.items()},
                   layout.values(values))

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.values[name]
        except KeyError:
            raise StateMismatch(f"the trainer state {self.layout.describe()} has no field "
                                f"{name!r}") from None

    def int(self, name: str) -> int:
        return int(self[name])

    def float(self, name: str) -> float:
        return float(self[name])

    def differences(self, other: "TrainerState", limit: int = 5) -> List[str]:
        """What differs from `other`, bit for bit (wall-clock fields excepted): at most
        `limit` lines, the first difference first."""
        out: List[str] = []
        layout = self.layout.difference(other.layout)
        if layout:
            return [f"layout: {layout}"]
        if self.step != other.step:
            out.append(f"step {self.step} against {other.step}")
        if not _same_bits(self.g_us, other.g_us):
            out.append(f"g_us {_first(self.g_us, other.g_us)}")
        for name in list(self.chi) + [k for k in other.chi if k not in self.chi]:
            a, b = self.chi.get(name), other.chi.get(name)
            if a is None or b is None or not _same_bits(a, b):
                out.append(f"chi[{name!r}] {_first(a, b)}")
        for f in self.layout.fields:
            if not f.wall_clock and not _same_bits(self.values[f.name], other.values[f.name]):
                out.append(f"{f.name} {_first(self.values[f.name], other.values[f.name])}")
        return out[:limit]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _first(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> str:
    """The first element where two arrays differ bit for bit, in words."""
    if a is None or b is None:
        return "is missing from one side"
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{a.dtype}{list(a.shape)} against {b.dtype}{list(b.shape)}"
    fa, fb = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    if not fa.size:
        return "empty"
    bits = np.dtype(f"u{fa.itemsize}") if fa.itemsize in (1, 2, 4, 8) else None
    ne = (np.flatnonzero(fa.view(bits) != fb.view(bits)) if bits is not None else
          [i for i in range(fa.size) if fa[i:i + 1].tobytes() != fb[i:i + 1].tobytes()])
    i = int(ne[0]) if len(ne) else 0
    return f"{f'[{i}] ' if a.ndim else ''}{fa[i].item()!r} against {fb[i].item()!r}"


# --- a restored trainer against a re-run one ---------------------------------------------------
_SKIPPED = (types.FunctionType, types.MethodType, types.BuiltinFunctionType,
            types.ModuleType, type)


def object_differences(a: Any, b: Any, *, outside: Sequence[type] = (), root: str = "trainer",
                       limit: int = 20) -> List[str]:
    """Everything that differs between two objects, followed through their attributes,
    lists, tuples and dicts (cycles included), arrays and floats bit for bit: the check
    that a trainer restored from its state record is the trainer that re-ran to that step.

    Skipped: instances of `outside` (what the trainer talks to rather than holds: the chip
    backend, the recorder), functions and modules, attributes whose names say they hold
    wall time (hil.run_log.is_wall_clock: `train_seconds`, `wall_started`), attributes a
    class names in its `SCRATCH_ATTRIBUTES` (working memory every call overwrites before it
    reads, such as portable_math.RowProduct's buffer), and values a
    `functools.cached_property` computed on one side only (derived from what both have)."""
    from hil.run_log.schema import is_wall_clock
    out: List[str] = []
    seen: set = set()
    outside_t = tuple(outside)

    def walk(x: Any, y: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if outside_t and (isinstance(x, outside_t) or isinstance(y, outside_t)):
            if type(x) is not type(y):
                out.append(f"{path}: {type(x).__name__} against {type(y).__name__}")
            return
        if type(x) is not type(y):
            out.append(f"{path}: {type(x).__name__} against {type(y).__name__}")
            return
        if isinstance(x, np.ndarray):
            if not _same_bits(x, y):
                out.append(f"{path}: {_first(x, y)}")
            return
        if isinstance(x, np.generic):
            if x.tobytes() != y.tobytes():
                out.append(f"{path}: {x!r} against {y!r}")
            return
        if isinstance(x, float):
            if struct.pack("<d", x) != struct.pack("<d", y):
                out.append(f"{path}: {x!r} against {y!r}")
            return
        if x is None or isinstance(x, (bool, int, complex, str, bytes, Enum)):
            if x != y:
                out.append(f"{path}: {x!r} against {y!r}")
            return
        if isinstance(x, _SKIPPED):
            return
        key = (id(x), id(y))
        if key in seen:
            return
        seen.add(key)
        if isinstance(x, (list, tuple)):
            if len(x) != len(y):
                out.append(f"{path}: {len(x)} items against {len(y)}")
                return
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
            return
        if isinstance(x, dict):
            if list(x) != list(y):
                out.append(f"{path}: keys {list(x)} against {list(y)}")
                return
            for k in x:
                walk(x[k], y[k], f"{path}[{k!r}]")
            return
        if isinstance(x, (set, frozenset)):
            if x != y:
                out.append(f"{path}: {sorted(map(repr, x))} against {sorted(map(repr, y))}")
            return
        da, db = _attributes(x), _attributes(y)
        if da is None:
            if x != y:
                out.append(f"{path}: {x!r} against {y!r}")
            return
        scratch = getattr(type(x), "SCRATCH_ATTRIBUTES", ())
        for name in list(da) + [n for n in db if n not in da]:
            if is_wall_clock(name.lstrip("_")) or name in scratch:
                continue
            if name not in da or name not in db:
                if not isinstance(getattr(type(x), name, None), cached_property):
                    out.append(f"{path}.{name}: only on the "
                               f"{'re-run' if name in da else 'restored'} side")
                continue
            walk(da[name], db[name], f"{path}.{name}")

    walk(a, b, root)
    return out


def _attributes(obj: Any) -> Optional[Dict[str, Any]]:
    """An object's attributes (instance dict and slots), or None for an opaque value."""
    d = getattr(obj, "__dict__", None)
    slots: Iterable[str] = ()
    for cls in type(obj).__mro__:
        slots = [*slots, *(s for s in getattr(cls, "__slots__", ()) if s != "__dict__")]
    if d is None and not slots:
        return None
    out = dict(d or {})
    for s in slots:
        if hasattr(obj, s):
            out[s] = getattr(obj, s)
    return out


__all__ = ["StateField", "StateLayout", "StateMismatch", "TrainerState", "object_differences"]
