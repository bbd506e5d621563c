"""The one place that builds a run's backend stack, from what the operator asked for.

A run talks to its chip through layers, bottom to top:

  chip         the backend its URL names (sim://, socket://..., a serial port; for a dry
               run a simulated stand-in of the configured chip)
  resume       hil.replay.resume.ResumeBackend, when the run continues a log: the old
               log's commands, then its journal's, then the live chip
  station      drivers.safety.LimitedBackend: the station's safety limits on every command

and beside them: the run log (RunLogWriter) with the chip-state keeper hooked to its commits
(sim:// runs that can be resumed), the station's instruments and monitors, and the
provenance the log records (station, instrument snapshots, resume segments, chip state).

`RunRequest` says what the operator asked for; `open_run_stack` checks it against the chip
and builds the stack, in an order that leaves no trace of a run that cannot start: a resume
is planned against the chip before its new log is created, and instruments are opened after
the chip. The CLI only parses arguments into a RunRequest and calls this; so do the sweep,
the benchmarks and the tests when they need a whole stack.
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
from hil.chip_state import ChipStateKeeper
from hil.config import ExperimentConfig
from hil.monitors import Monitor
from hil.replay.resume import (ResumeBackend, ResumePlan, plan_resume, resume_provenance,
                               resume_source, resumed_path)
from hil.run_log import RunLog, RunLogWriter
from hil.station import Station, open_instruments

DEFAULT_LOG_FOLDER = "runs"


def default_log_path(cfg: ExperimentConfig, folder: str = DEFAULT_LOG_FOLDER) -> str:
    """runs/<name>-<timestamp>.h5: where a run is logged when no path is given."""
    return os.path.join(folder, f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}.h5")


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
    dry_run: walk the experiment against a simulated stand-in of the chip under the
        station's limits; nothing is opened, nothing is logged.
    """

    config: ExperimentConfig
    backend_url: Optional[str] = None
    station: Optional[Station] = None
    log_path: Optional[str] = None
    chip_state: Optional[str] = None
    resume_from: Optional[str] = None
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
        """A request that continues the run logged in `log_path`, with the logged config,
        into `log_to` (default: the next segment's name, RUN-2.h5, RUN-3.h5...).

        If `log_path` is a resumed segment killed before its fast-forward caught up with
        the log it continued, that older log holds more of the run and is resumed instead
        (`note` says so)."""
        src = resume_source(log_path)
        if src != log_path:
            note(f"{log_path} was killed before its fast-forward finished; resuming {src}, "
                 "which holds more of the run")
        with RunLog(src) as old:
            cfg = old.experiment_config()
            target = log_to or resumed_path(src, old)
        return cls(cfg, backend_url=backend_url, station=station, log_path=target,
                   chip_state=chip_state, resume_from=src)

    def validate(self) -> None:
        """One ConfigError naming the option for a combination that cannot work."""
        if self.dry_run and (self.resume_from or self.chip_state):
            raise ConfigError("a dry run starts no chip and writes no log",
                              key="--resume" if self.resume_from else "--chip-state")
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

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run_stack(request: RunRequest,
                   note: Callable[[str], None] = lambda _: None) -> RunStack:
    """Build the stack `request` asks for (module docstring); `note` hears what is done
    (the log's path, what a resume will fast-forward). A request that cannot run raises
    before anything is left behind: no new log, no chip left open."""
    request.validate()
    cfg = request.config
    with contextlib.ExitStack() as exit_stack:
        recorder = None
        if request.log_path and not (request.dry_run or request.resume_from):
            # Created first, so a bad path fails before the chip is touched; a stack that
            # fails to build after this marks the log failed, with the reason.
            recorder = exit_stack.enter_context(_new_log(request.log_path, cfg))
            note(f"run log: {request.log_path}")
        url = "sim://" if request.dry_run else request.url
        chip = exit_stack.enter_context(open_backend(url, cfg.sim_chip_spec()))
        stack = RunStack(request, chip, chip, recorder=recorder)
        if request.resume_from:
            _stack_resume(stack, exit_stack, note)
        elif request.chip_state:
            _keep_chip_state(stack)
        station = request.station
        if station is not None:
            stack.backend = LimitedBackend(stack.backend, station.safety)
            stack.provenance["station"] = station.to_dict()
            if not request.dry_run:
                instruments = exit_stack.enter_context(open_instruments(station))
                stack.monitor = Monitor.from_station(station, instruments)
                stack.provenance["instruments"] = instruments.snapshot()
        stack._exit = exit_stack.pop_all()
    return stack


def _new_log(path: str, cfg: ExperimentConfig) -> RunLogWriter:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return RunLogWriter(path, cfg)


def _keep_chip_state(stack: RunStack) -> None:
    """A new sim:// run that saves its chip at every log commit (so it can be resumed)."""
    chip = find_ability(stack.chip, StatefulBackend)
    if chip is None:
        raise ConfigError("only the in-process simulated chip (sim://) needs a state file; a "
                          "chip behind firmware keeps its own state", key="--chip-state")
    path = stack.request.chip_state
    keeper = ChipStateKeeper(chip, path, 0)
    stack.recorder.commit_hooks.append(keeper.on_commit)
    stack.provenance["chip_state"] = os.path.abspath(path)


def _stack_resume(stack: RunStack, exit_stack: contextlib.ExitStack,
                  note: Callable[[str], None]) -> None:
    """The resume layer over the live chip, and the new log. The plan is checked against
    the chip before the new log exists: a run that cannot be resumed leaves no file."""
    request = stack.request
    old = exit_stack.enter_context(RunLog(request.resume_from))
    plan = plan_resume(old, stack.chip, request.chip_state)
    stack.old_log, stack.resume_plan = old, plan
    stack.recorder = exit_stack.enter_context(_new_log(request.log_path, request.config))
    note(f"run log: {request.log_path} (resuming {request.resume_from})")
    stack.resumed = ResumeBackend(plan, old, stack.chip)
    stack.backend = stack.resumed
    stack.provenance.update(resume_provenance(old, plan))
    keeper = plan.chip_state
    if keeper is not None:
        stack.recorder.commit_hooks.append(keeper.on_commit)
        stack.provenance["chip_state"] = os.path.abspath(keeper.path)
    note(f"resuming {request.resume_from}: status {old.status.status}, complete through step "
         f"{old.complete_step}; fast-forwarding {plan.committed:,} logged and "
         f"{len(plan.journal)} journaled commands"
         + (f" (chip restored from {keeper.path} at command {plan.chip_from:,})"
            if keeper is not None else ""))


__all__ = ["DEFAULT_LOG_FOLDER", "RunRequest", "RunStack", "default_log_path",
           "open_run_stack"]
