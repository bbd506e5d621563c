"""The layering rules of docs/architecture.md, checked on the source: imports only point down.

  firmware_interface   numpy and the standard library only
  drivers              firmware_interface
  sim_backend          drivers (the contract and its types), firmware_interface
  hil                  all of the above; nothing outside the CLI imports hil.commands, and
                       nothing but the benchmarks imports hil.benchmarks
"""
from __future__ import annotations

import ast
import pathlib
from typing import Iterator, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("firmware_interface", "drivers", "sim_backend", "hil")
ALLOWED = {
    "firmware_interface": {"firmware_interface"},
    "drivers": {"drivers", "firmware_interface"},
    "sim_backend": {"sim_backend", "drivers", "firmware_interface"},
    "hil": {"hil", "sim_backend", "drivers", "firmware_interface"},
}


def _modules() -> Iterator[pathlib.Path]:
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def _imports(path: pathlib.Path) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for a in node.names:   # `from hil import commands` names a module too
                yield node.lineno, f"{node.module}.{a.name}"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: pathlib.Path) -> None:
    me = _module_name(path)
    pkg = me.split(".")[0]
    bad = []
    for line, name in _imports(path):
        top = name.split(".")[0]
        if top in PACKAGES and top not in ALLOWED[pkg]:
            bad.append(f"line {line}: {me} imports {name} ({pkg} may import only "
                       f"{sorted(ALLOWED[pkg])})")
        if name.startswith("hil.commands") and not (me.startswith("hil.commands")
                                                   or me == "hil.cli"):
            bad.append(f"line {line}: {me} imports the CLI module {name}")
        if name.startswith("hil.benchmarks") and not me.startswith("hil.benchmarks"):
            bad.append(f"line {line}: {me} imports the benchmarks ({name})")
    assert not bad, "\n".join(bad)
