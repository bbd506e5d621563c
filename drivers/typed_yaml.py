"""Strict YAML → dataclass loading with errors that name the bad key.

Shared by experiment configs, device-model files and station files: an unknown key, a missing
required key or a value of the wrong type is reported as `section.key: what is wrong`, never as
a traceback from deep inside the program.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import os
import types
import typing
from typing import Any, Mapping, Optional, Type, TypeVar, Union

import yaml

from drivers.errors import ConfigError

T = TypeVar("T")


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file, turning every way a file can be unreadable (missing, a folder,
    not readable, not UTF-8, not YAML) into one ConfigError naming the file."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a YAML file", source=str(path)) from None
    except PermissionError:
        raise ConfigError("permission denied (the file cannot be read)",
                          source=str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start} (save the file as UTF-8)", source=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"malformed YAML{where}: {getattr(e, 'problem', e)}",
                          source=str(path)) from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, source: Optional[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return load_dataclass(tp, value, key, source)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", key=key, source=source)
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {value!r}", key=key, source=source)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in tp)
            raise ConfigError(f"{value!r} is not one of: {choices}", key=key,
                              source=source) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", key=key, source=source)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", key=key, source=source)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", key=key, source=source)
        if not math.isfinite(value):
            # YAML's .inf and .nan: no setting of a chip, a bench or a model is infinite.
            raise ConfigError(f"expected a finite number, got {value!r}", key=key,
                              source=source)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", key=key, source=source)
        return value
    return value


def load_dataclass(cls: Type[T], data: Any, prefix: str = "",
                   source: Optional[str] = None) -> T:
    """Build dataclass `cls` from a mapping, strictly: unknown or mistyped keys are errors.

    Fields missing from `data` keep their defaults; a field without a default is required.
    The dataclass's own __post_init__ may raise ValueError, which is reported under `prefix`.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of keys, got {data!r}", key=prefix or None,
                          source=source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"unknown key (expected one of: {', '.join(fields)})",
                          key=f"{prefix}.{k}" if prefix else str(k), source=source)
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("required key is missing", key=key, source=source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if e.source is None and source is not None:
            raise ConfigError(e.detail, key=e.key, source=source) from None
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e), key=prefix or None, source=source) from None


def dataclass_to_dict(obj: Any) -> Any:
    """Inverse of load_dataclass, for writing configs back out (enums as their values)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dataclass_to_dict(getattr(obj, f.name))
                for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [dataclass_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dataclass_to_dict(v) for k, v in obj.items()}
    return obj
