"""The one place that builds a run's backend stack, from what the operator asked for.

A run talks to its chip through layers, bottom to top:

  chip         the backend its URL names (sim://, socket://..., a serial port; for a dry
               run a simulated stand-in of the configured chip)
  station      drivers.safety.LimitedBackend: the station's safety limits on every command
               that reaches the chip; a batch larger than the station allows goes down as
               several commands
  resume       hil.replay.resume.ResumeBackend, when the run continues a log: the old
               log's commands, then its journal's, then the live chip (what it serves from
               the log never reaches the chip; the trainer's chip I/O checks every command
               against the station's limits before it is logged, served or sent)

and beside them: the run log (RunLogWriter) with the chip-state keeper hooked to its commits
(sim:// runs that can be resumed), the station's instruments and monitors, and the
provenance the log records (station, instrument snapshots, resume segments, chip state).

`RunRequest` says what the operator asked for; `open_run_stack` checks it against the chip
and builds the stack, in an order that leaves no trace of a run that cannot start: the log's
path is checked first, the log created only once the chip has accepted the run (a resume:
once it is planned against the chip), and instruments are opened after the chip. A resumed
run is held to the station it was started under (from its log), which a station given at
resume may only narrow. The CLI only parses arguments into a RunRequest and calls this; so
do the sweep, the benchmarks and the tests when they need a whole stack.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from drivers.abilities import StatefulBackend, find_ability
from drivers.backend import ChipBackend
from drivers.errors import ConfigError
from drivers.safety import LimitedBackend
from hil.backend_url import open_backend
from hil.chip_state import STATE_SIDECAR, ChipStateKeeper
from hil.config import ExperimentConfig, logged_config
from hil.monitors import Monitor
from hil.output_files import check_writable
from hil.replay.resume import (ResumeBackend, ResumeError, ResumePlan, plan_resume,
                               restart_provenance, resume_provenance, resume_target,
                               resumed_path)
from hil.run_history import batch_parts, logged_batch_limit
from hil.run_log import RunLog, RunLogWriter, read_header
from hil.run_state import RunState
from hil.station import Station, open_instruments, station_from_provenance, station_provenance

DEFAULT_LOG_FOLDER = "runs"


def default_log_path(cfg: ExperimentConfig, folder: str = DEFAULT_LOG_FOLDER) -> str:
    """runs/<name>-<timestamp>.h5: where a run is logged when no path is given."""
    return os.path.join(folder, f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}.h5")


class RunCompleted(ResumeError):
    """--resume of a run whose newest segment completed: there is nothing left to do
    (`summary` is that segment's run summary)."""

    def __init__(self, path: str, summary: Optional[Dict[str, Any]]) -> None:
        super().__init__(f"{path}: the run completed; there is nothing to resume")
        self.path = path
        self.summary = summary


@dataclass(frozen=True)
class RunRequest:
    """What the operator asked for: the experiment, where it runs, what is recorded.

    config: the experiment (for a resume: the logged one, see `RunRequest.resume`).
    backend_url: the chip; None means the station's chip link, then the config's.
    station: the bench (limits, instruments, monitors), or None.
    log_path: the run log to write; None means no log (not allowed with a chip state or a
        resume, which need one).
    chip_state: sim:// only: the chip's state file (a new run: kept at every commit; a
        resume: restored, default the one the log names).
    resume_from: the log of the run this one continues.
    restarts: the log of a run that never began (killed, or ended, before its first
        command): this run is that run again from step 0, the next segment of its record.
    dry_run: walk the experiment against a simulated stand-in of the chip under the
        station's limits; nothing is opened, nothing is logged.
    """

    config: ExperimentConfig
    backend_url: Optional[str] = None
    station: Optional[Station] = None
    log_path: Optional[str] = None
    chip_state: Optional[str] = None
    resume_from: Optional[str] = None
    restarts: Optional[str] = None
    dry_run: bool = False

    @property
    def url(self) -> str:
        """The chip this run talks to."""
        if self.backend_url:
            return self.backend_url
        if self.station is not None:
            return self.station.chip.url
        return self.config.chip.backend

    @classmethod
    def resume(cls, log_path: str, *, log_to: Optional[str] = None,
               backend_url: Optional[str] = None, station: Optional[Station] = None,
               chip_state: Optional[str] = None,
               note: Callable[[str], None] = lambda _: None) -> "RunRequest":
        """A request that continues the run logged in `log_path` - any segment of it - with
        the logged config, into `log_to` (default: the next segment's name, RUN-2.h5,
        RUN-3.h5...), under the station the run was started under.

        The log continued is the run's newest segment; if that one was killed before its
        fast-forward caught up with the log it continued, that older log holds more of the
        run and is continued instead; a run whose log never began starts again from step 0
        (`note` says which). `station`, if given, may only narrow the logged station's
        limits (ConfigError naming the limit); its bench (instruments, monitors) is used.
        RunCompleted when the newest segment completed."""
        src = resume_target(log_path, note)
        header = read_header(src)
        cfg = logged_config(header.config, source=f"{src}:/meta/config_yaml")
        logged = header.provenance.get("station")
        started = station_from_provenance(logged, f"{src}: provenance station") \
            if logged else None
        if station is None:
            station = started
        elif started is not None:
            station.safety.check_within(started.safety, f"the station {started.name!r} "
                                        f"the run was started under ({src})")
        # The run's chip, whatever the station says (a chip's URL may change: --backend).
        url = backend_url or header.provenance.get("chip_url") or cfg.chip.backend
        if not header.began:
            chip_state = chip_state or header.provenance.get("chip_state") or None
            note(f"{src} holds nothing of its run (it "
                 + (f"ended before its first command: {header.final_reason}"
                    if header.final_status else "was killed before its first command")
                 + "); starting the run again from step 0")
            return cls(cfg, backend_url=url, station=station,
                       log_path=log_to or resumed_path(src, header), chip_state=chip_state,
                       restarts=src)
        with RunLog(src) as old:
            if old.status.status == RunState.COMPLETED:
                raise RunCompleted(src, old.summary)
            target = log_to or resumed_path(src, old)
        return cls(cfg, backend_url=url, station=station, log_path=target,
                   chip_state=chip_state, resume_from=src)

    def validate(self) -> None:
        """One ConfigError naming the option for a combination that cannot work."""
        if self.dry_run and (self.resume_from or self.restarts or self.chip_state):
            raise ConfigError("a dry run starts no chip and writes no log",
                              key="--chip-state" if self.chip_state and not (
                                  self.resume_from or self.restarts) else "--resume")
        if self.chip_state and not self.log_path:
            raise ConfigError("needs a run log (the state is kept in step with its commits)",
                              key="--chip-state")
        if self.resume_from and not self.log_path:
            raise ConfigError("a resumed run writes a new log (the run's record)",
                              key="--no-log")
        if self.chip_state and not self.resume_from and os.path.exists(self.chip_state):
            raise ConfigError(f"{self.chip_state} exists; a new run starts a new chip (choose "
                              "another file, or --resume the run it belongs to)",
                              key="--chip-state")
        if self.chip_state:
            for path in (self.chip_state, self.chip_state + STATE_SIDECAR):
                check_writable(path, "--chip-state")   # saved at every commit


@dataclass
class RunStack:
    """Everything a run talks to, built by `open_run_stack`; closing it closes all of it
    (the chip after its safe state, the instruments, the old log).

    backend: the top of the stack, what the trainer is given.
    recorder: the run log being written, or None.
    monitor: the station's monitors, or None.
    provenance: what the run log records about the bench and the run's history.
    resumed: the resume layer, when the run continues a log (its counters say how much was
        fast-forwarded and re-sent).
    guard: the station's guard, when there is a station (its counters say how many
        commands reached the chip and how many were refused).
    resume_plan: how the resume catches up with its log.
    """

    request: RunRequest
    backend: ChipBackend
    chip: ChipBackend
    recorder: Optional[RunLogWriter] = None
    monitor: Optional[Monitor] = None
    provenance: Dict[str, Any] = field(default_factory=dict)
    resumed: Optional[ResumeBackend] = None
    resume_plan: Optional[ResumePlan] = None
    guard: Optional[LimitedBackend] = None
    old_log: Optional[RunLog] = None
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    @property
    def config(self) -> ExperimentConfig:
        return self.request.config

    @property
    def log_path(self) -> Optional[str]:
        return self.request.log_path if self.recorder is not None else None

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> "RunStack":
        return self

    def __exit__(self, *exc: Any) -> None:
        # What ended the block reaches every layer: the log of a run stopped before its
        # first command (a second Ctrl-C while the data loads) is marked aborted, not left
        # as if its writer had been killed.
        self._exit.__exit__(*exc)


def open_run_stack(request: RunRequest,
                   note: Callable[[str], None] = lambda _: None) -> RunStack:
    """Build the stack `request` asks for (module docstring); `note` hears what is done
    (the log's path, what a resume will fast-forward). A request that cannot run raises
    before anything is left behind: no new log, no chip left open."""
    request.validate()
    cfg = request.config
    early = _early_provenance(request)
    with contextlib.ExitStack() as exit_stack:
        recorder = None
        new_log = bool(request.log_path and not (request.dry_run or request.resume_from))
        if new_log:
            # A bad path fails before the chip is touched; the log itself is created only
            # once the chip has accepted this client (a chip that refuses it - in use by
            # another, not where a record says - leaves no file behind, so the same --run
            # works once the chip is free). From then on, a stack that fails to build marks
            # the log failed, with the reason.
            _prepare_log_path(request.log_path)
        url = "sim://" if request.dry_run else request.url
        chip = exit_stack.enter_context(open_backend(url, cfg.sim_chip_spec()))
        if new_log:
            recorder = exit_stack.enter_context(_new_log(request.log_path, cfg, early))
            note(f"run log: {request.log_path}"
                 + (f" (starting {request.restarts} again)" if request.restarts else ""))
        stack = RunStack(request, chip, chip, recorder=recorder)
        stack.provenance.update(early)
        station = request.station
        if station is not None:
            stack.backend = stack.guard = LimitedBackend(chip, station.safety)
        if request.resume_from:
            _stack_resume(stack, exit_stack, early, note)
        elif request.chip_state:
            _keep_chip_state(stack)
        if station is not None and not request.dry_run:
            instruments = exit_stack.enter_context(open_instruments(station))
            stack.monitor = Monitor.from_station(station, instruments)
            stack.provenance["instruments"] = instruments.snapshot()
        stack._exit = exit_stack.pop_all()
    return stack


def _early_provenance(request: RunRequest) -> Dict[str, Any]:
    """What the log's provenance holds from its creation on, before the chip is opened: the
    chip's URL and the station (a resumed run goes back to the one and is held to the
    other), the chip-state file, the segments before this one of a run started again. A run
    killed before its first command is started again from these."""
    prov: Dict[str, Any] = {} if request.dry_run else {"chip_url": request.url}
    if request.station is not None:
        prov["station"] = station_provenance(request.station)
    if request.chip_state and not request.resume_from:
        prov["chip_state"] = os.path.abspath(request.chip_state)
    if request.restarts:
        prov.update(restart_provenance(read_header(request.restarts)))
    return prov


def _prepare_log_path(path: str) -> None:
    """The log's folder made, and its path checked as the writer will check it."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder of the run log {path}: "
                          f"{e.strerror or e}", key="--run") from None
    RunLogWriter.check_path(path)


def _new_log(path: str, cfg: ExperimentConfig, provenance: Dict[str, Any]) -> RunLogWriter:
    _prepare_log_path(path)
    return RunLogWriter(path, cfg, provenance=provenance)


def _keep_chip_state(stack: RunStack) -> None:
    """A new sim:// run that saves its chip at every log commit (so it can be resumed)."""
    chip = find_ability(stack.chip, StatefulBackend)
    if chip is None:
        raise ConfigError("only the in-process simulated chip (sim://) needs a state file; a "
                          "chip behind firmware keeps its own state", key="--chip-state")
    keeper = ChipStateKeeper(chip, stack.request.chip_state, 0)
    stack.recorder.commit_hooks.append(keeper.on_commit)


def _check_resend_parts(plan: ResumePlan, old: RunLog, station: Optional[Station]) -> None:
    """The command a kill cut off is re-sent in the parts it first went out in, or the
    firmware cannot tell which of them it executed: the batch limit must split it as before."""
    n = plan.uncertain_devices
    if not n:
        return
    before = logged_batch_limit(old)
    now = station.safety.max_batch_devices if station is not None else None
    if batch_parts(n, before) != batch_parts(n, now):
        raise ResumeError(
            f"{old.path}: the command the run was cut off in ({n:,} devices) went out as "
            f"{batch_parts(n, before)} command(s) (safety.max_batch_devices "
            f"{'unset' if before is None else f'{before:,}'}); under "
            f"{'no limit' if now is None else f'{now:,}'} it would go out as "
            f"{batch_parts(n, now)}, "
            "and the firmware could not tell which parts it had executed: resume under the "
            "batch limit the run had")


def _stack_resume(stack: RunStack, exit_stack: contextlib.ExitStack, early: Dict[str, Any],
                  note: Callable[[str], None]) -> None:
    """The resume layer over the station guard (or the chip), and the new log. The plan is
    checked against the chip before the new log exists: a run that cannot be resumed
    leaves no file."""
    request = stack.request
    old = exit_stack.enter_context(RunLog(request.resume_from))
    plan = plan_resume(old, stack.chip, request.chip_state)
    _check_resend_parts(plan, old, request.station)
    stack.old_log, stack.resume_plan = old, plan
    prov = {**early, **resume_provenance(old, plan)}
    keeper = plan.chip_state
    if keeper is not None:
        prov["chip_state"] = os.path.abspath(keeper.path)
    stack.recorder = exit_stack.enter_context(_new_log(request.log_path, request.config, prov))
    note(f"run log: {request.log_path} (resuming {request.resume_from})")
    stack.resumed = ResumeBackend(plan, old, stack.backend)
    stack.backend = stack.resumed
    stack.provenance.update(prov)
    if keeper is not None:
        stack.recorder.commit_hooks.append(keeper.on_commit)
    note(f"resuming {request.resume_from}: status {old.status.status}, complete through step "
         f"{old.complete_step}; fast-forwarding {plan.committed:,} logged and "
         f"{len(plan.journal)} journaled commands"
         + (f" (chip restored from {keeper.path} at command {plan.chip_from:,})"
            if keeper is not None else ""))


__all__ = ["DEFAULT_LOG_FOLDER", "RunCompleted", "RunRequest", "RunStack",
           "default_log_path", "open_run_stack"]
