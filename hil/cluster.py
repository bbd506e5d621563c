"""Independent tasks on a Ray cluster: an embedded one on this machine, or one joined by
address.

Why a module of its own: a sweep point and (later) a segment of a parallel log verification
are the same shape of work, a function of picklable arguments that runs on one worker and
either returns a value or fails, so one small layer starts or joins the cluster, keeps a
bounded number of tasks in flight and turns every way a task can end into a `TaskResult`.

- An exception raised by the task itself is caught *in the worker* and returned as a
  failure with its traceback: it is a property of the task (a bad config, a diverged run),
  so Ray must not retry it and the other tasks go on.
- A worker process that dies (SIGKILL, out of memory, a node lost) is Ray's business: the
  task is re-run on another worker up to `max_retries` times; only then is it a lost task.
  A task that may be re-run must therefore be idempotent (a sweep point replaces its own
  partial output).
- An embedded cluster listens on the loopback interface only: it is this machine's, and
  nothing else should join it. It is shut down on leaving the context (and by Ray's own
  reaper if the driver is killed).

Ray is an optional dependency (`pip install pcm-hil[cluster]`); importing this module does
not import it.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from drivers.errors import ConfigError, HilError

#: Set before Ray is imported: Ray's switch that turns multi-node support off, so an embedded
#: cluster binds and advertises 127.0.0.1 instead of the machine's outside address.
_LOOPBACK_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


class ClusterUnavailable(HilError):
    """Ray is not installed, or the cluster cannot be started or reached."""


@dataclass(frozen=True)
class ClusterOptions:
    """Where tasks run and how many at once."""

    address: Optional[str] = None        # join this cluster ("auto", "HOST:PORT"); None: embedded
    cpus: Optional[int] = None           # embedded cluster's CPUs (default: all of this machine)
    cpus_per_task: float = 1.0           # Ray CPUs reserved by each task
    max_parallel: Optional[int] = None   # tasks in flight at once (default: as many as fit)
    max_retries: int = 3                 # re-runs of a task whose worker process died
    object_store_mb: int = 128           # embedded cluster's object store (tasks pass little)

    def __post_init__(self) -> None:
        if self.cpus is not None and self.cpus < 1:
            raise ConfigError(f"must be >= 1, got {self.cpus}", key="cpus")
        if not self.cpus_per_task > 0:
            raise ConfigError(f"must be > 0, got {self.cpus_per_task}", key="cpus_per_task")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ConfigError(f"must be >= 1, got {self.max_parallel}", key="max_parallel")
        if self.max_retries < 0:
            raise ConfigError(f"must be >= 0, got {self.max_retries}", key="max_retries")
        if self.address is not None and self.cpus is not None:
            raise ConfigError("sizes only an embedded cluster; a joined cluster has the CPUs "
                              "its nodes were started with", key="cpus")


@dataclass(frozen=True)
class Task:
    """One unit of work: `fn(*args)` on some worker. `fn` must be importable by the workers
    (a module-level function of an installed package) and `args` picklable."""

    key: str
    fn: Callable[..., Any]
    args: Tuple[Any, ...] = ()


@dataclass(frozen=True)
class TaskResult:
    """How a task ended. `lost`: its worker died more often than the retries allow."""

    key: str
    ok: bool
    value: Any = None
    error: Optional[str] = None        # one line: "ExceptionType: message"
    traceback: Optional[str] = None
    lost: bool = False
    seconds: float = 0.0               # from submission to result, as the driver saw it


@dataclass(frozen=True)
class _Failure:
    """What a task's own exception becomes in the worker (a value, so Ray does not retry)."""

    error: str
    traceback: str


