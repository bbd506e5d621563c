"""`pcm-hil watch`: the live view of a run log in the browser, running or finished."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Optional

from drivers.errors import ConfigError
from hil.commands.arguments import non_negative_int

DEFAULT_PORT = 5006   # hil.watch.server.DEFAULT_PORT (not imported: Bokeh loads lazily)

HELP = """\
Serve a page that shows a run log (the HDF5 file `pcm-hil train --run RUN.h5` writes) and
follows it while the run writes it: status (running, paused by a monitor, aborted, failed
with the reason, completed; resumed segments), step, epoch, examples/s and ETA; loss and
accuracies per epoch and over steps; SET pulses, RESETs and refreshes per window of steps;
G+ and G- histograms per layer; a map of the chip array (conductance per region, the mapped
blocks of each layer, known-bad devices); monitor readings against their bands; events.

The page updates within about a second of each commit of the log (every
log.flush_every_steps steps, every snapshot and epoch). The log is only read, never
written. `pcm-hil train --watch` serves the same page for the run it starts, with a Stop
button that does what Ctrl-C does.

Access: by default the server listens on 127.0.0.1 and needs no token. --listen ADDRESS
serves on another address (0.0.0.0: every interface of this machine); then every request
needs the token printed at start: open the URL as printed (.../?token=...); the browser
keeps it in a cookie. The page needs no internet (BokehJS is served by this server).

examples:
  pcm-hil watch runs/quick.h5                       # open http://127.0.0.1:5006/
  pcm-hil watch runs/quick.h5 --port 8080
  pcm-hil watch runs/quick.h5 --listen 0.0.0.0      # for the bench's other machines
  pcm-hil train --config configs/quick.yaml --run runs/q.h5 --watch

Needs the watch extra: pip install 'pcm-hil[watch]'. Ctrl-C or SIGTERM stops the server.
exit status: 0 after Ctrl-C, 1 error, 2 bad command line.
"""


def add_server_arguments(p: argparse.ArgumentParser, for_train: bool = False) -> None:
    """--listen and --port (and --watch for `pcm-hil train`)."""
    if for_train:
        p.add_argument("--watch", action="store_true",
                       help="serve the live view of this run's log in the browser (see "
                            "`pcm-hil watch --help`), with a Stop button that stops the run "
                            "as Ctrl-C does")
    with_watch = " (with --watch)" if for_train else ""
    p.add_argument("--listen", metavar="ADDRESS", default=None,
                   help="serve the live view on this address instead of 127.0.0.1; every "
                        f"request then needs the token printed at start{with_watch}")
    p.add_argument("--port", type=non_negative_int, metavar="N", default=None,
                   help=f"port of the live view (default {DEFAULT_PORT}, or the next free "
                        f"one; 0: any free port){with_watch}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="show a run log in the browser, live or afterwards",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN.h5", help="run log written by `pcm-hil train --run`")
    add_server_arguments(p)
    # `pcm-hil train --watch` runs this command as a child: it reads `url` and `stop`
    # lines from its stdout and closes its stdin when the run ends (hil/watch/live.py).
    p.add_argument("--stop-channel", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def check_server_arguments(args: argparse.Namespace) -> None:
    """`pcm-hil train`: refuse a live-view option that cannot apply, before anything runs."""
    if not args.watch:
        if args.listen is not None or args.port is not None:
            raise ConfigError("needs --watch", key="--listen" if args.listen else "--port")
        return
    for opt, given in (("--no-log", args.no_log), ("--dry-run", args.dry_run)):
        if given:
            raise ConfigError(f"cannot be combined with {opt} (the page shows the run log)",
                              key="--watch")
    from hil.watch.live import require_bokeh
    require_bokeh()


def live_view(args: argparse.Namespace, path: Optional[str], control):
    """The context manager `pcm-hil train --watch` enters (a no-op without --watch)."""
    import contextlib
    if not args.watch or not path:
        return contextlib.nullcontext()
    from hil.watch.live import LiveView
    return LiveView(path, control, listen=args.listen, port=args.port)


def run(args: argparse.Namespace) -> int:
    from hil.watch.live import require_bokeh
    require_bokeh("watch")
    from hil.watch.follower import LogFollower
    from hil.watch.server import WatchServer
    channel = args.stop_channel
    say = sys.stderr if channel else sys.stdout
    follower = LogFollower(args.run)
    if not channel:
        print(f"loading {args.run} ...", file=say, flush=True)
    follower.refresh()
    if follower.model is None and not channel:
        # a run that is starting is waited for by `train --watch`; here it is an error
        from hil.run_log import RunLog
        RunLog(args.run).close()   # raises the RunLogError that says what is wrong
    follower.start()

    def on_stop(reason: str) -> None:
        print(f"stop {reason}", flush=True)

    server = WatchServer(follower, listen=args.listen,
                         port=DEFAULT_PORT if args.port is None else args.port,
                         on_stop=on_stop if channel else None).start()
    if channel:
        print(f"url {server.url}", flush=True)
        _stop_on_eof(server, follower)
    else:
        print(f"live view of {args.run}: {server.url}\n"
              + ("every request needs the token: open the URL as printed\n"
                 if args.listen is not None else "")
              + "Ctrl-C or SIGTERM stops the server (the log is only read)",
              file=say, flush=True)
    _stop_on_signals()
    try:
        server.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        follower.stop()
        server.stop()
    return 0


def _stop_on_signals() -> None:
    """SIGTERM ends the server as Ctrl-C does (hil.cli makes sure Ctrl-C does)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):  # noqa: ARG001 - signal API
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _stop_on_eof(server, follower) -> None:
    """The parent run closes our stdin when it ends (or dies): stop serving then, once the
    pages have been sent how the run ended (completed, aborted, failed): an operator's page
    must not stay at "running" when the run is over."""
    from tornado.ioloop import IOLoop

    from hil.run_state import FINAL_STATES
    from hil.watch.live import END_PUSH_S, END_STATUS_WAIT_S
    loop = IOLoop.current()

    def wait() -> None:
        for _ in sys.stdin:
            pass
        follower.wait_for(lambda model: model is not None
                          and model.header.status in FINAL_STATES, END_STATUS_WAIT_S)
        time.sleep(END_PUSH_S)
        loop.add_callback(loop.stop)
    threading.Thread(target=wait, name="pcm-hil-watch-stdin", daemon=True).start()
