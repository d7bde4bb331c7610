"""Sharing the cores between the models that train side by side: the CNN gets every core
once the other models are done, instead of training on to the end on its lane's share.
One `CoreHandover` holds all of it: what the plan counts on, the word that hands the cores
over, and the re-planning of the CNN's epochs from there.

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
from dataclasses import dataclass, replace
from pathlib import Path

from tasks.core.contracts import Cost
from tasks.core.cpus import allowed_cpus, usable_cores
from tasks.core.storage import scratch_name

# How often a training CNN's process looks for the word that the others are done.
POLL_SECONDS = 1.0
# How long the CNN's measurement waits for the others' before timing it with every core.
WAIT_SECONDS = 120.0
RELEASED_FILE = "released"


@dataclass(frozen=True)
class CoreHandover:
    """Every core to one model (the CNN) once the other models are done.

    The plan makes one with what it counts on: when it expects the others done, and how
    much faster the model steps then. `shared_cores` makes one bound to this machine's
    cores and the directory where the word that the others are done is written; the
    training stage's is both (`bound_to`). Unbound, the model keeps its lane's share.

    Attributes:
        after: seconds after planning when the plan expects the others done; None when
            it does not count on every core.
        speedup: how many times as fast the model's steps are with every core.
        planned_at: when the plan was made (`time.time()`), once bound for training.
        lane_cores: the cores its threads are held to while other models train.
        all_cores: the cores it may use once they are done.
        directory: where the word that they are done is written; on this machine only.
    """

    after: float | None = None
    speedup: float = 1.0
    planned_at: float | None = None
    lane_cores: tuple[int, ...] = ()
    all_cores: tuple[int, ...] = ()
    directory: Path | None = None

    @classmethod
    def from_dict(cls, values: dict | None) -> CoreHandover | None:
        """A handover as `dataclasses.asdict` wrote it (in a plan's JSON)."""
        if values is None:
            return None
        directory = values["directory"] and Path(values["directory"])
        cores = {name: tuple(values[name]) for name in ("lane_cores", "all_cores")}
        return cls(**(values | cores | {"directory": directory}))

    def bound_to(self, share: CoreHandover | None, planned_at: float) -> CoreHandover:
        """What this plan counts on, from `planned_at`, on the cores of `share` (none
        where there is no share)."""
        cores = {"lane_cores": share.lane_cores, "all_cores": share.all_cores} if share else {}
        directory = share.directory if share else None
        return replace(self, planned_at=planned_at, directory=directory, **cores)

    @property
    def bound(self) -> bool:
        return self.directory is not None

    @property
    def threads(self) -> int:
        """Its thread pools' size: every core, for when it has them all."""
        return len(self.all_cores)

    @property
    def released(self) -> bool:
        """The other models are done: the model may use every core."""
        return self.bound and (self.directory / RELEASED_FILE).exists()

    @property
    def expected_at(self) -> float | None:
        """When the plan expects the others done (`time.time()`), once bound."""
        if self.after is None or self.planned_at is None:
            return None
        return self.planned_at + self.after

    def release(self) -> None:
        """Say that the other models are done (measured, or trained and evaluated)."""
        if self.bound and not self.released:
            (self.directory / RELEASED_FILE).touch()

    def withhold(self) -> None:
        """Take the word back: the other models go on (from measuring to training)."""
        if self.bound:
            (self.directory / RELEASED_FILE).unlink(missing_ok=True)

    def step_cost(self, shared: float, alone: float | None = None) -> Cost:
        """A step's cost from here on: `shared` seconds beside the other models, `alone`
        with every core (when not timed yet: `shared` sped up as the plan counts on)."""
        return Cost(0.0, shared, shared / self.speedup if alone is None else alone)

    def steps_left(self, step: Cost, seconds: float, now: float, most: int) -> int:
        """How many steps of `step`, at most `most`, fit in the `seconds` from `now`:
        beside the other models until they are done (none once they are; until the plan
        expects it; else all along), then with every core."""
        if self.released:
            shared = 0.0
        elif self.expected_at is None:
            shared = seconds
        else:
            shared = min(seconds, max(0.0, self.expected_at - now))
        return step.steps_within(seconds, most, shared)

    def measure_alone(
        self,
        step: float,
        timed_step: Callable[[], float],
        check_stop: Callable[[], None] = lambda: None,
    ) -> float | None:
        """`step`, timed beside the other models, scaled to every core: by how much faster
        `timed_step()` is with every core than on the lane's, timed one after the other
        once the others are measured (`every_core`); None where not bound."""
        if not self.bound:
            return None
        with self.every_core(check_stop) as widen:
            on_lane = timed_step()
            widen()
            return step * timed_step() / on_lane

    @contextlib.contextmanager
    def every_core(
        self, check_stop: Callable[[], None] = lambda: None
    ) -> Iterator[Callable[[], None]]:
        """To measure how much faster the model steps with every core: within, once the
        other models are measured (or after WAIT_SECONDS), `widen()` gives every core to
        the threads held to the lane; after, they are held to it again."""
        waited_until = time.monotonic() + WAIT_SECONDS
        while not self.released and self.directory.exists() and time.monotonic() < waited_until:
            check_stop()
            time.sleep(0.1)
        held = _held_threads(self)

        def widen() -> None:
            _set_affinity(held, self.all_cores)

        try:
            yield widen
        finally:
            _set_affinity(held, self.lane_cores)

    @contextlib.contextmanager
    def held_to_lane(self, logger: logging.Logger, until_released: bool = True) -> Iterator[None]:
        """Hold this thread, and the threads it starts (TensorFlow's pools), to the lane's
        cores until the other models are done (`until_released`; else to the end); then
        give them every core. The thread's own affinity is restored at the end; the pools
        keep theirs until the word comes. Unbound, nothing changes."""
        if not self.bound:
            yield
            return
        before = os.sched_getaffinity(0)  # on Linux, 0 is the calling thread
        if not self.released:
            os.sched_setaffinity(0, self.lane_cores)
        finished = threading.Event()

        def widen_when_released() -> None:
            while not finished.wait(POLL_SECONDS):
                if self.released:
                    logger.info(
                        "the other models are done: %d thread(s) here now use all %d cores",
                        len(widen_threads(self)), len(self.all_cores),
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


@contextlib.contextmanager
def shared_cores(
    scratch_root: Path, lane_threads: int, enabled: bool
) -> Iterator[CoreHandover | None]:
    """A share of `lane_threads` cores that grows to every core, for the training stage,
    with a scratch directory that ends with it; at the end every core is given back to
    the threads of this process still held to the lane. None when not `enabled` or when
    the lane already has every core (one lane, one core, or no affinity here)."""
    # Under a CPU quota, as many of the allowed CPUs as it leaves usable.
    cores = allowed_cpus()[: usable_cores()]
    if not enabled or len(cores) <= lane_threads:
        yield None
        return
    directory = scratch_root / scratch_name(scratch_root / "cores")
    directory.mkdir(parents=True)
    share = CoreHandover(lane_cores=cores[:lane_threads], all_cores=cores, directory=directory)
    try:
        yield share
    finally:
        widen_threads(share)
        shutil.rmtree(directory, ignore_errors=True)


def widen_threads(share: CoreHandover) -> list[int]:
    """Give every core to each thread of this process held to the lane's cores (TensorFlow
    names few of its threads, so they are found by their affinity); returns their ids."""
    held = _held_threads(share)
    _set_affinity(held, share.all_cores)
    return held


def _held_threads(share: CoreHandover) -> list[int]:
    return [task for task in _thread_ids() if _affinity(task) == set(share.lane_cores)]


def _thread_ids() -> list[int]:
    try:
        return [int(task) for task in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _affinity(task: int) -> set[int]:
    try:
        return os.sched_getaffinity(task)
    except OSError:  # a thread that ended meanwhile
        return set()


def _set_affinity(tasks: list[int], cores: tuple[int, ...]) -> None:
    for task in tasks:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(task, cores)
