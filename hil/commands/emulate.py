"""`pcm-hil emulate`: serve a simulated chip over the real wire protocol (TCP or a pty).

The production FPGA driver connects to it exactly as to a board, so CI exercises the whole
link: framing, retries, idempotency under injected faults, reconnects.
"""
from __future__ import annotations

import argparse
import signal
import sys

from hil.commands.arguments import non_negative_float, non_negative_int, positive_int

EPILOG = """\
The first line on stdout is the URL to connect to, e.g. socket://127.0.0.1:40123 or
/dev/pts/7; pass it as the backend URL of any other command. It serves one client at a
time: over TCP a second connection is refused (NACK IN_USE) while one holds the chip. Stop
with Ctrl-C or SIGTERM: both write --stats-json and --state before exiting.

examples:
  pcm-hil emulate --listen 127.0.0.1:7700 --model jap --seed 1
  pcm-hil emulate --listen 127.0.0.1:0 --rows 64 --cols 64 --drop 0.05 --corrupt 0.05 \\
      --fault-seed 3 --stats-json emu-stats.json
  pcm-hil emulate --pty --baud 921600 --latency-ms 1 --state chip.npz
  pcm-hil emulate --listen 127.0.0.1:7700 --state chip.npz --crash-at 200   # then restart
"""


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability must be in [0, 1], got {p}")
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "emulate", help="serve a simulated chip over the FPGA wire protocol (TCP or pty)",
        description="Firmware emulator: a simulated PCM chip behind the binary wire "
                    "protocol, with a modelled link and seeded fault injection.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", metavar="HOST:PORT",
                       help="serve over TCP (connect with socket://HOST:PORT); port 0 picks a "
                            "free port. A bare PORT binds 127.0.0.1")
    where.add_argument("--pty", action="store_true",
                       help="serve over a new pseudo-terminal; its path is printed")
    chip = p.add_argument_group("simulated chip")
    chip.add_argument("--model", default="jap",
                      help="device model: a preset name (jap, ideal, pcm_like) or a model "
                           "YAML file (default: jap)")
    chip.add_argument("--seed", type=non_negative_int, default=0,
                      help="chip seed: same seed, same chip, bit for bit (default: 0)")
    chip.add_argument("--arrays", type=positive_int, default=1, help="arrays (default: 1)")
    chip.add_argument("--rows", type=positive_int, default=512,
                      help="rows (word lines) per array (default: 512)")
    chip.add_argument("--cols", type=positive_int, default=2048,
                      help="columns (bit lines) per array (default: 2048)")
    chip.add_argument("--state", metavar="FILE",
                      help="keep the chip in FILE (a snapshot, loaded if present) plus "
                           "FILE.journal (every state-changing command, written before its "
                           "reply is sent, and the boot and its history), so an emulator "
                           "restarted after a crash, even a SIGKILL, keeps its chip, is the "
                           "same boot, and neither re-applies a retried batch nor loses one. "
                           "Without it every start is a new boot: a power-cycled chip")
    link = p.add_argument_group("link model")
    link.add_argument("--baud", type=non_negative_int, default=0,
                      help="model a serial link of N baud (10 bits per byte); 0 = unlimited")
    link.add_argument("--latency-ms", type=non_negative_float, default=0.0,
                      help="fixed delay added to every reply, ms")
    faults = p.add_argument_group("fault injection (seeded, repeatable)")
    faults.add_argument("--corrupt", type=_probability, default=0.0, metavar="P",
                        help="probability per request that one byte of the request or of "
                             "its reply is flipped")
    faults.add_argument("--drop", type=_probability, default=0.0, metavar="P",
                        help="probability per request that the request or its reply is lost")
    faults.add_argument("--delay-ms", type=non_negative_float, default=0.0, metavar="X",
                        help="delay every reply by a uniform random 0..X ms")
    faults.add_argument("--disconnect-every", type=non_negative_int, default=0,
                        metavar="N",
                        help="drop the link instead of replying to every N-th executed "
                             "command (TCP: close the connection; pty: a short outage)")
    faults.add_argument("--fault-seed", type=non_negative_int, default=0,
                        help="seed of the fault RNG (default: 0)")
    faults.add_argument("--crash-at", type=positive_int, default=None, metavar="N",
                        help="kill this emulator (SIGKILL, no cleanup) right after executing "
                             "the N-th request frame (HELLO included), before its reply is "
                             "sent: for restart tests with --state")
    p.add_argument("--busy-poll-us", type=non_negative_float, default=1000.0, metavar="US",
                   help="after each request, poll for the next one without sleeping for this "
                        "many microseconds (default: 1000; 0: always sleep until data "
                        "arrives). A sleeping process wakes slowly: without this, training "
                        "through the emulator runs about 1.5x slower. The cost is one busy "
                        "core while a client keeps sending")
    p.add_argument("--stats-json", metavar="FILE",
                   help="write counters (faults by kind, commands executed, repeats answered "
                        "from memory, pulses by kind) as JSON at exit and on SIGTERM")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError
    from sim_backend.emulator import EmulatorServer, FaultConfig, LinkModel, parse_listen
    from sim_backend.firmware import Firmware
    from sim_backend.sim_chip import SimChipSpec

    try:
        listen = parse_listen(args.listen) if args.listen else None
    except ValueError as e:
        raise ConfigError(str(e), key="--listen") from None
    chip = SimChipSpec(model=args.model, seed=args.seed, arrays=args.arrays, rows=args.rows,
                       cols=args.cols).build()
    firmware = Firmware(chip, state_path=args.state)
    try:
        server = EmulatorServer(
            firmware, listen=listen, pty=args.pty,
            faults=FaultConfig(corrupt=args.corrupt, drop=args.drop, delay_ms=args.delay_ms,
                               disconnect_every=args.disconnect_every, seed=args.fault_seed,
                               script={args.crash_at: "crash"} if args.crash_at else {}),
            link=LinkModel(baud=args.baud, latency_ms=args.latency_ms),
            stats_path=args.stats_json, busy_poll_s=args.busy_poll_us / 1e6)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.listen}: {e}", key="--listen") from None

    def stop(signum: int, frame: object) -> None:
        server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(server.url, flush=True)
    print(f"pcm-hil emulate: serving a {args.arrays}x{args.rows}x{args.cols} {chip.model.name} "
          f"chip (seed {args.seed}) on {server.url}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0
