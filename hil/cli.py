"""The `pcm-hil` command line.

Each sub-command lives in its own module under hil/commands and defines
`register(subparsers)`, which adds its parser and sets `func(args) -> int`. The CLI discovers
them, so adding a command touches no other file.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import threading
from typing import List, Optional

from drivers.errors import HilError
from hil import __version__, commands
from hil.run_control import install_interrupt_handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcm-hil",
        description="Hardware-in-the-loop control for phase-change-memory chip testbeds.")
    parser.add_argument("--version", action="version", version=f"pcm-hil {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug incl. wire traffic)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"hil.commands.{mod.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C (SIGINT) stops every command, also one a script started in the background,
        # where the shell leaves SIGINT ignored and Python would install no handler.
        install_interrupt_handler()
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()   # a closed pipe shows here, not at interpreter exit
        return rc
    except HilError as e:
        print(f"pcm-hil {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # A command without Ctrl-C handling of its own (replay, --verify, fit-model): one
        # line, no traceback; --verify only reads its log.
        print(f"\npcm-hil {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `pcm-hil replay RUN.h5 | head`: the reader has gone; stop quietly. Python would
        # print a second error flushing stdout at exit, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
