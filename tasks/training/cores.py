"""Sharing the cores between the models that train side by side: the CNN gets the cores
of the other models as they are done, instead of training on to the end on its lane's
share. One `CoreHandover` holds all of it: what the plan counts on, the word that hands
the cores over, and the re-planning of the CNN's epochs from there.

TensorFlow sizes its thread pools once per process, so its pools are sized to every core,
and its threads are held to its lane's cores by their CPU affinity while the others
train: the thread that starts TensorFlow is, and the threads it starts inherit it. On an
AVX2 EPYC (2 cores), two threads held to one core stepped as fast as one thread (small
network 73 ms against 95 ms, wide 254 against 244 ms a batch), and on both cores 2.3
times (small) and 1.3 times (wide) as fast as one.

Once no model waits to start, each model done (trained and evaluated) grants its threads'
cores to the models still training that take more: the CNN, then XGBoost, which is not
held to cores but sets its thread count from its grants. A file says how many each may
use, so that its process learns it whatever runs it (a thread of the flow's process, or
a worker process of the same machine); on a Dask cluster, a Dask Variable does. A thread
there polls it each second.
Where CPU affinity does not exist (macOS, Windows), the CNN keeps its lane's share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from tasks.core.contracts import Cost
from tasks.core.cpus import (
    allowed_cpus,
    set_thread_affinity,
    thread_affinity,
    thread_ids,
    usable_cores,
)
from tasks.core.dask_variables import dask_variable, forget_dask_variable
from tasks.core.storage import scratch_name

# How often a training CNN's process looks for the word that the others are done.
POLL_SECONDS = 1.0
# How long the CNN's measurement waits for the others' before timing it with every core.
WAIT_SECONDS = 120.0
GRANTED_FILE = "granted"
# Granted: every core, whatever the machine the model trains on has.
EVERY_CORE = 1 << 16

Timing = TypeVar("Timing")


@dataclass(frozen=True)
class CoreHandover:
    """Every core to one model (the CNN) once the other models are done.

    The plan makes one with what it counts on: when it expects the others done, and how
    much faster the model steps then. `shared_cores` makes one bound to this machine's
    cores and the directory where the word that the others are done is written;
    `cluster_shared_cores` one told through Dask (`channel`), whose cores are those of the
    machine it trains on (`on_this_machine`). The training stage's is both (`bound_to`).
    Unbound, the model keeps its lane's share.

    Attributes:
        after: seconds after planning when the plan expects the others done; None when
            it does not count on every core.
        speedup: how many times as fast the model's steps are with every core.
        planned_at: when the plan was made (`time.time()`), once bound for training.
        lane_cores: the cores its threads are held to while other models train.
        all_cores: the cores it may use once they are done.
        directory: where the word that they are done is written; on this machine only.
        channel: the name of the Dask Variable that holds it instead, for a model that
            may train on another machine of a cluster.
        pinned: its threads are held to the cores granted (TensorFlow's pools, sized
            once); else the model sets its own thread count from `granted` (XGBoost).
    """

    after: float | None = None
    speedup: float = 1.0
    planned_at: float | None = None
    lane_cores: tuple[int, ...] = ()
    all_cores: tuple[int, ...] = ()
    directory: Path | None = None
    channel: str | None = None
    pinned: bool = True

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
        where = {"directory": share and share.directory, "channel": share and share.channel}
        return replace(self, planned_at=planned_at, **where, **cores)

    def on_this_machine(self, lane_threads: int) -> CoreHandover:
        """A handover told through Dask, on the cores of the machine it is read on: the
        first `lane_threads` of them, then all; unbound where that is all it has."""
        if self.channel is None or self.all_cores:
            return self
        cores = allowed_cpus()[: usable_cores()]
        if len(cores) <= lane_threads:
            return replace(self, channel=None)
        dask_variable(self.channel)  # in the task's thread, where Dask finds its client
        return replace(self, lane_cores=cores[:lane_threads], all_cores=cores)

    @property
    def bound(self) -> bool:
        return self.directory is not None or self.channel is not None

    @property
    def threads(self) -> int:
        """Its thread pools' size: every core, for when it has them all."""
        return len(self.all_cores)

    @property
    def granted(self) -> int:
        """How many of `all_cores` the model may use now: its lane's, and the cores the
        models done have granted it."""
        granted = self._read_granted()
        return len(self.lane_cores) if granted is None else min(len(self.all_cores), granted)

    @property
    def released(self) -> bool:
        """The other models are done: the model may use every core."""
        granted = self._read_granted()
        return granted is not None and granted >= len(self.all_cores)

    @property
    def expected_at(self) -> float | None:
        """When the plan expects the others done (`time.time()`), once bound."""
        if self.after is None or self.planned_at is None:
            return None
        return self.planned_at + self.after

    def grant(self, cores: int) -> None:
        """Let the model use `cores` more cores: a model done frees its threads'. Told
        through Dask, only the release counts: the models done may have trained on
        another machine."""
        if self.bound and self.channel is None:
            self._write_granted(self.granted + cores)

    def release(self) -> None:
        """Say that the other models are done (measured, or trained and evaluated)."""
        if self.bound and not self.released:
            self._write_granted(EVERY_CORE)

    def withhold(self) -> None:
        """Take the cores back: the other models go on (from measuring to training)."""
        if self.channel is not None:
            dask_variable(self.channel).delete()
        elif self.bound:
            (self.directory / GRANTED_FILE).unlink(missing_ok=True)

    def _read_granted(self) -> int | None:
        """The cores granted; None before any grant, and where unbound."""
        if self.channel is not None:
            try:
                return int(dask_variable(self.channel).get(timeout=0.2))
            except TimeoutError:  # not set
                return None
        try:
            return int((self.directory / GRANTED_FILE).read_text())
        except (OSError, TypeError, ValueError):
            return None

    def _write_granted(self, cores: int) -> None:
        if self.channel is not None:
            dask_variable(self.channel).set(cores)
            return
        staging = self.directory / f".{GRANTED_FILE}.{threading.get_ident()}"
        try:
            staging.write_text(str(cores))
            staging.replace(self.directory / GRANTED_FILE)  # never read half-written
        except OSError as error:  # a full disk: the model trains on with the cores it has
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
            logging.getLogger(__name__).warning(
                "could not hand cores over (%s: %s): the model keeps those it has",
                self.directory / GRANTED_FILE, error.strerror or error,
            )  # fmt: skip

    def step_cost(self, shared: float, alone: float | None = None) -> Cost:
        """A step's cost from here on: `shared` seconds beside the other models, `alone`
        with every core (when not timed yet: `shared` sped up as the plan counts on)."""
        return Cost(0.0, shared, shared / self.speedup if alone is None else alone)

    def steps_left(
        self, step: Cost, seconds: float, now: float, most: int, expecting: bool = True
    ) -> int:
        """How many steps of `step`, at most `most`, fit in the `seconds` from `now`:
        beside the other models until they are done (none once they are; until the plan
        expects it, when `expecting`; else all along), then with every core."""
        if self.released:
            shared = 0.0
        elif self.expected_at is None or not expecting:
            shared = seconds
        else:
            shared = min(seconds, max(0.0, self.expected_at - now))
        return step.steps_within(seconds, most, shared)

    def on_lane_then_every_core(
        self, timed: Callable[[], Timing], check_stop: Callable[[], None] = lambda: None
    ) -> tuple[Timing, Timing] | None:
        """`timed()` on the lane's cores, then with every core, one after the other once the
        others are measured (`every_core`): how much faster the model steps with every core.
        None where not bound."""
        if not self.bound:
            return None
        with self.every_core(check_stop) as widen:
            on_lane = timed()
            widen()
            return on_lane, timed()

    @contextlib.contextmanager
    def every_core(
        self, check_stop: Callable[[], None] = lambda: None
    ) -> Iterator[Callable[[], None]]:
        """To measure how much faster the model steps with every core: within, once the
        other models are measured (or after WAIT_SECONDS), `widen()` gives every core to
        the threads held to the lane; after, they are held to it again."""
        waited_until = time.monotonic() + WAIT_SECONDS
        told = self.channel is not None or self.directory.exists()
        while not self.released and told and time.monotonic() < waited_until:
            check_stop()
            time.sleep(0.1)
        held = _held_threads(self)

        def widen() -> None:
            set_thread_affinity(held, self.all_cores)

        try:
            yield widen
        finally:
            set_thread_affinity(held, self.lane_cores)

    @contextlib.contextmanager
    def held_to_lane(self, logger: logging.Logger, until_released: bool = True) -> Iterator[None]:
        """Hold this thread, and the threads it starts (TensorFlow's pools), to the lane's
        cores until the other models are done (`until_released`; else to the end); then
        give them every core. The thread's own affinity is restored at the end; the pools
        keep theirs until the word comes. Unbound or not pinned, nothing changes."""
        if not self.bound or not self.pinned:
            yield
            return
        before = os.sched_getaffinity(0)  # on Linux, 0 is the calling thread
        if not self.released:
            os.sched_setaffinity(0, self.lane_cores)
        finished = threading.Event()

        def widen_as_granted() -> None:
            widened = len(self.lane_cores)
            while widened < len(self.all_cores) and not finished.wait(POLL_SECONDS):
                granted = self.granted
                if granted > widened:
                    moved = _move_threads(self.all_cores[:widened], self.all_cores[:granted])
                    logger.info(
                        "%d more core(s) as other models are done: %d thread(s) here now "
                        "use %d of %d cores",
                        granted - widened, len(moved), granted, len(self.all_cores),
                    )  # fmt: skip
                    widened = granted

        watcher = threading.Thread(target=widen_as_granted, name="core-share", daemon=True)
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
    scratch_root: Path, lane_threads: int, enabled: bool, most: int | None = None, pinned=True
) -> Iterator[CoreHandover | None]:
    """A share of `lane_threads` cores that grows to every core (at `most`), for the
    training stage, with a scratch directory that ends with it; at the end every core is
    given back to the threads of this process still held to the lane. None when not
    `enabled` or when the lane already has every core (one lane, one core, or no affinity
    here). Not `pinned`: the model sets its thread count from the grants itself."""
    # Under a CPU quota, as many of the allowed CPUs as it leaves usable.
    cores = allowed_cpus()[: usable_cores()][:most]
    if not enabled or len(cores) <= lane_threads:
        yield None
        return
    directory = scratch_root / scratch_name(scratch_root / "cores")
    directory.mkdir(parents=True)
    share = CoreHandover(
        lane_cores=cores[:lane_threads], all_cores=cores, directory=directory, pinned=pinned
    )
    try:
        yield share
    finally:
        widen_threads(share)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def cluster_shared_cores(client: Any) -> Iterator[CoreHandover]:
    """A share told through the Dask cluster of `client`, for a CNN that may train on
    another machine: its cores are that machine's, read where it trains."""
    name = f"core-share-{uuid.uuid4().hex}"
    dask_variable(name, client)
    try:
        yield CoreHandover(channel=name)
    finally:
        with contextlib.suppress(Exception):  # the cluster may be gone
            forget_dask_variable(name).delete()


def widen_threads(share: CoreHandover) -> list[int]:
    """Give every core to each thread of this process held to some of the cores (the
    lane's, or those granted so far: TensorFlow names few of its threads, so they are
    found by their affinity); returns their ids."""
    held = _held_threads(share)
    set_thread_affinity(held, share.all_cores)
    return held


def _held_threads(share: CoreHandover) -> list[int]:
    """The threads held to the lane's cores, or to the first cores granted after it."""
    cores = share.all_cores
    holds = {frozenset(cores[:count]) for count in range(len(share.lane_cores), len(cores))}
    return [task for task in thread_ids() if frozenset(thread_affinity(task)) in holds]


def _move_threads(before: tuple[int, ...], after: tuple[int, ...]) -> list[int]:
    """Give `after` to the threads of this process held to exactly `before`."""
    moved = [task for task in thread_ids() if thread_affinity(task) == set(before)]
    set_thread_affinity(moved, after)
    return moved
