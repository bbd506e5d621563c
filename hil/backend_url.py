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

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional
from urllib.parse import parse_qs, urlparse

from drivers.backend import ChipBackend
from drivers.errors import ConfigError
from drivers.geometry import Geometry


@dataclass(frozen=True)
class SimDefaults:
    """What a bare `sim://` means, from the experiment config."""

    model: str = "jap"
    seed: int = 0
    arrays: int = 1
    rows: int = 512
    cols: int = 2048
    state: Optional[str] = None


def _open_sim(url: str, defaults: SimDefaults) -> ChipBackend:
    from sim_backend.pcm_model import PcmModel
    from sim_backend.sim_chip import SimulatedChip

    q = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
    known = {"model", "seed", "arrays", "rows", "cols", "state"}
    for k in q:
        if k not in known:
            raise ConfigError(f"unknown sim:// option {k!r} (known: {', '.join(sorted(known))})",
                              key="backend")
    try:
        ints = {k: int(q.get(k, getattr(defaults, k))) for k in ("seed", "arrays", "rows",
                                                                  "cols")}
    except ValueError as e:
        raise ConfigError(f"bad integer in {url!r}: {e}", key="backend") from None
    chip = SimulatedChip(PcmModel.load(q.get("model", defaults.model)),
                         Geometry(ints["arrays"], ints["rows"], ints["cols"]),
                         seed=ints["seed"])
    state = q.get("state", defaults.state)
    if state and os.path.exists(state):
        chip.load_state(state)
    return chip


def _lazy(target: str) -> Callable[[str, SimDefaults], ChipBackend]:
    """Opener implemented in another module, imported only when its scheme is used."""

    def opener(url: str, defaults: SimDefaults) -> ChipBackend:
        mod_name, func = target.split(":")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise ConfigError(f"backend {url!r} needs {mod_name}, which is unavailable: {e}",
                              key="backend") from None
        return getattr(module, func)(url)

    return opener


_SCHEMES: Dict[str, Callable[[str, SimDefaults], ChipBackend]] = {
    "sim": _open_sim,
    "replay": _lazy("hil.replay_backend:open_replay"),
    "serial": _lazy("drivers.fpga:open_fpga"),
}


def open_backend(url: str, defaults: SimDefaults | None = None) -> ChipBackend:
    """Open the backend a URL names; raises ConfigError for an unknown scheme."""
    defaults = defaults or SimDefaults()
    scheme = urlparse(url).scheme if "://" in url else ""
    if scheme in _SCHEMES:
        return _SCHEMES[scheme](url, defaults)
    if scheme in ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep") or not scheme:
        # pyserial URL or a plain device / pty path: the FPGA driver.
        return _SCHEMES["serial"](url, defaults)
    raise ConfigError(f"unknown backend URL scheme {scheme!r} in {url!r}; use sim://, "
                      "socket://HOST:PORT, a serial device path or replay://RUN.h5",
                      key="backend")
