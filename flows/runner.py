"""The flow's Prefect runner: the task runners models train on, and how a stop reaches
the tasks they run (threads, worker processes, a local Dask cluster's workers)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Iterator
from typing import Any

from prefect.exceptions import TerminationSignal
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.logging import get_run_logger
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from tasks.config import PipelineConfig
from tasks.errors import PipelineError
from tasks.stopping import (
    FIT_STOP_SECONDS,
    RunStopped,
    clear_stop,
    install_worker_stop_handlers,
    kill_child_processes,
    request_stop,
    signal_child_processes,
)

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


def prepare_worker_process() -> None:
    """Each worker process of the processes and local Dask runners: SIGTERM and SIGINT
    stop the task it runs, and failed task runs are logged in one line."""
    install_worker_stop_handlers()
    quiet_tracebacks()


def training_runner(config: PipelineConfig) -> TaskRunner:
    """The pool that trains `parallel_models` models at once: threads, processes or Dask."""
    if config.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=config.parallel_models)
    if config.task_runner == "processes":
        # Its workers turn SIGTERM and SIGINT into a stop of the task they run.
        return ProcessPoolTaskRunner(
            max_workers=config.parallel_models, initializer=prepare_worker_process
        )
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    # One single-threaded worker process per model slot, reachable on loopback only.
    cluster = {"n_workers": config.parallel_models, "threads_per_worker": 1, "processes": True}
    return DaskTaskRunner(cluster_kwargs=cluster | {"host": "127.0.0.1", "dashboard_address": None})


def dask_threads_per_model(worker_cores: dict[str, int], worker_slots: dict[str, int]) -> int:
    """Threads each model may use on a Dask cluster: the cores of the smallest share, where
    a worker runs as many models at once as it has task slots."""
    return max(1, min(worker_cores[w] // max(1, worker_slots[w]) for w in worker_slots))


def threads_per_model(config: PipelineConfig, runner: TaskRunner) -> int:
    """The configured threads, or the cores of the machines the models train on, shared
    evenly: on a remote Dask cluster those are the workers', not this host's."""
    if config.threads_per_model or not config.dask_address:
        return config.model_threads
    client = runner.client
    return dask_threads_per_model(client.run(os.cpu_count), client.nthreads())


class PrefectPool:
    """The graph's pool on a Prefect task runner: each submission is a task run."""

    def __init__(self, runner: TaskRunner, threads: int):
        self.runner, self.threads_per_model = runner, threads
        self.futures: list[PrefectFuture] = []

    def submit(
        self, stage: Any, parameters: dict, wait_for: Iterable[PrefectFuture] = ()
    ) -> PrefectFuture:
        future = self.runner.submit(stage, parameters, wait_for=list(wait_for) or None)
        self.futures.append(future)
        return future

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
        with training_runner(config) as runner:
            if config.task_runner == "dask" and not config.dask_address:
                runner.client.run(prepare_worker_process)  # our own workers only
            pool = PrefectPool(runner, threads_per_model(config, runner))
            try:
                yield pool
            except BaseException as error:  # a stop, or an error that ends the run
                pool.stop(self.logger, stop_signal_of(error))
                raise


def stop_signal_of(stop: BaseException) -> int | None:
    """The signal behind a stop: ours, Prefect's SIGTERM, or Ctrl-C; None for an error."""
    if isinstance(stop, RunStopped):
        return stop.signum
    if isinstance(stop, TerminationSignal):
        return stop.signal
    return signal.SIGINT if isinstance(stop, KeyboardInterrupt) else None
