"""Open a chip backend from a URL, as pyserial opens a port: experiment code never names a
concrete backend.

  sim://                         in-process simulated chip (query: model, seed, arrays, rows,
                                 cols, state)
  socket://HOST:PORT             FPGA board (or the firmware emulator) over TCP
  rfc2217://..., loop://         other pyserial URL handlers
  /dev/ttyUSB0, /dev/pts/N, COM3 FPGA board on a serial port or pty
  replay://RUN.h5                serve a logged run back (offline re-execution)
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import TYPE_CHECKING, Callable, Dict, Optional
from urllib.parse import parse_qs, urlparse

from drivers.backend import ChipBackend
from drivers.errors import ConfigError

if TYPE_CHECKING:
    from sim_backend.sim_chip import SimChipSpec


def _open_sim(url: str, spec: Optional["SimChipSpec"]) -> ChipBackend:
    """`spec` (default SimChipSpec()), with the fields the URL's query names replaced."""
    from sim_backend.sim_chip import SimChipSpec

    q = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
    fields = [f.name for f in dataclasses.fields(SimChipSpec)]
    known = {*fields, "state"}
    for k in q:
        if k not in known:
            raise ConfigError(f"unknown sim:// option {k!r} (known: {', '.join(sorted(known))})",
                              key="backend")
    try:
        given = {k: q[k] if k == "model" else int(q[k]) for k in fields if k in q}
    except ValueError as e:
        raise ConfigError(f"bad integer in {url!r}: {e}", key="backend") from None
    chip = dataclasses.replace(spec or SimChipSpec(), **given).build()
    state = q.get("state")
    if state and os.path.exists(state):
        chip.load_state(state)
    return chip


def _lazy(target: str) -> Callable[[str, Optional["SimChipSpec"]], ChipBackend]:
    """Opener implemented in another module, imported only when its scheme is used."""

    def opener(url: str, spec: Optional["SimChipSpec"]) -> ChipBackend:
        mod_name, func = target.split(":")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise ConfigError(f"backend {url!r} needs {mod_name}, which is unavailable: {e}",
                              key="backend") from None
        return getattr(module, func)(url)

    return opener


_SCHEMES: Dict[str, Callable[[str, Optional["SimChipSpec"]], ChipBackend]] = {
    "sim": _open_sim,
    "replay": _lazy("hil.replay.backend:open_replay"),
    "serial": _lazy("drivers.fpga:open_fpga"),
}


def open_backend(url: str, sim: Optional["SimChipSpec"] = None) -> ChipBackend:
    """Open the backend a URL names; raises ConfigError for an unknown scheme.

    `sim` is the chip a `sim://` URL opens (ExperimentConfig.sim_chip_spec(); default
    SimChipSpec()), each field overridable in the URL's query."""
    scheme = urlparse(url).scheme if "://" in url else ""
    if scheme in _SCHEMES:
        return _SCHEMES[scheme](url, sim)
    if scheme in ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep") or not scheme:
        # pyserial URL or a plain device / pty path: the FPGA driver.
        return _SCHEMES["serial"](url, sim)
    raise ConfigError(f"unknown backend URL scheme {scheme!r} in {url!r}; use sim://, "
                      "socket://HOST:PORT, a serial device path or replay://RUN.h5",
                      key="backend")
