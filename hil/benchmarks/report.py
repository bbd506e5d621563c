"""The Performance table: every figure of one benchmark run as markdown, and the one place that
rewrites it into a README (between the bench markers, nothing else)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"
HEADING = "## Performance"


def _x(v: Optional[float], digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}×"


def _num(v: Optional[float], fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def table(r: Dict[str, Any]) -> List[str]:
    """The Performance table as markdown lines (what README's marked region holds)."""
    cmd = "`scripts/bench`"
    mp, steps = r["mp_examples_per_s"], r["mp_steps_examples_per_s"]
    rows = [
        ("training throughput, mixed precision, in-process simulated chip (784-250-10, "
         "batch 1), its training steps alone", f"{steps:,.0f} examples/s", "", cmd),
        (f"… against a textbook fp32 numpy loop ({r['fp32_examples_per_s']:,.0f} examples/s, "
         "training steps alone too)", _x(r["ratio_fp32"]), "≥ 0.5×", cmd),
        (f"… the whole epoch, its closing full read and test evaluation included ({mp:,.0f} "
         f"examples/s), against the optimised fp32 baseline's epoch, its test evaluation "
         f"included ({r['fp32_opt_examples_per_s']:,.0f} examples/s)",
         _x(r["ratio_fp32_opt"]), "", cmd),
        ("… against aihwkit MixedPrecisionCompound (PCMPresetUnitCell), measured in this run",
         _x(r["ratio_aihwkit"], 1) if r["ratio_aihwkit"] is not None
         else "skipped (aihwkit not installed, docs/benchmarks.md)", "≥ 50×", cmd),
        ("… against aihwkit 1.2.0's reference figure of 37 examples/s (2 cores, batch 1; "
         "not measured here)", _x(r["ratio_aihwkit_reference"], 1), "≥ 50×", cmd),
        ("emulator over TCP, unlimited link, relative to in-process",
         _x(r["emulator_ratio"]), "≥ 0.5×", cmd),
        ("emulator over TCP, 12 Mbaud modelled link, relative to in-process",
         _x(r["emulator_12mbaud_ratio"]), "", cmd),
        ("logging overhead (step time with / without the run log)",
         _num(r["log_overhead"], "{:.3f}"), "≤ 1.15", cmd),
        ("run-log size of one 60k-step epoch",
         "n/a (full mode only)" if r["log_bytes_per_epoch"] is None
         else f"{r['log_bytes_per_epoch'] / 1e6:.1f} MB", "", cmd),
        ("full conductance state (397,520 devices) at any step of a "
         f"{r['log'].get('synthetic_steps', 0):,}-step synthetic log, worst case",
         _num(r["reconstruct_seconds_worst"], "{:.2f} s"), "≤ 1 s", cmd),
        ("`replay --verify` speed relative to the live run",
         _x(r["replay_verify_speedup"]), "≥ 5×", cmd),
        ("bytes on the wire per pulsed device (PROGRAM request + ACK, or PROGRAM_READ "
         "request; frames included)", _num(r["bytes_per_pulse"]), "≤ 4", cmd),
        ("bytes on the wire per read value (READ request + reply, or PROGRAM_READ reply; "
         "frames included; the value itself is a 2-byte ADC code)",
         _num(r["bytes_per_read"]), "≤ 2 + framing", cmd),
        ("round trips per training step (PROGRAM_READ, PROGRAM, READ; init and refreshes "
         "included)", _num(r["round_trips_per_step"]), "", cmd),
        ("simulated-chip state per device", f"{r['state_bytes_per_device']:g} bytes", "≤ 16",
         cmd),
    ]
    for row in r["scaling_devices"]:
        rows.append((f"step time, {row['network']} on a {row['devices'] / 2**20:g} M-device chip "
                     f"({row['chip']}); chip + trainer memory",
                     f"{row['step_us']:,.0f} µs; {row['traced_bytes'] / 2**20:.0f} MiB", "",
                     cmd))
    k = r.get("step_time_device_exponent")
    if k is not None:
        rows.append(("step-time growth with device count (exponent k of devices^k)",
                     f"{k:.2f}".replace("-0.00", "0.00"), "≤ 1", cmd))
    for row in r["scaling_networks"]:
        rows.append((f"step time, {row['network']} ({row['mapped_devices']:,} devices, "
                     f"{row['devices'] / 2**20:g} M-device chip); chip + trainer memory",
                     f"{row['step_us']:,.0f} µs; {row['traced_bytes'] / 2**20:.0f} MiB", "",
                     cmd))
    rows += _torch_rows(r, cmd)
    lines = ["| figure | value | target | command |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    la = r.get("load_average_start") or [0.0]
    lines.append("")
    lines.append(f"Measured by `scripts/bench` ({r['mode']} mode, N = {r['examples']:,} "
                 f"examples, {r.get('cpu_count')} cores, load average {la[0]:.2f} at the "
                 "start); every figure comes from the same run. docs/benchmarks.md says how "
                 "each is measured.")
    return lines


def torch_table(r: Dict[str, Any]) -> List[str]:
    """The hil.torch rows alone (`scripts/bench --only torch`), with the run's conditions."""
    rows = _torch_rows(r, "`scripts/bench --only torch`")
    lines = ["| figure | value | target | command |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    la = r.get("load_average_start") or [0.0]
    lines += ["", f"Measured by `scripts/bench --only torch` ({r['mode']} mode, "
                  f"{r.get('cpu_count')} cores, load average {la[0]:.2f} at the start)."]
    return lines


def _torch_rows(r: Dict[str, Any], cmd: str) -> List[tuple]:
    """The CNN through hil.torch against plain torch and aihwkit, and the MLP through
    hil.torch against the numpy trainer."""
    if not r.get("cnn"):
        why = r.get("torch_skip_reason") or "not measured"
        return [("hil.torch figures", f"skipped ({why})", "", cmd)]
    rows = []
    targets = {1: ("", "≥ 5×"), 32: ("≥ 0.3×", "≥ 10×")}
    for row in r["cnn"].values():
        b = row["batch"]
        t_fp32, t_aihw = targets.get(b, ("", ""))
        counts = " and ".join(str(t) for t in row["thread_counts"])
        rows.append((f"CNN (LeNet-5, tanh, max-pool) training throughput through hil.torch, "
                     f"in-process simulated chip, batch {b} at lr {row['learning_rate']:g}, "
                     f"best of {counts} torch thread(s): at {row['torch_threads']}",
                     f"{row['examples_per_s']:,.0f} examples/s", "", cmd))
        rows.append((f"… against the same CNN in plain torch fp32 "
                     f"({row['fp32_examples_per_s']:,.0f} examples/s, same batch, best at "
                     f"{row['fp32_threads']} thread(s))", _x(row["ratio_fp32"]), t_fp32, cmd))
        same = row.get("ratio_aihwkit_same_threads") or {}
        at_same = "; at equal thread counts " + ", ".join(
            f"{_x(v, 1)} ({t})" for t, v in same.items()) if same else ""
        rows.append(("… against aihwkit AnalogConv2d/AnalogLinear, MixedPrecisionCompound("
                     "PCMPresetUnitCell), measured in this run, each at its best thread count"
                     + (f" (aihwkit {row['aihwkit_examples_per_s']:,.0f} examples/s at "
                        f"{row['aihwkit_threads']}{at_same})"
                        if row["ratio_aihwkit"] is not None else ""),
                     _x(row["ratio_aihwkit"], 1) if row["ratio_aihwkit"] is not None
                     else "skipped (aihwkit not installed, docs/benchmarks.md)", t_aihw, cmd))
        if row["ratio_aihwkit_reference"] is not None:
            rows.append((f"… against aihwkit's reference figure of "
                         f"{row['aihwkit_reference_examples_per_s']:g} examples/s (the issue's, "
                         f"2 cores; not measured here)", _x(row["ratio_aihwkit_reference"], 1),
                         t_aihw, cmd))
    m = r.get("mlp_torch")
    if m:
        first = m["first_different_step"]
        rows.append((f"784-250-10 MLP through hil.torch against the numpy trainer: training "
                     f"steps with identical pulse batches, of {m['steps']:,}",
                     f"{m['identical_steps']:,}" + ("" if first is None
                                                    else f" (first differs: step {first})"),
                     "all", cmd))
        rows.append(("… its throughput against the numpy trainer's "
                     f"({m['numpy_examples_per_s']:,.0f} examples/s, batch 1)",
                     _x(m["torch_examples_per_s"] / m["numpy_examples_per_s"]), "", cmd))
    lg = r.get("lstm_gan")
    if lg:
        lstm, gan, threads = lg["lstm"], lg["gan"], lg["torch_threads"]
        rows.append((f"character-level LSTM (configs/shakespeare_lstm.yaml) training "
                     f"throughput, in-process simulated chip, {threads} torch thread(s)",
                     f"{lstm['chip_chars_per_s']:,.0f} characters/s", "", cmd))
        rows.append((f"… against the same LSTM in plain torch fp32 "
                     f"({lstm['fp32_chars_per_s']:,.0f} characters/s)",
                     _x(lstm["ratio_fp32"]), "", cmd))
        rows.append((f"MLP GAN (configs/mnist_gan.yaml) training throughput, in-process "
                     f"simulated chip, {threads} torch thread(s)",
                     f"{gan['chip_digits_per_s']:,.0f} digits/s", "", cmd))
        rows.append((f"… against the same GAN in plain torch fp32 "
                     f"({gan['fp32_digits_per_s']:,.0f} digits/s)", _x(gan["ratio_fp32"]), "",
                     cmd))
    return rows


def write_readme(path: str, lines: List[str]) -> None:
    """Replace the lines between the bench markers; without markers, put them right under
    the Performance heading, in place of the table that directly follows it, if any."""
    with open(path, encoding="utf-8") as f:
        text = f.read().split("\n")
    block = [MARK_START, *lines, MARK_END]
    if MARK_START in text and MARK_END in text:
        a, b = text.index(MARK_START), text.index(MARK_END)
        if b < a:
            raise SystemExit(f"{path}: {MARK_END} comes before {MARK_START}")
        text[a:b + 1] = block
    else:
        try:
            h = text.index(HEADING)
        except ValueError:
            raise SystemExit(f"{path}: no '{HEADING}' heading to put the table under") \
                from None
        i = h + 1
        while i < len(text) and not text[i].strip():
            i += 1
        j = i
        while j < len(text) and text[j].startswith("|"):
            j += 1
        text[h + 1:j] = ["", *block] + ([""] if j < len(text) and text[j].strip() else [])
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    os.replace(tmp, path)
