"""Sharing the cores between the models that train side by side: the CNN gets every core
once the other models are done, instead of training on to the end on its lane's share.

TensorFlow sizes its thread pools once per process, so a CNN started with one core's
share could never use a second. Its pools are sized to every core instead, and its threads
are held to its lane's cores by their CPU affinity while the others train: the thread
that starts TensorFlow is, and the threads it starts, TensorFlow's pools among them,
inherit its affinity. When the others are done, every thread of the process held to the
lane's cores is given them all. On an AVX2 EPYC
(2 cores), two threads held to one core stepped as fast as one thread (small network 73
ms against 95 ms, wide 254 against 244 ms a batch, within this machine's noise), and on
both cores 2.3 times (small) and 1.3 times (wide) as fast as one.

A file says that the other models are done, so that the CNN's process learns it whatever
runs it: a thread of the flow's process, or a worker process of the same machine; a
thread there polls it each second.
Where CPU affinity does not exist (macOS, Windows), the CNN keeps its lane's share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.core.storage import scratch_name

# How often a training CNN's process looks for the word that the others are done.
POLL_SECONDS = 1.0
# How long the CNN's measurement waits for the others' before timing it with every core.
WAIT_SECONDS = 120.0
RELEASED_FILE = "released"


@dataclass(frozen=True)
class CoreShare:
    """The cores one model may use: its lane's while the others train, then all of them.

    Attributes:
        lane_cores: the cores its threads are held to while other models train.
        all_cores: the cores it may use once they are done.
        directory: where the word that they are done is written; on this machine only.
    """

    lane_cores: tuple[int, ...]
    all_cores: tuple[int, ...]
    directory: Path

    @property
    def threads(self) -> int:
        """Its thread pools' size: every core, for when it has them all."""
        return len(self.all_cores)

    @property
    def released(self) -> bool:
        return (self.directory / RELEASED_FILE).exists()


def usable_cores() -> tuple[int, ...]:
    """The cores this process may run on; none where CPU affinity does not exist."""
    if not hasattr(os, "sched_getaffinity"):
        return ()
    return tuple(sorted(os.sched_getaffinity(0)))


@contextlib.contextmanager
def shared_cores(
    scratch_root: Path, lane_threads: int, enabled: bool
) -> Iterator[CoreShare | None]:
    """A share of `lane_threads` cores that grows to every core, for the training stage,
    with a scratch directory that ends with it; at the end every core is given back to
    the threads of this process still held to the lane. None when not `enabled` or when
    the lane already has every core (one lane, one core, or no affinity here)."""
    cores = usable_cores()
    if not enabled or len(cores) <= lane_threads:
        yield None
        return
    directory = scratch_root / scratch_name(scratch_root / "cores")
    directory.mkdir(parents=True)
    share = CoreShare(cores[:lane_threads], cores, directory)
    try:
        yield share
    finally:
        widen_threads(share)
        shutil.rmtree(directory, ignore_errors=True)


def release(share: CoreShare | None) -> None:
    """Say that the other models are done (measured, or trained and evaluated): the CNN
    may use every core."""
    if share is not None and not share.released:
        (share.directory / RELEASED_FILE).touch()


def withhold(share: CoreShare | None) -> None:
    """Take the word back: the other models go on (from measuring to training)."""
    if share is not None:
        (share.directory / RELEASED_FILE).unlink(missing_ok=True)


def widen_threads(share: CoreShare) -> list[int]:
    """Give every core to each thread of this process held to the lane's cores (TensorFlow
    names few of its threads, so they are found by their affinity); returns their ids."""
    held = _held_threads(share)
    _set_affinity(held, share.all_cores)
    return held


def _held_threads(share: CoreShare) -> list[int]:
    return [task for task in _thread_ids() if _affinity(task) == set(share.lane_cores)]


def _thread_ids() -> list[int]:
    try:
        return [int(task) for task in os.listdir("/proc/self/task")]
    except OSError:
        return []


@contextlib.contextmanager
def every_core(
    share: CoreShare, check_stop: Callable[[], None] = lambda: None
) -> Iterator[Callable[[], None]]:
    """To measure how much faster the CNN steps with every core: within, once the other
    models are measured (or after WAIT_SECONDS), `widen()` gives every core to the threads
    held to the lane; after, they are held to it again."""
    waited_until = time.monotonic() + WAIT_SECONDS
    while not share.released and share.directory.exists() and time.monotonic() < waited_until:
        check_stop()
        time.sleep(0.1)
    held = _held_threads(share)

    def widen() -> None:
        _set_affinity(held, share.all_cores)

    try:
        yield widen
    finally:
        _set_affinity(held, share.lane_cores)


def _affinity(task: int) -> set[int]:
    try:
        return os.sched_getaffinity(task)
    except OSError:  # a thread that ended meanwhile
        return set()


def _set_affinity(tasks: list[int], cores: tuple[int, ...]) -> None:
    for task in tasks:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(task, cores)


@contextlib.contextmanager
def held_to_lane(
    share: CoreShare | None, logger: logging.Logger, until_released: bool = True
) -> Iterator[None]:
    """Hold this thread, and the threads it starts (TensorFlow's pools), to the lane's
    cores until the other models are done (`until_released`; else to the end); then give
    them every core. The thread's own affinity is restored at the end; the pools keep
    theirs until the word comes."""
    if share is None:
        yield
        return
    before = os.sched_getaffinity(0)  # on Linux, 0 is the calling thread
    if not share.released:
        os.sched_setaffinity(0, share.lane_cores)
    finished = threading.Event()

    def widen_when_released() -> None:
        while not finished.wait(POLL_SECONDS):
            if share.released:
                logger.info(
                    "the other models are done: %d thread(s) here now use all %d cores",
                    len(widen_threads(share)), len(share.all_cores),
                )  # fmt: skip
                return

    watcher = threading.Thread(target=widen_when_released, name="core-share", daemon=True)
    if until_released:
        watcher.start()
    try:
        yield
    finally:
        finished.set()
        if watcher.is_alive():
            watcher.join()
        os.sched_setaffinity(0, before)
