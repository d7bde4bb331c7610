"""The flow's Prefect runner: the task runners models train on, the Prefect API their
workers report to, and how a stop reaches the tasks they run (threads, worker processes,
a local Dask cluster's workers)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import dask
from prefect.client.orchestration import get_client
from prefect.context import refresh_global_settings_context
from prefect.exceptions import ObjectNotFound, TerminationSignal
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.logging import get_run_logger
from prefect.settings import get_current_settings
from prefect.states import Crashed, State
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from flows.process_pool import KillSafeProcessPool
from tasks.budget.schedule import CoreSchedule
from tasks.core.cpus import HostThreads, machine_kind, usable_cores
from tasks.core.errors import PipelineError, RunEnvironmentError
from tasks.core.stopping import (
    FIT_STOP_SECONDS,
    RunStopped,
    clear_stop,
    install_worker_stop_handlers,
    kill_child_processes,
    request_stop,
    signal_child_processes,
)
from tasks.run.config import PipelineConfig
from tasks.run.preflight import CLUSTER_NEEDS_SERVER, api_problem

# How long the tasks still running get to stop after a stop request, before their worker
# processes are killed: their fits get FIT_STOP_SECONDS, and then they unwind.
STOP_GRACE_SECONDS = FIT_STOP_SECONDS + 3
STOPS = (RunStopped, TerminationSignal, KeyboardInterrupt)


class _OneLineErrors(logging.Filter):
    """Errors the run sums up in one line are logged without a traceback: input and
    environment errors, stops, and (with `every_error`) every failed task run."""

    def __init__(self, every_error: bool):
        super().__init__()
        self.every_error = every_error

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info and record.exc_info[1]
        if error and (self.every_error or isinstance(error, (PipelineError, *STOPS))):
            record.exc_info = None
        return True


def quiet_tracebacks() -> None:
    """Log failed task runs, input and environment errors and stops in one line: the run
    sums each up in one line, and keeps a failed model's traceback in its metrics.json."""
    for name, every_error in (("prefect.task_runs", True), ("prefect.flow_runs", False)):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _OneLineErrors) for existing in logger.filters):
            logger.addFilter(_OneLineErrors(every_error))


def prepare_worker_process(api_url: str | None = None) -> None:
    """Each worker process of the processes and local Dask runners: it reports to the
    flow's Prefect API (`api_url`) rather than start a temporary server of its own,
    SIGTERM and SIGINT stop the task it runs, and failed task runs are logged in one line."""
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
        refresh_global_settings_context()
    install_worker_stop_handlers()
    quiet_tracebacks()


def flow_api_url() -> str | None:
    """The Prefect API this process reports to: PREFECT_API_URL (the command line's
    temporary server sets it too), or else the temporary server Prefect itself started
    for a flow called without one."""
    if url := get_current_settings().api.url:
        return url
    url = str(get_client(sync_client=True).api_url).rstrip("/")
    return url if url.startswith("http") and "ephemeral-prefect" not in url else None


def training_runner(config: PipelineConfig, api_url: str | None = None) -> TaskRunner:
    """The pool that trains `parallel_models` models at once: threads, processes or Dask.
    Worker processes started here report to `api_url`."""
    if config.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=config.lanes)
    if config.task_runner == "processes":
        # Its workers report to the flow's API and turn SIGTERM and SIGINT into a stop
        # of the task they run.
        return KillSafeProcessPool(
            max_workers=config.lanes,
            initializer=prepare_worker_process,
            initargs=(api_url,),
        )
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    # One single-threaded worker process per model slot, reachable on loopback only.
    cluster = {"n_workers": config.lanes, "threads_per_worker": 1, "processes": True}
    return DaskTaskRunner(cluster_kwargs=cluster | {"host": "127.0.0.1", "dashboard_address": None})


def worker_api_view(api_url: str) -> tuple[str | None, str | None]:
    """Run on a Dask worker: the Prefect API it is set to report to (None when unset), and
    why it cannot reach the flow's, `api_url` (None when it can)."""
    return get_current_settings().api.url, api_problem(api_url, timeout_seconds=3)