def _call(fn: Callable[..., Any], args: Tuple[Any, ...]) -> Any:
    """Runs in the worker."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any failure of the task is its result
        return _Failure(f"{type(e).__name__}: {e}", traceback.format_exc())


def ray_available() -> bool:
    """Whether Ray is installed (without importing it: see _LOOPBACK_ENV)."""
    import importlib.util
    return importlib.util.find_spec("ray") is not None


def _import_ray(embedded: bool):
    if embedded:
        os.environ.setdefault(*_LOOPBACK_ENV)
    try:
        import ray
    except ImportError:
        raise ClusterUnavailable("needs Ray, which is not installed: pip install "
                                 "'pcm-hil[cluster]'") from None
    return ray


class Cluster:
    """A connection to a Ray cluster for the duration of a `with` block.

    If this process is already connected (ray.init was called before), that connection is
    used and left open; otherwise an embedded cluster is started (no address) or the
    cluster at `options.address` is joined, and the connection is closed on exit.
    """

    def __init__(self, options: ClusterOptions = ClusterOptions()) -> None:
        self.options = options
        self.started_seconds = 0.0     # time to start or join the cluster
        self.embedded = options.address is None
        self._ray = None
        self._owns_connection = False
        self._remote = None

    def __enter__(self) -> "Cluster":
        ray = _import_ray(self.embedded)
        self._ray = ray
        t0 = time.perf_counter()
        if not ray.is_initialized():
            kwargs: Dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          logging_level="warning")
            if self.embedded:
                kwargs.update(num_cpus=self.options.cpus or os.cpu_count() or 1,
                              object_store_memory=self.options.object_store_mb * 2 ** 20)
            else:
                kwargs.update(address=self.options.address)
                kwargs.pop("include_dashboard")
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = (f"the Ray cluster at {self.options.address}" if not self.embedded
                         else "an embedded Ray cluster")
                raise ClusterUnavailable(f"cannot start or join {where}: {e}") from None
            self._owns_connection = True
        self.started_seconds = time.perf_counter() - t0
        self._remote = ray.remote(_call)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owns_connection:
            self._ray.shutdown()
            self._owns_connection = False

    @property
    def address(self) -> str:
        """The address another driver passes to join this cluster (`--address`)."""
        return self._ray.get_runtime_context().gcs_address

    @property
    def cpus(self) -> float:
        return float(self._ray.cluster_resources().get("CPU", 0.0))

    def run(self, tasks: Sequence[Task],
            on_result: Optional[Callable[[TaskResult], None]] = None) -> List[TaskResult]:
        """Run every task, at most `max_parallel` at once; results in completion order.

        `on_result` is called in this process as each task ends. On KeyboardInterrupt the
        tasks in flight are cancelled (their workers killed) before it propagates.
        """
        ray = self._ray
        if ray is None:
            raise RuntimeError("Cluster.run outside its with block")
        opts = self.options
        remote = self._remote.options(num_cpus=opts.cpus_per_task,
                                      max_retries=opts.max_retries, retry_exceptions=False)
        limit = opts.max_parallel or len(tasks) or 1
        queue = list(tasks)
        queue.reverse()
        pending: Dict[Any, Tuple[Task, float]] = {}
        results: List[TaskResult] = []
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    task = queue.pop()
                    pending[remote.remote(task.fn, task.args)] = (task, time.perf_counter())
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task, t0 = pending.pop(ref)
                    result = self._result(ref, task, time.perf_counter() - t0)
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results

    def _result(self, ref: Any, task: Task, seconds: float) -> TaskResult:
        ray = self._ray
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return TaskResult(task.key, False, error=f"{type(e).__name__}: worker lost after "
                              f"{self.options.max_retries} retries: {first}", lost=True,
                              seconds=seconds)
        if isinstance(value, _Failure):
            return TaskResult(task.key, False, error=value.error, traceback=value.traceback,
                              seconds=seconds)
        return TaskResult(task.key, True, value=value, seconds=seconds)


__all__ = ["Cluster", "ClusterOptions", "ClusterUnavailable", "Task", "TaskResult",
           "ray_available"]
