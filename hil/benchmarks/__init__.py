"""Benchmarks: every figure of the README's Performance table, and the tools that measure them.

Apart from the experiments on purpose: nothing in hil imports this package, and it needs
nothing but the installed package (no source checkout, no scripts loaded by path). The
scripts under scripts/ are thin entry points into these modules.

  suite          `scripts/bench`: every figure in one run, the table, README's table
  common         the benchmark experiment config and helpers every benchmark shares
  throughput     mixed precision against the fp32 loops and aihwkit
  wire           `scripts/bench_wire`: training through the firmware emulator over TCP
  run_log_cost   `scripts/bench_log`: logging overhead, log size, state reconstruction,
                 `replay --verify` speed
  scaling        step time and memory against chip size and network size
  report         the Performance table as markdown, and rewriting it into a README
"""