def check_cluster_api(client: Any, api_url: str | None, logger: Any) -> None:
    """Before anything trains on an external Dask cluster: every worker reaches the flow's
    Prefect API `api_url` (the run is refused otherwise, since nothing trained there would
    be recorded), and each is set to report there (a warning otherwise: Prefect sends the
    flow's settings with each task, so this run's records still land).

    Raises:
        RunEnvironmentError: no API is set, or a worker cannot reach it or run the check.
    """
    if not api_url:
        raise RunEnvironmentError(CLUSTER_NEEDS_SERVER)
    views = client.run(worker_api_view, api_url, on_error="return")
    failed = {worker: view for worker, view in views.items() if isinstance(view, Exception)}
    if failed:
        error = next(iter(failed.values()))
        raise RunEnvironmentError(
            f"Dask {_workers(failed)} failed the Prefect API check "
            f"({type(error).__name__}: {error}): every worker needs this project installed "
            "(`pip install -e .`)"
        )
    unreachable = {worker: problem for worker, (_, problem) in views.items() if problem}
    if unreachable:
        raise RunEnvironmentError(
            f"Dask {_workers(unreachable)} cannot reach the flow's Prefect API at {api_url} "
            f"({next(iter(unreachable.values()))}), so training there would go unrecorded: "
            "serve it on an address the workers reach (`prefect server start --host 0.0.0.0`) "
            "and set PREFECT_API_URL to that address here and for every worker"
        )
    by_setting: dict[str, list[str]] = {}
    for worker, (own, _) in sorted(views.items()):
        if (own or "").rstrip("/") != api_url.rstrip("/"):
            setting = f"PREFECT_API_URL={own}" if own else "no PREFECT_API_URL"
            by_setting.setdefault(setting, []).append(worker)
    if by_setting:
        found = "; ".join(f"{_workers(w)}: {setting}" for setting, w in by_setting.items())
        logger.warning(
            "Dask workers not set to report to the flow's Prefect API (%s): start every "
            "worker with PREFECT_API_URL=%s (this run's task runs still go there: Prefect "
            "sends the flow's settings with each task)",
            found,
            api_url,
        )


def _workers(workers: Iterable[str], shown: int = 3) -> str:
    """The workers named: "worker A", "workers A, B", "workers A, B, C and 4 more"."""
    names = sorted(workers)
    if len(names) == 1:
        return f"worker {names[0]}"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"workers {', '.join(names[:shown])}{more}"


