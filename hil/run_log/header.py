"""What a run log holds before its run begins: the root attributes, the config and the
provenance known so far, in a small header file that takes the log's path at once (so a
bad path fails before the chip is touched, and a run that dies before it begins leaves a
log that says what it was); and the text documents (JSON, YAML) every part of the log is
written with.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from hil.run_log.h5file import create_file
from hil.run_log.schema import FORMAT, SCHEMA_VERSION, RunLogError

#: Suffix of the file a writer builds before renaming it into place (never left behind by
#: a writer that ends normally; a killed one may leave it, and nothing reads it).
PART_SUFFIX = ".part"


def create_log(path: str, run_name: Optional[str], config_text: str) -> Tuple[Any, Any]:
    """A new HDF5 file with the root attributes and the config, and its /meta group:
    everything a log holds before its run begins."""
    f = create_file(path)
    try:
        f.attrs["format"] = FORMAT
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds")
        try:
            from hil import __version__ as hil_version
        except ImportError:  # pragma: no cover
            hil_version = "unknown"
        f.attrs["writer"] = f"pcm-hil {hil_version}"
        f.attrs["run_name"] = str(run_name) if run_name is not None else ""
        meta = f.create_group("meta")
        write_text(meta, "config_yaml", config_text)
    except BaseException:
        f.close()
        raise
    return f, meta


def write_header_file(path: str, run_name: Optional[str], config_text: str,
                      provenance: Mapping[str, Any], final_status: Optional[str] = None,
                      final_reason: Optional[str] = None) -> None:
    """The log before its run begins: a small, closed HDF5 file (root attributes, config,
    the provenance known so far, and the final status of a run that ended before it began),
    written under a temporary name and renamed into place, so the path holds either
    nothing or a whole file that opens, however the writer dies."""
    tmp = path + PART_SUFFIX
    try:
        f, meta = create_log(tmp, run_name, config_text)
        try:
            write_text(meta, "provenance_json", to_json(provenance))
            if final_status is not None:
                f.attrs["final_status"] = str(final_status)
                f.attrs["final_reason"] = str(final_reason or "")
        finally:
            f.close()
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise RunLogError(f"cannot write the run log: {e}", path=path) from None
    except BaseException:
        remove_quietly(tmp)
        raise


def write_text(group: Any, name: str, text: str) -> None:
    """A UTF-8 string dataset (replacing one of that name)."""
    import h5py
    if name in group:
        del group[name]
    group.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))


def to_json(obj: Any) -> str:
    """JSON of a document the log holds; numpy scalars and arrays as plain numbers."""
    return json.dumps(obj, default=_json_default, sort_keys=False)


def yaml_text(d: Mapping[str, Any]) -> str:
    """A config as the YAML the log stores (through JSON, so numpy values are plain)."""
    import yaml
    return yaml.safe_dump(json.loads(to_json(d)), sort_keys=False)


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


__all__ = ["PART_SUFFIX", "create_log", "remove_quietly", "to_json", "write_header_file",
           "write_text", "yaml_text"]
