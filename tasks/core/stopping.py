"""Stopping a run on SIGTERM or SIGINT: a stop flag that training checks between steps,
and the signal handlers that raise it.

A Prefect worker cancels a flow run by sending SIGTERM to the run's process group;
`timeout` and systemd send SIGTERM too, a terminal's Ctrl-C sends SIGINT. Every process
of a run keeps its own flag: the flow's process, and each worker process of the
processes and dask runners. A model is fitted in a daemon thread that the task's own
thread watches (`run_until_stopped`), so a task stops within a fraction of a second even
in a fit without callbacks (scikit-learn), whose thread is then left to die with its
process. XGBoost and Keras check the flag between boosting rounds and batches
(`TrainingContext.check_stop`) and really stop.
"""

from __future__ import annotations

import contextlib
import contextvars
import multiprocessing
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_SECONDS = 0.2
# What a fit gets, after a stop request, to reach its next check: a boosting round on all
# the data takes about 4 s on one thread, a CNN batch under 1 s.
FIT_STOP_SECONDS = 5.0
# A process told to stop by a signal ends this long after it whatever it waits on: under
# systemd, for example, the temporary Prefect server gets SIGTERM too, and Prefect's client
# would retry for minutes to record the run's end.
STOP_DEADLINE_SECONDS = 20.0
T = TypeVar("T")

_requested = threading.Event()
_signals: list[int] = []  # the signal that asked for the stop, once set
_deadlines: list[threading.Timer] = []
_fits: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_handlers_installed = threading.Event()


class RunStopped(Exception):
    """The run was told to stop. An `Exception`, so that Prefect's task runners hand it
    back from any worker like a failure; the stage graph tells it apart from a model's."""

    def __init__(self, signum: int | None = None):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal_name(self.signum)}"


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a stop request"


def request_stop(signum: int | None = None) -> None:
    """Ask everything this process runs for the run to stop at its next check. After a
    signal, the process ends STOP_DEADLINE_SECONDS later if it has not by then."""
    if signum and not _signals:
        _signals.append(signum)
        deadline = threading.Timer(STOP_DEADLINE_SECONDS, _exit_now, args=(signum,))
        deadline.daemon = True
        deadline.start()
        _deadlines.append(deadline)
    _requested.set()


def _exit_now(signum: int) -> None:
    sys.stderr.write(
        f"stopped by {signal_name(signum)}: not done {STOP_DEADLINE_SECONDS:.0f} s later "
        "(is the Prefect API gone?), exiting now\n"
    )
    sys.stderr.flush()
    os._exit(128 + signum)


def clear_stop() -> None:
    """Forget an earlier stop request: a new run starts in this process."""
    while _deadlines:
        _deadlines.pop().cancel()
    _signals.clear()
    _requested.clear()


def stop_requested() -> bool:
    return _requested.is_set()


def stop_signal() -> int | None:
    """The signal that asked for the stop, if one did."""
    return _signals[0] if _signals else None


def check_stop() -> None:
    """Raise RunStopped once a stop is requested: called between training steps."""
    if _requested.is_set():
        raise RunStopped(stop_signal())


def run_until_stopped(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, run in a daemon thread and returned (or raised) here. Once a
    stop is requested the thread gets FIT_STOP_SECONDS to notice it (XGBoost and Keras
    check between steps) or to finish; then RunStopped is raised, and a thread still
    running (a scikit-learn fit) is left to end with its process.

    The thread runs in a copy of this context, so Prefect's run logger and artifacts
    work there as they do here.
    """
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(function, *args)
        except BaseException as error:  # handed to the waiting thread below
            outcome["error"] = error

    worker = threading.Thread(target=target, name=f"fit-{threading.get_ident()}", daemon=True)
    worker.start()
    _fits.add(worker)
    while worker.is_alive() and not _requested.is_set():
        worker.join(POLL_SECONDS)
    # A library that is still inside native code when the interpreter exits can abort
    # the process (TensorFlow does): give it the time to reach its next check.
    worker.join(FIT_STOP_SECONDS)
    if worker.is_alive() or isinstance(outcome.get("error"), RunStopped):
        raise RunStopped(stop_signal())
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def abandoned_fits() -> int:
    """Fits still running in this process although their task has stopped."""
    return sum(thread.is_alive() for thread in list(_fits))


def _handle_in_main_process(signum: int, frame: object) -> None:
    if _requested.is_set():  # a second Ctrl-C: the user will not wait any longer
        os._exit(128 + signum)
    request_stop(signum)
    raise RunStopped(signum)


def _handle_in_worker_process(signum: int, frame: object) -> None:
    # The worker's task sees the flag and ends; the process lives on until its pool
    # closes. A second signal (the group's and the flow's forwarded one) changes nothing.
    request_stop(signum)


def install_worker_stop_handlers() -> None:
    """For the worker processes of the processes and dask runners: SIGTERM and SIGINT
    set the flag. Only the main thread can install them; elsewhere this does nothing."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _handle_in_worker_process)


@contextlib.contextmanager
def stop_handlers() -> Iterator[None]:
    """While inside: SIGTERM and SIGINT set the flag and raise RunStopped in the main
    thread; a second one ends the process at once. The previous handlers come back after.

    Inside a Prefect flow run, Prefect's own SIGTERM handler takes over (it raises
    TerminationSignal instead); the flow turns either into a stop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handle_in_main_process)
    _handlers_installed.set()
    try:
        yield
    finally:
        _handlers_installed.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_handlers_installed() -> bool:
    """Whether this process's own command line handles stops (`stop_handlers`), rather
    than a Prefect worker's engine."""
    return _handlers_installed.is_set()


def signal_child_processes() -> None:
    """SIGTERM to this process's worker processes (a process pool's, a local Dask
    cluster's), so that the tasks they run stop; the processes live on until their pool
    closes. Callers wait for the tasks, and kill the processes of those that hang."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)


def kill_child_processes() -> None:
    """SIGKILL to the worker processes: their tasks did not stop in time."""
    for child in multiprocessing.active_children():
        child.kill()