def host_threads(workers: dict[str, dict], worker_cores: dict[str, int]) -> HostThreads:
    """Threads per model on each host of a Dask cluster: the host's usable cores over the
    task slots of all its workers (`scheduler_info()["workers"]`: their `host` and
    `nthreads`), so that two single-slot workers on 2 cores train on one thread each."""
    cores: dict[str, int] = {}
    slots: dict[str, int] = {}
    for worker, info in workers.items():
        host = info["host"]
        cores[host] = max(cores.get(host, 1), worker_cores.get(worker, 1))
        slots[host] = slots.get(host, 0) + max(1, info["nthreads"])
    return HostThreads(tuple((host, max(1, cores[host] // slots[host])) for host in sorted(cores)))


def workers_by_kind(kinds: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """A cluster's workers grouped by the kind of machine each runs on (`machine_kind`)."""
    machines: dict[str, tuple[str, ...]] = {}
    for worker, kind in sorted(kinds.items()):
        machines[kind] = (*machines.get(kind, ()), worker)
    return dict(sorted(machines.items()))


def core_schedule(config: PipelineConfig, runner: TaskRunner) -> CoreSchedule:
    """The models' lanes and threads planned for this host's usable cores, or, on a
    remote Dask cluster, each host's cores shared among its task slots, and its workers
    by kind of machine (each kind's costs are measured on its own)."""
    schedule = config.core_schedule()
    if not config.dask_address:
        return schedule
    client = runner.client
    machines = workers_by_kind(client.run(machine_kind))
    if config.threads_per_model:
        return replace(schedule, machines=machines)
    threads = host_threads(client.scheduler_info()["workers"], client.run(usable_cores))
    return replace(schedule, threads=dict.fromkeys(schedule.threads, threads), machines=machines)


class PrefectPool:
    """The graph's pool on a Prefect task runner: each submission is a task run."""

    def __init__(self, runner: TaskRunner, cores: CoreSchedule):
        self.runner, self.cores = runner, cores
        self.client = getattr(runner, "client", None)  # a Dask runner's
        self.futures: list[PrefectFuture] = []
        self.started_at = 0  # the first of `futures` since the runner's latest start
        self.broken: list[PrefectFuture] = []  # those of runners whose process pool broke

    def submit(
        self,
        stage: Any,
        parameters: dict,
        wait_for: Iterable[PrefectFuture] = (),
        workers: Collection[str] = (),
    ) -> PrefectFuture:
        """A task run of `stage`; on a Dask cluster, on one of `workers` where any are named."""
        self.restart_if_broken()
        pinned = dask.annotate(workers=list(workers)) if workers else contextlib.nullcontext()
        with pinned:  # prefect-dask submits within Dask's annotations
            future = self.runner.submit(stage, parameters, wait_for=list(wait_for) or None)
        self.futures.append(future)
        return future

    def lost_with_its_pool(self, future: PrefectFuture) -> bool:
        """Whether `future` failed because a worker of its process pool died."""
        if not isinstance(self.runner, ProcessPoolTaskRunner):
            return False
        ended = future.wrapped_future
        if not ended.done() or ended.cancelled():
            return False
        return isinstance(ended.exception(), BrokenProcessPool)

    def restart_if_broken(self) -> None:
        """A process pool one of whose workers died abruptly (killed by the kernel's
        out-of-memory killer, or `kill -9`) fails every task it holds and takes no more.
        Once those have all ended, its runner starts afresh, so that the models after them
        still train: one killed model would otherwise fail every model of the run."""
        held = self.futures[self.started_at :]
        if not any(map(self.lost_with_its_pool, held)):
            return
        wait(held, timeout=STOP_GRACE_SECONDS)
        self.runner.__exit__(None, None, None)
        self.runner.__enter__()
        self.broken += held
        self.started_at = len(self.futures)

    def record_lost_ends(self) -> None:
        """Set the task runs of a broken process pool that the server still shows Running,
        once the pool's workers are gone (so the others have sent theirs): a killed worker's
        never reports its end, and is set Crashed; a worker killed holding the lock of the
        queue its pool's workers send their events through loses the others' ends too, and
        each is set to the end its future brought here. Otherwise the Prefect UI would show
        them running after the flow run ended."""
        held = self.futures[self.started_at :]
        broken = self.broken + (held if any(map(self.lost_with_its_pool, held)) else [])
        if not broken:
            return
        with get_client(sync_client=True) as client:
            for future in broken:
                try:
                    state = client.read_task_run(future.task_run_id).state
                except ObjectNotFound:  # it never started, or its start was lost
                    continue
                if state and state.is_running():
                    end = end_of_pool_task(future)
                    client.set_task_run_state(future.task_run_id, end, force=True)

    def as_completed(self, futures: Iterable[PrefectFuture]) -> Iterator[PrefectFuture]:
        return as_completed(list(futures))

    def stop(self, logger: Any, signum: int | None) -> None:
        """Stop the tasks still running: threads see this process's stop flag, worker
        processes get SIGTERM (a local Dask cluster's too). Whatever has not stopped after
        STOP_GRACE_SECONDS has its processes killed; finished cache entries are complete
        either way, unfinished ones are removed."""
        request_stop(signum)
        signal_child_processes()
        running = wait(self.futures, timeout=STOP_GRACE_SECONDS).not_done
        if running:
            logger.warning("%d task(s) did not stop in time; killing their processes", len(running))
            kill_child_processes()


class PrefectStages:
    """The graph's runner inside a flow run: each stage is a task run of this flow run."""

    def __init__(self) -> None:
        self.logger = get_run_logger()

    def call(self, stage: Any, parameters: dict) -> Any:
        return stage(**parameters)

    @contextlib.contextmanager
    def pool(self, config: PipelineConfig) -> Iterator[PrefectPool]:
        clear_stop()
        api_url = flow_api_url()
        pool = None
        try:
            with training_runner(config, api_url) as runner:
                if config.dask_address:  # someone else's workers: check, never reconfigure
                    check_cluster_api(runner.client, get_current_settings().api.url, self.logger)
                elif config.task_runner == "dask":
                    runner.client.run(prepare_worker_process, api_url)
                pool = PrefectPool(runner, core_schedule(config, runner))
                try:
                    yield pool
                except BaseException as error:  # a stop, or an error that ends the run
                    pool.stop(self.logger, stop_signal_of(error))
                    raise
        finally:  # the workers are gone: what was killed can be told
            if pool:
                try:
                    pool.record_lost_ends()
                except Exception as error:  # the run's own outcome comes first
                    self.logger.warning("could not set the task runs of a broken pool: %s", error)


def end_of_pool_task(future: PrefectFuture) -> State:
    """The state a task run of the process pool ended in, as its future brought it here
    (without its result's data), or Crashed: its worker process ended abruptly."""
    ended = future.wrapped_future
    if ended.done() and not ended.cancelled() and ended.exception() is None:
        final = ended.result()
        return State(type=final.type, name=final.name, message=final.message)
    return Crashed(message="its worker process ended abruptly (killed)")


def stop_signal_of(stop: BaseException) -> int | None:
    """The signal behind a stop: ours, Prefect's SIGTERM, or Ctrl-C; None for an error."""
    if isinstance(stop, RunStopped):
        return stop.signum
    if isinstance(stop, TerminationSignal):
        return stop.signal
    return signal.SIGINT if isinstance(stop, KeyboardInterrupt) else None
