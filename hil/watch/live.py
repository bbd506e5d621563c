"""`pcm-hil train --watch`: the run's live view, with a Stop button wired to the run.

The view runs as a process of its own (`pcm-hil watch RUN.h5 --stop-channel`), not as a
thread of the trainer: following a log re-opens it at every commit and rebuilds the page's
data, which is Python work that would take the trainer's interpreter lock (and h5py's
global lock) in turn with the training loop. In its own process it costs the trainer
nothing but a core that the trainer does not use.

The two talk over the child's stdin and stdout, one line each way:

- the child prints `url URL` once it listens (the parent prints it for the operator), and
  `stop REASON` when the Stop button is confirmed: the parent calls
  `RunControl.request_stop(REASON)`, exactly what the first Ctrl-C does (the step in flight
  finishes, the chip goes to its safe state, the log is marked aborted, exit status 130);
- the child exits when its stdin closes (when the run ends, or when the trainer dies),
  once the log's final status has reached its pages: up to END_STATUS_WAIT_S for the
  status, then END_PUSH_S for the pages to draw it.

The child has a session of its own, so the operator's Ctrl-C reaches the trainer only.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from typing import IO, Optional

from drivers.errors import ConfigError
from hil.run_control import RunControl

START_TIMEOUT_S = 60.0
#: After the run ends, how long the view waits for the log's final status (a trainer that
#: died leaves none), then how long it keeps serving so that open pages draw it.
END_STATUS_WAIT_S = 10.0
END_PUSH_S = 1.5
STOP_PREFIX = "stop "
URL_PREFIX = "url "


def require_bokeh(key: str = "--watch") -> None:
    if importlib.util.find_spec("bokeh") is None:
        raise ConfigError("the live view needs Bokeh: pip install 'pcm-hil[watch]'", key=key)


class LiveView:
    """A context manager: the live view of `path`, served while the run lasts."""

    def __init__(self, path: str, control: RunControl, *, listen: Optional[str] = None,
                 port: Optional[int] = None, out: IO[str] = sys.stdout) -> None:
        self.path = path
        self.control = control
        self.listen = listen
        self.port = port
        self.out = out
        self.url: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    def command(self) -> list:
        cmd = [sys.executable, "-m", "hil.cli", "watch", self.path, "--stop-channel"]
        if self.listen is not None:
            cmd += ["--listen", self.listen]
        if self.port is not None:
            cmd += ["--port", str(self.port)]
        return cmd

    def __enter__(self) -> "LiveView":
        require_bokeh()
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1,
                                      start_new_session=True, env=dict(os.environ))
        end = time.monotonic() + START_TIMEOUT_S
        while self.url is None:
            line = self._proc.stdout.readline()
            if not line:
                code = self._proc.wait(timeout=10)
                raise ConfigError(f"the live view did not start (exit status {code}; its "
                                  "error is above)", key="--watch")
            if line.startswith(URL_PREFIX):
                self.url = line[len(URL_PREFIX):].strip()
            if time.monotonic() > end:
                self._close()
                raise ConfigError("the live view did not start in time", key="--watch")
        print(f"live view: {self.url}" + ("  (the token is needed: keep the URL whole)"
                                          if "token=" in self.url else ""),
              file=self.out, flush=True)
        self._reader = threading.Thread(target=self._read_requests,
                                        name="pcm-hil-live-view", daemon=True)
        self._reader.start()
        return self

    def _read_requests(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(STOP_PREFIX) and not self.control.stop_requested:
                reason = line[len(STOP_PREFIX):].strip() or "stopped from the live view"
                self.control.request_stop(reason)
                print("\nstop requested from the live view: stopping after the current step",
                      file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()          # the child's cue to stop serving
        except OSError:
            pass
        try:
            proc.wait(timeout=END_STATUS_WAIT_S + END_PUSH_S + 5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)


__all__ = ["LiveView", "require_bokeh"]
