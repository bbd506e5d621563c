"""Sweeps: many ordinary runs of one experiment over config keys, side by side on a Ray
cluster, with one results table (docs/sweeps.md).

  spec     the sweep file (load_sweep)
  points   its points: expansion, validation, identity (expand)
  store    the output folder and what is finished, failed or still to run
  worker   one point on a worker (run_point)
  results  the tables; plots: the plots
  runner   run_sweep: what is missing goes to the cluster, then the results
"""
from hil.sweep.points import Point, expand
from hil.sweep.runner import SweepReport, report_only, run_sweep
from hil.sweep.spec import Sweep, load_sweep

__all__ = ["Point", "Sweep", "SweepReport", "expand", "load_sweep", "report_only",
           "run_sweep"]
