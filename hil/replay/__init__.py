"""The replay wing: everything that re-reads a run log to re-run, check or continue it.

  divergence  ReplayDivergence: where a re-run first differs from its log
  backend     ReplayBackend (`replay://RUN.h5`): a logged run served back as a chip
  verify      `pcm-hil replay --verify`: a re-run checked against its log, bit for bit
  resume      `pcm-hil train --resume`: plan_resume and the ResumeBackend layer
  summary     the figures `pcm-hil replay` prints
  plots       the figures `pcm-hil replay --plot` draws

All of it reads logs through hil.run_log.RunLog's public API only.
"""
from hil.replay.backend import REPLAY_SCHEME, LoggedCommand, ReplayBackend, open_replay
from hil.replay.divergence import ReplayDivergence
from hil.replay.resume import (NOT_SENT, ResumeBackend, ResumeError, ResumePlan, plan_resume,
                               resume_source, resumed_path)
from hil.replay.verify import VerifyRecorder, VerifyReport, compare_summaries, verify_run

__all__ = ["LoggedCommand", "NOT_SENT", "REPLAY_SCHEME", "ReplayBackend", "ReplayDivergence",
           "ResumeBackend", "ResumeError", "ResumePlan", "VerifyRecorder", "VerifyReport",
           "compare_summaries", "open_replay", "plan_resume", "resume_source", "resumed_path",
           "verify_run"]
