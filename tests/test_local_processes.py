"""hil.cluster.LocalProcesses: Cluster's contract on worker processes of this machine, no Ray
needed - a task's own error is its result, a worker that dies is replaced and its task run
again, then given up."""
from __future__ import annotations

import math
import os

import pytest

from drivers.errors import ConfigError
from hil.cluster import LocalProcesses, Task


def test_tasks_run_in_other_processes_and_their_errors_are_results():
    with LocalProcesses(2) as workers:
        results = {r.key: r for r in workers.run(
            [Task(f"pid{i}", os.getpid) for i in range(4)]
            + [Task("bad", math.sqrt, (-1.0,)), Task("good", math.sqrt, (9.0,))])}
    assert results["good"].ok and results["good"].value == 3.0
    assert not results["bad"].ok and not results["bad"].lost
    assert results["bad"].error == "ValueError: math domain error"
    assert "Traceback" in results["bad"].traceback
    pids = {results[f"pid{i}"].value for i in range(4)}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_a_task_whose_worker_dies_is_run_again_then_lost():
    seen = []
    with LocalProcesses(2, max_retries=2) as workers:
        results = workers.run([Task("dies", os._exit, (3,)), Task("lives", abs, (-2,))],
                              seen.append)
        # the pool was refilled: it still runs tasks
        (after,) = workers.run([Task("after", abs, (-5,))])
    by_key = {r.key: r for r in results}
    assert [r.key for r in seen] == [r.key for r in results]
    assert by_key["lives"].ok and by_key["lives"].value == 2
    dead = by_key["dies"]
    assert not dead.ok and dead.lost
    assert dead.error == "worker lost after 2 retries: its process ended with exit code 3"
    assert after.ok and after.value == 5


def test_bad_sizes_are_refused_by_name():
    with pytest.raises(ConfigError, match="workers"):
        LocalProcesses(0)
    with pytest.raises(RuntimeError, match="outside its with block"):
        LocalProcesses(1).run([Task("t", abs, (1,))])
